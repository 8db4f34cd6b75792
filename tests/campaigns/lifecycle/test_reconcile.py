"""Unknown sends reconciled: the report of unknown rows no SES event settled, and the release_unknown action.

Rows become `unknown` through the send path's own functions (a claim, then SES's answer lost: ledger.release to
unknown); only their claim time is moved into the past. SES events are recorded by the webhook's own function.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from campaigns import states
from campaigns.errors import IllegalTransition
from campaigns.feedback.ses_events import record_notification
from campaigns.lifecycle import control, reconcile
from campaigns.sending import ledger
from campaigns.sending.ledger import Attempt
from tests.campaigns.lifecycle.test_control import actions, campaign, counts, prepared_campaign
from tests.helpers import insert_campaign

WINDOW = timedelta(hours=24)
CRASHED = Attempt(run_id="manual__crashed", map_index=0, try_number=1)


def ledger_ids(db, campaign_id):
    return [row["id"] for row in db.execute("SELECT id FROM campaign_recipients WHERE campaign_id = %s ORDER BY id",
                                            [campaign_id])]


def make_unknown(db, row_id, *, hours_ago):
    """A claimed row whose SES answer was lost (the sender's own calls), claimed `hours_ago` hours ago."""
    email = db.execute("SELECT email FROM campaign_recipients WHERE id = %s", [row_id]).fetchone()["email"]
    assert ledger.claim(db, row_id, email, CRASHED) == "sending"
    ledger.release(db, row_id, CRASHED, states.Row.UNKNOWN, "read timeout: outcome unknown")
    db.execute("UPDATE campaign_recipients SET claimed_at = now() - make_interval(hours => %s) WHERE id = %s",
               [hours_ago, row_id])


def ses_send_event(db, settings, campaign_id, row_id, message_id):
    """SES's Send event for the row, as the webhook records it (tags carry the campaign and the ledger row)."""
    event = {"eventType": "Send", "send": {},
             "mail": {"messageId": message_id, "timestamp": datetime.now(UTC).isoformat(),
                      "destination": ["x@example.org"],
                      "tags": {"campaign": [str(campaign_id)], "recipient": [str(row_id)]}}}
    return record_notification(db, {"MessageId": f"sns-{message_id}", "Message": json.dumps(event),
                                    "Timestamp": datetime.now(UTC).isoformat()}, settings)


def status_of(db, row_id):
    return db.execute("SELECT status FROM campaign_recipients WHERE id = %s", [row_id]).fetchone()["status"]


@pytest.fixture
def sent_with_unknown(db, settings):
    return sent_campaign_with_unknown(db, settings)


def sent_campaign_with_unknown(db, settings):
    """A sent campaign of 6: rows 0-1 unknown for 25 h, 2 unknown for 1 h, 3 unknown for 25 h but SES's Send event
    came while it was still `sending` (recorded, left to its sender), 4-5 sent."""
    campaign_id = prepared_campaign(db, states.RUNNING)
    ids = ledger_ids(db, campaign_id)
    for row_id in ids[:2]:
        make_unknown(db, row_id, hours_ago=25)
    make_unknown(db, ids[2], hours_ago=1)
    email = db.execute("SELECT email FROM campaign_recipients WHERE id = %s", [ids[3]]).fetchone()["email"]
    ledger.claim(db, ids[3], email, CRASHED)
    assert ses_send_event(db, settings, campaign_id, ids[3], "ses-early") == "send"
    ledger.release(db, ids[3], CRASHED, states.Row.UNKNOWN, "read timeout: outcome unknown")
    db.execute("UPDATE campaign_recipients SET claimed_at = now() - interval '25 hours' WHERE id = %s", [ids[3]])
    for row_id in ids[4:]:
        email = db.execute("SELECT email FROM campaign_recipients WHERE id = %s", [row_id]).fetchone()["email"]
        ledger.claim(db, row_id, email, CRASHED)
        ledger.mark_sent(db, CRASHED, ledger.Sent.now(row_id, f"ses-{row_id}"))
    states.move_campaign(db, campaign_id, states.SENT, expected=states.RUNNING)
    return campaign_id, ids


# ---- the report ----------------------------------------------------------------------------------------------------

def test_the_report_counts_only_unknown_rows_past_the_window_that_no_ses_event_settled(db, sent_with_unknown):
    campaign_id, ids = sent_with_unknown
    quiet = insert_campaign(db, "quiet")  # a campaign without unknown rows is not reported

    [found] = reconcile.unsettled(db, WINDOW)

    assert (found.campaign_id, found.key, found.status, found.unknown) == (campaign_id, "nov-news", "sent", 2)
    assert [row["id"] for row in found.sample] == ids[:2]
    assert found.oldest < datetime.now(UTC) - timedelta(hours=24)
    assert found.sample[0]["error"] == "read timeout: outcome unknown"
    assert reconcile.unsettled_of(db, quiet, WINDOW) is None
    assert reconcile.unsettled_of(db, campaign_id, timedelta(minutes=30)).unknown == 3  # the young one too


def test_the_report_logs_count_and_sample_per_campaign_and_returns_no_addresses(db, sent_with_unknown, caplog):
    campaign_id, ids = sent_with_unknown
    email = db.execute("SELECT email FROM campaign_recipients WHERE id = %s", [ids[0]]).fetchone()["email"]

    with caplog.at_level(logging.INFO, logger="campaigns.lifecycle.reconcile"):
        result = reconcile.report(db, WINDOW)

    assert result == [{"campaign_id": campaign_id, "key": "nov-news", "status": "sent", "unknown": 2,
                       "oldest": result[0]["oldest"], "sample_ids": ids[:2]}]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (f"campaign {campaign_id} ('nov-news', sent): 2 recipient(s) unknown for more than 24 h with no SES "
            "event") in warning.message
    assert f"{email} (row {ids[0]}, claimed " in warning.message
    assert email not in json.dumps(result)


def test_the_sample_is_capped_and_the_count_is_not(db, settings):
    campaign_id = prepared_campaign(db, states.RUNNING, recipients=12)
    for row_id in ledger_ids(db, campaign_id):
        make_unknown(db, row_id, hours_ago=30)

    [found] = reconcile.unsettled(db, WINDOW)

    assert found.unknown == 12
    assert len(found.sample) == reconcile.SAMPLE_SIZE


# ---- the release ---------------------------------------------------------------------------------------------------

def test_release_makes_only_the_unsettled_rows_pending_and_reopens_the_campaign(db, sent_with_unknown):
    campaign_id, ids = sent_with_unknown

    result = control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)

    assert (result.old_status, result.new_status, result.released) == (states.SENT, states.RUNNING, 2)
    assert [status_of(db, row_id) for row_id in ids] == ["pending", "pending", "unknown", "unknown", "sent", "sent"]
    row = campaign(db, campaign_id)
    assert (row["status"], row["run_id"], row["finished_at"]) == (states.RUNNING, result.trigger_run_id, None)
    assert result.trigger_run_id.startswith(f"campaign_control__release_unknown__campaign_{campaign_id}__action_")
    assert result.as_xcom()["send_conf"] == {"campaign_id": campaign_id}
    [action] = actions(db, campaign_id)
    assert (action["action"], action["actor"], action["old_status"], action["new_status"]) == (
        "release_unknown", "ana", "sent", "running")
    assert action["detail"]["released"] == 2
    assert action["detail"]["released_sample"] == ids[:2]
    assert action["reason"] == "reopened by ana to send 2 unknown recipient(s) once more"
    assert db.execute("SELECT attempt FROM campaign_recipients WHERE id = %s", [ids[0]]).fetchone()["attempt"] is None


def test_a_row_ses_settled_meanwhile_is_not_released(db, settings, sent_with_unknown):
    campaign_id, ids = sent_with_unknown
    assert reconcile.unsettled_of(db, campaign_id, WINDOW).unknown == 2  # what the page showed

    assert ses_send_event(db, settings, campaign_id, ids[0], "ses-late") == "send settled sent"
    result = control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)

    assert result.released == 1
    assert [status_of(db, row_id) for row_id in ids[:2]] == ["sent", "pending"]


def test_a_second_release_releases_nothing(db, sent_with_unknown):
    campaign_id, _ = sent_with_unknown
    control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)

    with pytest.raises(IllegalTransition, match="it is running; only a sent campaign's unknown recipients"):
        control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)
    # its send run ended before sending them (say, a failed preflight): sent again, the rows still pending
    states.move_campaign(db, campaign_id, states.SENT, expected=states.RUNNING)
    with pytest.raises(IllegalTransition, match="none is unknown for more than 24 h without an SES event"):
        control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)

    assert counts(db, campaign_id) == {"pending": 2, "unknown": 2, "sent": 2}
    assert len(actions(db, campaign_id)) == 1
    assert campaign(db, campaign_id)["status"] == states.SENT


def test_the_window_defaults_to_the_setting(db, sent_with_unknown, settings_env):
    campaign_id, ids = sent_with_unknown
    settings_env(UNKNOWN_SENDS_WINDOW_HOURS="0.5")

    result = control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana")

    assert result.released == 3  # the row unknown for an hour is past a half-hour window
    assert status_of(db, ids[3]) == "unknown"  # its Send event is on record: never released


# ---- the state move ------------------------------------------------------------------------------------------------

def test_a_sent_campaign_moves_only_back_to_running():
    assert states.CAMPAIGN_MOVES[states.SENT] == frozenset({states.RUNNING})
    assert {states.CANCELLED, states.FAILED} == states.TERMINAL


@pytest.mark.parametrize("new", [states.PAUSED, states.CANCELLED, states.FAILED, states.DRAFT, states.SCHEDULED])
def test_any_other_move_out_of_sent_is_illegal(db, new):
    campaign_id = prepared_campaign(db, states.SENT)

    with pytest.raises(IllegalTransition, match=f"is sent; it cannot move to {new}"):
        states.move_campaign(db, campaign_id, new)

    assert campaign(db, campaign_id)["status"] == states.SENT


def test_release_unknown_is_the_only_action_a_sent_campaign_allows():
    assert [name for name, spec in control.ACTIONS.items() if states.SENT in spec.allowed_from] == [
        control.RELEASE_UNKNOWN]


@pytest.mark.parametrize("status", [states.DRAFT, states.SCHEDULED, states.HELD, states.RUNNING, states.PAUSED,
                                    states.CANCELLED, states.FAILED])
def test_release_unknown_is_refused_from_any_other_state_and_changes_nothing(db, status):
    campaign_id = prepared_campaign(db, states.RUNNING)
    make_unknown(db, ledger_ids(db, campaign_id)[0], hours_ago=30)
    db.execute("UPDATE campaigns SET status = %s WHERE id = %s", [status, campaign_id])

    with pytest.raises(IllegalTransition, match=f"cannot release_unknown campaign {campaign_id} \\('nov-news'\\): "
                                                f"it is {status}; only a sent campaign's unknown recipients"):
        control.apply_action(db, campaign_id, control.RELEASE_UNKNOWN, actor="ana", unknown_window=WINDOW)

    assert counts(db, campaign_id)["unknown"] == 1
    assert actions(db, campaign_id) == []
