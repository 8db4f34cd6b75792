"""Scheduled and recurring campaigns against the real campaign database, with a fixed "now" passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaigns.config import get_settings
from campaigns.errors import CampaignDefinitionError, IllegalTransition
from campaigns.lifecycle import definitions, pipeline, scheduling
from tests.helpers import inline_campaign

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
HOLD = timedelta(hours=6)
DAILY_9_VIENNA = {"cron": "0 9 * * *", "timezone": "Europe/Vienna"}


def define(db, now=NOW, **overrides):
    definition = definitions.CampaignDefinition.parse(inline_campaign(**overrides))
    return definitions.upsert_campaign(db, definition, now=now)


def campaign(db, key="nov-news"):
    return db.execute("SELECT * FROM campaigns WHERE key = %s", [key]).fetchone()


def count_campaigns(db):
    return db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"]


def actions(db, campaign_id):
    return db.execute("SELECT * FROM campaign_actions WHERE campaign_id = %s ORDER BY id", [campaign_id]).fetchall()


def dispatch(db, now=NOW):
    return scheduling.dispatch_due(db, now, hold_after=HOLD, run_id="dispatcher-run")


# --- defining a scheduled campaign ------------------------------------------------------------------------------

@pytest.mark.parametrize("send_at", ["2026-12-01T09:00:00", "2026-12-01 09:00"])
def test_naive_send_at_is_refused_with_a_clear_error_and_nothing_is_stored(db, settings, send_at):
    conf = {"campaign": inline_campaign(send_at=send_at)}

    with pytest.raises(CampaignDefinitionError, match=r"campaign.send_at .* has no timezone: add one"):
        pipeline.resolve_campaign(conf, "manual__1", now=NOW)

    assert count_campaigns(db) == 0


@pytest.mark.parametrize(("send_at", "problem"), [
    ("next tuesday", "must be an ISO 8601 timestamp with a timezone"),
    (1764579600, "must be an ISO 8601 timestamp string"),
])
def test_unreadable_send_at_is_refused(db, send_at, problem):
    with pytest.raises(CampaignDefinitionError, match=problem):
        define(db, send_at=send_at)
    assert count_campaigns(db) == 0


def test_inline_campaign_with_future_send_at_is_stored_scheduled_and_not_started(db, settings):
    conf = {"campaign": inline_campaign(send_at="2026-06-02T09:00:00+02:00")}

    assert pipeline.resolve_campaign(conf, "manual__1", now=NOW) is None

    row = campaign(db)
    assert row["status"] == "scheduled"
    assert row["send_at"] == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)
    assert row["run_id"] is None


def test_inline_campaign_whose_send_at_has_come_is_sent_by_this_run(db, settings):
    conf = {"campaign": inline_campaign(send_at="2026-06-01T08:59:00Z")}

    campaign_id = pipeline.resolve_campaign(conf, "manual__1", now=NOW)

    row = campaign(db)
    assert campaign_id == row["id"]
    assert row["run_id"] == "manual__1"  # taken: the dispatcher will not start it a second time
    assert dispatch(db) == []


def test_retriggering_the_same_scheduled_definition_keeps_one_campaign(db):
    first = define(db, send_at="2026-06-02T09:00:00Z")
    second = define(db, send_at="2026-06-02T09:00:00Z")

    assert second["id"] == first["id"]
    assert count_campaigns(db) == 1


def test_changing_send_at_of_a_scheduled_campaign_reschedules_it(db):
    first = define(db, send_at="2026-06-02T09:00:00Z")
    db.execute("UPDATE campaigns SET run_id = 'dispatch__old' WHERE id = %s", [first["id"]])

    second = define(db, send_at="2026-06-03T10:30:00+02:00")

    assert second["id"] == first["id"]
    assert second["status"] == "scheduled"
    assert second["send_at"] == datetime(2026, 6, 3, 8, 30, tzinfo=UTC)
    assert second["run_id"] is None  # a run that took the old time has no claim on the new one


def test_a_draft_becomes_scheduled_when_its_definition_gets_a_send_at(db):
    define(db)
    assert campaign(db)["status"] == "draft"

    define(db, send_at="2026-06-02T09:00:00Z")

    assert campaign(db)["status"] == "scheduled"


@pytest.mark.parametrize("status", ["held", "running", "paused", "sent", "cancelled"])
def test_a_started_or_finished_campaign_cannot_be_rescheduled(db, status):
    row = define(db, send_at="2026-06-02T09:00:00Z")
    db.execute("UPDATE campaigns SET status = %s WHERE id = %s", [status, row["id"]])

    with pytest.raises(IllegalTransition, match=f"campaign 'nov-news' is {status}; it can no longer be rescheduled"):
        define(db, send_at="2026-06-05T09:00:00Z")

    assert campaign(db)["send_at"] == datetime(2026, 6, 2, 9, 0, tzinfo=UTC)


def test_a_scheduled_campaign_triggered_without_send_at_is_refused_not_sent(db):
    define(db, send_at="2026-06-02T09:00:00Z")

    with pytest.raises(CampaignDefinitionError, match="is scheduled for 2026-06-02T09:00:00Z: give send_at"):
        define(db)

    assert campaign(db)["status"] == "scheduled"


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"send_at": "2026-06-02T09:00:00Z", "recurrence": DAILY_9_VIENNA}, "not both"),
    ({"recurrence": {"cron": "0 9 * *", "timezone": "UTC"}}, "must have 5 fields"),
    ({"recurrence": {"cron": "0 25 * * *", "timezone": "UTC"}}, "is not a valid cron expression"),
    ({"recurrence": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}}, "is not a known IANA timezone"),
    ({"recurrence": {"cron": "0 0 30 2 *", "timezone": "UTC"}}, "never occurs"),
    ({"recurrence": {"cron": "0 9 * * *"}}, "must be an object like"),
    ({"recurrence": DAILY_9_VIENNA, "key": "k" * 120}, "at most 113 characters"),
])
def test_bad_recurrence_is_refused_with_the_reason(db, overrides, problem):
    with pytest.raises(CampaignDefinitionError, match=problem):
        define(db, **overrides)
    assert count_campaigns(db) == 0


def test_recurring_campaign_is_stored_with_its_next_occurrence_in_its_own_timezone(db, settings):
    # 29 March 2026 is the EU switch to summer time: 09:00 in Vienna is 08:00 UTC before it and 07:00 UTC after.
    conf = {"campaign": inline_campaign(key="daily", recurrence=DAILY_9_VIENNA)}

    assert pipeline.resolve_campaign(conf, "manual__1", now=datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) is None

    row = campaign(db, "daily")
    assert row["status"] == "scheduled"
    assert row["recurrence"] == "CRON_TZ=Europe/Vienna 0 9 * * *"
    assert row["send_at"] == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    recurrence = scheduling.Recurrence.from_stored(row["recurrence"])
    assert recurrence.next_after(datetime(2026, 3, 27, 12, 0, tzinfo=UTC)) == datetime(2026, 3, 28, 8, 0, tzinfo=UTC)


def test_recurring_template_is_never_sent_by_id(db, settings):
    row = define(db, key="daily", recurrence=DAILY_9_VIENNA)

    with pytest.raises(CampaignDefinitionError, match=r"is recurring .* each occurrence is its own campaign"):
        pipeline.resolve_campaign({"campaign_id": row["id"]}, "manual__1", now=NOW)


# --- the dispatcher's pass --------------------------------------------------------------------------------------

def test_due_campaign_is_listed_with_a_deterministic_run_id_and_future_ones_are_not(db):
    due = define(db, key="due", send_at="2026-06-01T08:59:30+00:00")
    define(db, key="later", send_at="2026-06-01T09:01:00+00:00")

    assert dispatch(db) == [{
        "trigger_run_id": f"dispatch__campaign-{due['id']}__20260601T085930Z",
        "conf": {"campaign_id": due["id"], "scheduled_for": "2026-06-01T08:59:30Z"},
        "run_after": "2026-06-01T08:59:30Z",
    }]
    assert dispatch(db) == dispatch(db)  # nothing is marked: the run id alone keeps a second trigger out


def test_campaign_more_than_the_hold_delay_late_is_held_with_the_reason_not_dispatched(db):
    stale = define(db, key="stale", send_at="2026-06-01T02:59:00Z")  # 6 h 1 min before NOW
    late = define(db, key="late", send_at="2026-06-01T03:01:00Z")  # 5 h 59 min: still sent

    triggers = dispatch(db)

    assert [t["conf"]["campaign_id"] for t in triggers] == [late["id"]]
    held = campaign(db, "stale")
    assert held["status"] == "held"
    assert "send_at 2026-06-01T02:59:00Z passed more than 6 hours" in held["status_reason"]
    assert "release it" in held["status_reason"]
    [action] = actions(db, stale["id"])
    assert (action["action"], action["actor"], action["old_status"], action["new_status"], action["run_id"]) == (
        "hold", "dispatcher", "scheduled", "held", "dispatcher-run")
    assert action["reason"] == held["status_reason"]
    assert dispatch(db) == triggers  # held stays held; it is not listed again


def test_campaign_a_run_already_took_is_neither_dispatched_again_nor_held(db):
    row = define(db, send_at="2026-06-01T01:00:00Z")
    db.execute("UPDATE campaigns SET run_id = 'dispatch__earlier' WHERE id = %s", [row["id"]])

    assert dispatch(db) == []
    assert campaign(db)["status"] == "scheduled"


def test_recurring_occurrence_becomes_its_own_campaign_and_is_dispatched(db):
    template = define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="daily", recurrence=DAILY_9_VIENNA,
                      subject="Today", audience={"lists": ["newsletter"], "where": {"plan": "pro"}})
    assert template["send_at"] == datetime(2026, 6, 1, 7, 0, tzinfo=UTC)

    triggers = dispatch(db)

    instance = campaign(db, "daily:20260601T0700Z")
    assert (instance["parent_id"], instance["occurrence_at"], instance["send_at"], instance["status"]) == (
        template["id"], datetime(2026, 6, 1, 7, 0, tzinfo=UTC), datetime(2026, 6, 1, 7, 0, tzinfo=UTC), "scheduled")
    assert (instance["subject"], instance["audience"]) == ("Today", template["audience"])
    assert instance["recurrence"] is None
    assert [t["conf"] for t in triggers] == [{"campaign_id": instance["id"], "scheduled_for": "2026-06-01T07:00:00Z"}]
    advanced = campaign(db, "daily")
    assert (advanced["status"], advanced["send_at"]) == ("scheduled", datetime(2026, 6, 2, 7, 0, tzinfo=UTC))
    assert actions(db, template["id"]) == []  # nothing was missed


def test_the_same_occurrence_is_created_once_whatever_races(db):
    template = define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="daily", recurrence=DAILY_9_VIENNA)
    dispatch(db)
    # A second dispatcher pass that read the template before the first advanced it.
    db.execute("UPDATE campaigns SET send_at = %s WHERE id = %s", [datetime(2026, 6, 1, 7, 0, tzinfo=UTC),
                                                                    template["id"]])

    dispatch(db)

    children = db.execute("SELECT key FROM campaigns WHERE parent_id = %s", [template["id"]]).fetchall()
    assert [c["key"] for c in children] == ["daily:20260601T0700Z"]


def test_after_downtime_only_the_latest_occurrence_is_created_and_the_missed_ones_recorded(db):
    template = define(db, now=datetime(2026, 5, 28, 12, 0, tzinfo=UTC), key="daily", recurrence=DAILY_9_VIENNA)

    dispatch(db)  # 29, 30, 31 May and 1 June 07:00 UTC have passed; 1 June is 2 hours ago

    children = db.execute("SELECT key, status FROM campaigns WHERE parent_id = %s", [template["id"]]).fetchall()
    assert [(c["key"], c["status"]) for c in children] == [("daily:20260601T0700Z", "scheduled")]
    [skipped] = actions(db, template["id"])
    assert skipped["action"] == "skip_occurrences"
    assert skipped["detail"] == {"missed": 3, "first_missed": "2026-05-29T07:00:00Z",
                                 "created": "2026-06-01T07:00:00Z"}


def test_latest_occurrence_found_too_late_is_created_held(db):
    template = define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="daily", recurrence=DAILY_9_VIENNA)

    triggers = dispatch(db, now=datetime(2026, 6, 1, 13, 30, tzinfo=UTC))  # 6 h 30 min after 07:00 UTC

    assert triggers == []
    instance = campaign(db, "daily:20260601T0700Z")
    assert instance["parent_id"] == template["id"]
    assert instance["status"] == "held"
    assert [a["action"] for a in actions(db, instance["id"])] == ["hold"]
    assert campaign(db, "daily")["status"] == "scheduled"  # the template goes on: tomorrow is sent as usual


def test_changing_a_recurrence_recounts_the_next_occurrence(db):
    define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="daily", recurrence=DAILY_9_VIENNA)

    row = define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="daily",
                 recurrence={"cron": "30 18 * * *", "timezone": "UTC"})

    assert (row["recurrence"], row["send_at"]) == ("CRON_TZ=UTC 30 18 * * *", datetime(2026, 5, 31, 18, 30, tzinfo=UTC))


# --- the send run the dispatcher starts (send_campaign's resolve step) ------------------------------------------

def dispatched_conf(row, scheduled_for=None):
    return {"campaign_id": row["id"], "scheduled_for": scheduled_for or scheduling.utc_text(row["send_at"])}


def test_dispatched_run_takes_its_due_campaign_and_a_second_run_does_not(db, settings):
    row = define(db, send_at="2026-06-01T08:59:00Z")

    assert pipeline.resolve_campaign(dispatched_conf(row), "dispatch__a", now=NOW) == row["id"]
    assert pipeline.resolve_campaign(dispatched_conf(row), "dispatch__b", now=NOW) is None

    assert campaign(db)["run_id"] == "dispatch__a"


def test_dispatched_run_for_a_rescheduled_campaign_sends_nothing(db, settings):
    row = define(db, send_at="2026-06-01T08:59:00Z")
    define(db, send_at="2026-06-01T12:00:00Z")

    assert pipeline.resolve_campaign(dispatched_conf(row, "2026-06-01T08:59:00Z"), "dispatch__old", now=NOW) is None
    assert campaign(db)["run_id"] is None


def test_dispatched_run_for_a_held_campaign_sends_nothing_but_a_person_can_release_it(db, settings):
    row = define(db, send_at="2026-05-31T09:00:00Z")
    dispatch(db)
    assert campaign(db)["status"] == "held"

    assert pipeline.resolve_campaign(dispatched_conf(row), "dispatch__late", now=NOW) is None
    assert pipeline.resolve_campaign({"campaign_id": row["id"]}, "manual__release", now=NOW) == row["id"]


def test_dispatched_run_that_starts_too_late_holds_the_campaign(db, settings, monkeypatch):
    monkeypatch.setenv("SCHEDULE_HOLD_AFTER_HOURS", "1")
    get_settings.cache_clear()
    row = define(db, send_at="2026-06-01T07:30:00Z")

    assert pipeline.resolve_campaign(dispatched_conf(row), "dispatch__queued-long", now=NOW) is None

    held = campaign(db)
    assert held["status"] == "held"
    assert "more than 1 hour before it could be sent (send run dispatch__queued-long found it" in held["status_reason"]
    assert [(a["action"], a["run_id"]) for a in actions(db, row["id"])] == [("hold", "dispatch__queued-long")]


def test_manual_run_for_a_campaign_scheduled_later_sends_nothing(db, settings):
    row = define(db, send_at="2026-06-02T09:00:00Z")

    assert pipeline.resolve_campaign({"campaign_id": row["id"]}, "manual__1", now=NOW) is None
    assert campaign(db)["status"] == "scheduled"
