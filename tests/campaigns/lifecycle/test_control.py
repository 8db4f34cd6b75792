"""campaign_control's domain function against campaigns that are really sending.

send_campaign runs through dag.test() at a low limiter rate, so it takes several seconds; a second thread applies
the control action meanwhile with the function the DAG task calls. "Within 5 seconds" is asserted from
recorded timestamps: campaign_actions.requested_at against the ledger's sent_at, and moto's messages against the
ledger's sent rows.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from unittest import mock

import pytest

from campaigns import states
from campaigns.audience.filters import Audience
from campaigns.config import get_settings
from campaigns.db import connect
from campaigns.errors import CampaignDefinitionError, IllegalTransition
from campaigns.lifecycle import control, definitions
from campaigns.sending import ledger
from tests.helpers import add_contacts, inline_campaign, parse_dag, sent_messages

STOP_WITHIN = timedelta(seconds=5)


@pytest.fixture
def slow_rate(settings_env, redis_client):
    """5 sends/s with 2 threads: 40 recipients take about 8 s, time enough to act while it sends."""
    settings_env(SES_SENDING_RATE=5, SES_SEND_THREADS=2)


class ActWhileSending(threading.Thread):
    """Applies a control action from a second thread once the campaign has sent a few messages.

    dag.test() must own the main thread (Airflow's task runner installs signal handlers), so the send runs in the
    test's thread and the person pressing "pause" is this thread, with its own database connection.
    """

    def __init__(self, dsn, action, *, key="nov-news", after_sent=4):
        super().__init__(daemon=True)
        self.dsn, self.action, self.key, self.after_sent = dsn, action, key, after_sent
        self.result = None
        self.error = None
        self.send_ended = threading.Event()  # set by the test thread when dag.test() returned

    def run(self):
        try:
            with connect(self.dsn, autocommit=True) as conn:
                wait_until(lambda: self.send_ended.is_set() or sent_count(conn, self.key) >= self.after_sent,
                           what="the first sends")
                if sent_count(conn, self.key) < self.after_sent:
                    raise AssertionError("send_campaign ended before it had sent anything to act on; see its log")
                campaign_id = conn.execute("SELECT id FROM campaigns WHERE key = %s", [self.key]).fetchone()["id"]
                self.result = control.apply_action(conn, campaign_id, self.action, run_id=f"manual__{self.action}")
        except BaseException as exc:  # noqa: BLE001 - handed to the test by outcome()
            self.error = exc

    def outcome(self):
        self.join(30)
        assert not self.is_alive(), "the control action never ran"
        if self.error is not None:
            raise self.error
        return self.result


def sent_count(conn, key):
    return conn.execute("SELECT count(*) AS n FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id"
                        " WHERE c.key = %s AND r.status = 'sent'", [key]).fetchone()["n"]


def run_send_dag(dag, conf, run_id=None):
    """dag.test() of send_campaign; with run_id, as the scheduler would run the run a control action queued."""
    if run_id is None:
        return dag.test(run_conf=conf)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    # dag.test() always creates its own run: the run a control action queued is replaced by one with the same
    # id and conf (what the scheduler would have started).
    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id).delete()
    with mock.patch.object(DagRun, "generate_run_id", return_value=run_id):
        return dag.test(run_conf=conf, logical_date=None)


def wait_until(predicate, timeout=30.0, what="condition"):
    """Poll a condition with a deadline (a wait, not a sleep standing in for synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def counts(db, campaign_id):
    rows = db.execute("SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s GROUP BY 1",
                      [campaign_id]).fetchall()
    return {row["status"]: row["n"] for row in rows}


def campaign(db, campaign_id):
    return db.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()


def last_sent_at(db, campaign_id):
    return db.execute("SELECT max(sent_at) AS t FROM campaign_recipients WHERE campaign_id = %s",
                      [campaign_id]).fetchone()["t"]


def actions(db, campaign_id):
    return db.execute("SELECT * FROM campaign_actions WHERE campaign_id = %s ORDER BY id", [campaign_id]).fetchall()


def send_while(dsn, db, action, recipients=40):
    """Really send `recipients` addresses and apply `action` after the first few: (dag run, action, campaign id)."""
    add_contacts(db, [f"user{i:02d}@example.org" for i in range(recipients)])
    actor = ActWhileSending(dsn, action)
    actor.start()
    try:
        dag_run = run_send_dag(parse_dag("send_campaign"), {"campaign": inline_campaign(), "batch_size": 10})
    finally:
        actor.send_ended.set()
    result = actor.outcome()
    return dag_run, result, result.campaign_id


def prepared_campaign(db, status, recipients=6):
    """A campaign with a frozen ledger of pending rows, put in `status` (the state a test starts from)."""
    add_contacts(db, [f"p{i}@example.org" for i in range(recipients)])
    definition = definitions.CampaignDefinition.parse(inline_campaign())
    campaign_id = definitions.upsert_campaign(db, definition)["id"]
    ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"]}), page_size=500)
    db.execute("UPDATE campaigns SET status = %s WHERE id = %s", [status, campaign_id])
    return campaign_id


def test_pause_stops_sending_within_5_seconds_and_keeps_pending_rows(dsn, db, ses, slow_rate):
    dag_run, result, campaign_id = send_while(dsn, db, "pause")

    assert dag_run.state == "success"  # the send run ends cleanly
    assert campaign(db, campaign_id)["status"] == states.PAUSED
    ledger_counts = counts(db, campaign_id)
    assert set(ledger_counts) == {"sent", "pending"}
    assert ledger_counts["pending"] > 0
    assert last_sent_at(db, campaign_id) <= result.requested_at + STOP_WITHIN
    assert len(sent_messages()) == ledger_counts["sent"]  # nothing left SES that the ledger does not show
    [row] = actions(db, campaign_id)
    assert (row["action"], row["actor"], row["run_id"]) == ("pause", "campaign_control", "manual__pause")
    assert (row["old_status"], row["new_status"]) == ("running", "paused")
    assert row["requested_at"] == result.requested_at


def test_cancel_stops_sending_within_5_seconds_and_cancels_pending_rows(dsn, db, ses, slow_rate):
    dag_run, result, campaign_id = send_while(dsn, db, "cancel")

    assert dag_run.state == "success"
    row = campaign(db, campaign_id)
    assert row["status"] == states.CANCELLED
    assert row["summary"]["status"] == "cancelled"
    ledger_counts = counts(db, campaign_id)
    assert set(ledger_counts) == {"sent", "cancelled"}
    assert ledger_counts["sent"] + ledger_counts["cancelled"] == 40
    assert result.cancelled >= 1
    assert last_sent_at(db, campaign_id) <= result.requested_at + STOP_WITHIN
    assert len(sent_messages()) == ledger_counts["sent"]
    [action] = actions(db, campaign_id)
    assert (action["old_status"], action["new_status"]) == ("running", "cancelled")


def test_release_starts_a_send_run_that_sends_a_held_campaign(db, ses, slow_rate, monkeypatch):
    monkeypatch.setenv("SES_SENDING_RATE", "500")
    get_settings.cache_clear()
    campaign_id = prepared_campaign(db, states.HELD)

    result = control.apply_action(db, campaign_id, "release", run_id="manual__release-test")

    assert result.trigger_run_id.startswith(f"campaign_control__release__campaign_{campaign_id}__action_")
    row = campaign(db, campaign_id)
    assert (row["status"], row["run_id"]) == (states.RUNNING, result.trigger_run_id)
    # the scheduler runs the queued run: here dag.test() under that run id
    dag_run = run_send_dag(parse_dag("send_campaign"), result.as_xcom()["send_conf"], result.trigger_run_id)
    assert dag_run.state == "success"
    assert campaign(db, campaign_id)["status"] == states.SENT
    assert counts(db, campaign_id) == {"sent": 6}
    assert len(sent_messages()) == 6


@pytest.mark.parametrize("status", [states.PAUSED, states.SCHEDULED, states.HELD, states.DRAFT])
def test_cancel_without_a_run_cancels_the_pending_rows_directly(db, status):
    campaign_id = prepared_campaign(db, status)

    result = control.apply_action(db, campaign_id, "cancel", run_id="manual__c")

    assert result.cancelled == 6
    assert campaign(db, campaign_id)["status"] == states.CANCELLED
    assert campaign(db, campaign_id)["finished_at"] is not None
    assert counts(db, campaign_id) == {"cancelled": 6}
    [action] = actions(db, campaign_id)
    assert (action["old_status"], action["new_status"], action["detail"]["cancelled"]) == (status, "cancelled", 6)


@pytest.mark.parametrize(("status", "action", "message"), [
    (states.CANCELLED, "resume", "cannot resume campaign 1 ('nov-news'): it is cancelled"),
    (states.SENT, "cancel", "cannot cancel campaign 1 ('nov-news'): it is sent"),
    (states.RUNNING, "release", "cannot release campaign 1 ('nov-news'): it is running"),
    (states.PAUSED, "release", "a paused one is resumed"),
    (states.HELD, "resume", "a held one is released"),
    (states.SCHEDULED, "pause", "only a running campaign can be paused"),
    (states.FAILED, "cancel", "it is failed"),
    (states.PAUSED, "pause", "it is paused"),
    (states.PAUSED, "start", "a paused one is resumed"),
    (states.RUNNING, "start", "cannot start campaign 1 ('nov-news'): it is running"),
    (states.SENT, "start", "it is sent"),
])
def test_illegal_moves_fail_clearly_and_change_nothing(db, status, action, message):
    campaign_id = prepared_campaign(db, status)
    before = campaign(db, campaign_id)

    with pytest.raises(IllegalTransition, match=message.replace("(", r"\(").replace(")", r"\)")):
        control.apply_action(db, campaign_id, action, run_id="manual__x")

    assert campaign(db, campaign_id) == before
    assert counts(db, campaign_id) == {"pending": 6}
    assert actions(db, campaign_id) == []


@pytest.mark.parametrize(("campaign_id", "action", "message"), [
    (1, "stop", "action must be one of cancel, pause, resume, release, start, release_unknown, got 'stop'"),
    ("1", "pause", "campaign_id must be a whole number"),
    (True, "pause", "campaign_id must be a whole number"),
    (0, "pause", "campaign_id must be a whole number"),
])
def test_bad_requests_are_refused_with_the_field_named(db, campaign_id, action, message):
    prepared_campaign(db, states.RUNNING)

    with pytest.raises(CampaignDefinitionError, match=message):
        control.apply_action(db, campaign_id, action)

    assert actions(db, 1) == []


def test_unknown_campaign_is_refused(db):
    with pytest.raises(IllegalTransition, match="campaign 99 does not exist"):
        control.apply_action(db, 99, "pause")


def test_a_retried_control_task_neither_acts_nor_starts_a_second_send_run(db):
    campaign_id = prepared_campaign(db, states.PAUSED)
    first = control.apply_action(db, campaign_id, "resume", run_id="manual__r1")

    again = control.apply_action(db, campaign_id, "resume", run_id="manual__r1")

    assert again.repeated
    assert not first.repeated
    assert again.trigger_run_id == first.trigger_run_id
    assert again.action_id == first.action_id
    assert len(actions(db, campaign_id)) == 1
    assert campaign(db, campaign_id)["run_id"] == first.trigger_run_id


def test_a_second_resume_from_another_run_is_refused_while_the_first_is_sending(db):
    campaign_id = prepared_campaign(db, states.PAUSED)
    control.apply_action(db, campaign_id, "resume", run_id="manual__r1")

    with pytest.raises(IllegalTransition, match="it is running"):
        control.apply_action(db, campaign_id, "resume", run_id="manual__r2")

    assert len(actions(db, campaign_id)) == 1


def test_resume_waits_until_the_paused_send_run_has_ended(db):
    campaign_id = prepared_campaign(db, states.PAUSED)
    db.execute("UPDATE campaigns SET run_id = 'manual__old' WHERE id = %s", [campaign_id])
    asked = []

    def still_running(run_id):
        asked.append(run_id)
        return True

    with pytest.raises(IllegalTransition, match="previous send run manual__old is still finishing"):
        control.apply_action(db, campaign_id, "resume", run_id="manual__r1", run_is_active=still_running)

    assert asked == ["manual__old"]
    assert campaign(db, campaign_id)["status"] == states.PAUSED
    assert actions(db, campaign_id) == []
    result = control.apply_action(db, campaign_id, "resume", run_id="manual__r2", run_is_active=lambda _: False)
    assert result.new_status == states.RUNNING
    assert result.as_xcom()["send_conf"] == {"campaign_id": campaign_id}


def test_every_action_agrees_with_the_campaign_state_machine():
    for action in control.ACTIONS.values():
        for old in action.allowed_from:
            assert states.can_move(old, action.to), (action.name, old)
        assert not action.allowed_from & states.TERMINAL, action.name  # a finished campaign stays finished


@pytest.mark.parametrize("status", [states.DRAFT, states.SCHEDULED])
def test_start_names_a_send_run_and_leaves_the_move_to_running_to_it(db, status):
    campaign_id = prepared_campaign(db, status)
    db.execute("UPDATE campaigns SET send_at = now() + interval '3 days' WHERE id = %s", [campaign_id])

    result = control.apply_action(db, campaign_id, "start", actor="ana")

    assert result.trigger_run_id.startswith(f"campaign_control__start__campaign_{campaign_id}__action_")
    assert result.as_xcom()["send_conf"] == {"campaign_id": campaign_id}
    row = campaign(db, campaign_id)
    assert (row["status"], row["run_id"]) == (status, result.trigger_run_id)  # the send run moves it
    if status == states.SCHEDULED:  # due now: the send run's resolve step takes it at once
        assert row["send_at"] <= result.requested_at
    [action] = actions(db, campaign_id)
    assert (action["action"], action["actor"], action["old_status"], action["new_status"]) == (
        "start", "ana", status, None)
    assert action["reason"] == "started by ana"


def test_a_started_draft_is_sent_by_the_run_start_names(db, ses, monkeypatch):
    monkeypatch.setenv("SES_SENDING_RATE", "500")
    get_settings.cache_clear()
    add_contacts(db, [f"d{i}@example.org" for i in range(4)])
    campaign_id = definitions.upsert_campaign(db, definitions.CampaignDefinition.parse(inline_campaign()))["id"]

    result = control.apply_action(db, campaign_id, "start", actor="ana")
    dag_run = run_send_dag(parse_dag("send_campaign"), result.as_xcom()["send_conf"], result.trigger_run_id)

    assert dag_run.state == "success"
    assert campaign(db, campaign_id)["status"] == states.SENT
    assert counts(db, campaign_id) == {"sent": 4}


def test_a_second_start_is_refused_while_the_first_run_is_queued(db):
    campaign_id = prepared_campaign(db, states.DRAFT)
    first = control.apply_action(db, campaign_id, "start", actor="ana")

    with pytest.raises(IllegalTransition, match=f"its previous send run {first.trigger_run_id} is still queued or "
                                                "running: the campaign is being started already"):
        control.apply_action(db, campaign_id, "start", actor="ana", run_is_active=lambda run_id: True)

    assert len(actions(db, campaign_id)) == 1


def test_a_recurring_campaign_is_never_started_itself(db):
    campaign_id = prepared_campaign(db, states.SCHEDULED)
    db.execute("UPDATE campaigns SET recurrence = '0 9 * * 1', send_at = now() + interval '1 day' WHERE id = %s",
               [campaign_id])

    with pytest.raises(IllegalTransition, match="it recurs"):
        control.apply_action(db, campaign_id, "start", actor="ana")

    assert actions(db, campaign_id) == []


def test_duplicate_makes_a_draft_with_the_same_content_under_the_next_free_copy_key(db):
    campaign_id = prepared_campaign(db, states.SENT)
    db.execute("UPDATE campaigns SET preheader = 'Only this week', settings = '{\"track_opens\": false}' "
               "WHERE id = %s", [campaign_id])
    source = campaign(db, campaign_id)

    first = control.duplicate_campaign(db, campaign_id, actor="ana")
    second = control.duplicate_campaign(db, campaign_id, actor="ana")

    assert (first["key"], second["key"]) == ("nov-news-copy", "nov-news-copy-2")
    copy = campaign(db, first["id"])
    for column in ("subject", "preheader", "from_email", "from_name", "reply_to", "html", "text", "audience",
                   "settings"):
        assert copy[column] == source[column], column
    assert copy["name"] == f"{source['name']} (copy)"
    assert (copy["status"], copy["snapshot"], copy["send_at"], copy["run_id"]) == (states.DRAFT, None, None, None)
    assert counts(db, first["id"]) == {}
    [on_copy] = actions(db, first["id"])
    assert (on_copy["action"], on_copy["actor"], on_copy["new_status"]) == ("duplicate", "ana", "draft")
    assert on_copy["detail"] == {"source_id": campaign_id}
    on_source = actions(db, campaign_id)
    assert [a["detail"] for a in on_source] == [{"copy_id": first["id"]}, {"copy_id": second["id"]}]


def test_copy_keys_stay_within_128_characters():
    assert control.copy_key("k" * 128, set()) == "k" * 123 + "-copy"
    assert control.copy_key("a", {"a-copy", "a-copy-2"}) == "a-copy-3"
    assert len(control.copy_key("k" * 128, {"k" * 123 + "-copy"})) == 128


def test_a_test_send_is_recorded_with_who_asked_and_its_run(db):
    campaign_id = prepared_campaign(db, states.DRAFT)

    control.record_test_send(db, campaign_id, ["me@example.com"], actor="ana", run_id="campaigns_view__test__1")

    [action] = actions(db, campaign_id)
    assert (action["action"], action["actor"], action["old_status"], action["new_status"]) == (
        "test_send", "ana", "draft", None)
    assert action["detail"] == {"test_run_id": "campaigns_view__test__1", "recipients": ["me@example.com"]}
