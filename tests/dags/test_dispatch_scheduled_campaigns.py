"""dispatch_scheduled_campaigns through dag.test(), and the send_campaign runs it starts.

The dispatcher judges "due" by its run's logical date (a fixed NOW here); the send_campaign runs it triggers are
created in the test Airflow metadata database, queued, and checked there (dag.test() does not run them: the tests
that need a send run it themselves with the triggered run's conf).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaigns.lifecycle import definitions, scheduling
from tests.helpers import add_contacts, inline_campaign, parse_dag, sent_messages

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAG_IDS = ("dispatch_scheduled_campaigns", "send_campaign")

pytestmark = pytest.mark.usefixtures("fast_rate")  # no waiting on the limiter (tested on its own)


@pytest.fixture(autouse=True)
def no_earlier_runs():
    """Campaign ids restart at 1 in every test, so a run id from an earlier test would look like a duplicate."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(TaskInstance).where(TaskInstance.dag_id.in_(DAG_IDS)))
        session.execute(delete(DagRun).where(DagRun.dag_id.in_(DAG_IDS)))


def dispatch_at(now):
    return parse_dag("dispatch_scheduled_campaigns").test(logical_date=now)


def send_runs():
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == "send_campaign").order_by(DagRun.id)).all()
        return [{"run_id": r.run_id, "conf": r.conf, "state": r.state, "run_type": r.run_type,
                 "run_after": r.run_after} for r in runs]


def task_states(dag_run, task_id):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return sorted(session.scalars(select(TaskInstance.state).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id,
            TaskInstance.task_id == task_id)).all())


def define(db, now=NOW, **overrides):
    return definitions.upsert_campaign(db, definitions.CampaignDefinition.parse(inline_campaign(**overrides)), now=now)


def campaign(db, key="nov-news"):
    return db.execute("SELECT * FROM campaigns WHERE key = %s", [key]).fetchone()


def test_due_campaign_triggers_send_campaign_with_a_deterministic_run_id_and_its_conf(db):
    row = define(db, send_at="2026-06-01T08:59:00Z")
    define(db, key="later", send_at="2026-06-01T09:05:00Z")

    dag_run = dispatch_at(NOW)

    assert dag_run.state == "success"
    [run] = send_runs()
    assert run["run_id"] == f"dispatch__campaign-{row['id']}__20260601T085900Z"
    assert run["conf"] == {"campaign_id": row["id"], "scheduled_for": "2026-06-01T08:59:00Z"}
    assert (run["state"], run["run_type"]) == ("queued", "operator_triggered")
    assert run["run_after"] == datetime(2026, 6, 1, 8, 59, tzinfo=UTC)


def test_two_dispatcher_runs_never_start_the_same_campaign_twice(db):
    define(db, send_at="2026-06-01T08:59:00Z")
    dispatch_at(NOW)

    second = dispatch_at(NOW + timedelta(minutes=1))  # the first send run has not taken the campaign yet

    assert second.state == "success"
    assert len(send_runs()) == 1
    assert task_states(second, "trigger_send_campaign") == ["skipped"]


def test_nothing_due_triggers_nothing(db):
    define(db, send_at="2026-06-01T09:01:00Z")

    assert dispatch_at(NOW).state == "success"
    assert send_runs() == []


def test_a_rescheduled_campaign_gets_a_new_run(db):
    row = define(db, send_at="2026-06-01T08:59:00Z")
    dispatch_at(NOW)
    define(db, send_at="2026-06-01T09:10:00Z")

    dispatch_at(NOW + timedelta(minutes=10))

    assert [r["run_id"] for r in send_runs()] == [f"dispatch__campaign-{row['id']}__20260601T085900Z",
                                                  f"dispatch__campaign-{row['id']}__20260601T091000Z"]


def test_campaign_found_hours_late_is_held_not_triggered(db):
    row = define(db, send_at="2026-06-01T02:00:00Z")

    dag_run = dispatch_at(NOW)

    assert dag_run.state == "success"
    assert send_runs() == []
    held = campaign(db)
    assert held["status"] == "held"
    assert "passed more than 6 hours" in held["status_reason"]
    action = db.execute("SELECT action, actor, run_id FROM campaign_actions WHERE campaign_id = %s",
                        [row["id"]]).fetchone()
    assert (action["action"], action["actor"], action["run_id"]) == ("hold", "dispatcher", dag_run.run_id)


def test_recurring_occurrence_is_created_and_triggered_as_its_own_campaign(db):
    template = define(db, now=datetime(2026, 5, 31, 12, 0, tzinfo=UTC), key="weekly",
                      recurrence={"cron": "0 9 * * MON", "timezone": "Europe/Vienna"})  # 1 June 2026 is a Monday

    dispatch_at(NOW)
    dispatch_at(NOW + timedelta(minutes=1))

    instance = campaign(db, "weekly:20260601T0700Z")
    assert (instance["parent_id"], instance["occurrence_at"]) == (template["id"], datetime(2026, 6, 1, 7, 0,
                                                                                          tzinfo=UTC))
    assert [r["run_id"] for r in send_runs()] == [f"dispatch__campaign-{instance['id']}__20260601T070000Z"]
    assert campaign(db, "weekly")["send_at"] == datetime(2026, 6, 8, 7, 0, tzinfo=UTC)


# --- the send_campaign runs (real clock: the send run compares send_at with when it runs) ------------------------

def test_inline_campaign_with_future_send_at_ends_after_resolve_without_sending(db, ses):
    add_contacts(db, ["ana@example.org"])
    send_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()

    dag_run = parse_dag("send_campaign").test(run_conf={"campaign": inline_campaign(send_at=send_at)})

    assert dag_run.state == "success"
    assert task_states(dag_run, "resolve_campaign") == ["success"]
    for task_id in ("preflight", "snapshot_recipients", "plan_batches", "send_batch", "finalize"):
        assert task_states(dag_run, task_id) == ["skipped"], task_id
    row = campaign(db)
    assert row["status"] == "scheduled"
    assert sent_messages() == []


def test_naive_send_at_fails_the_run_before_anything_is_stored(db, ses):
    dag_run = parse_dag("send_campaign").test(run_conf={"campaign": inline_campaign(send_at="2026-12-01T09:00:00")})

    assert dag_run.state == "failed"
    assert campaign(db) is None


def test_the_dispatched_run_sends_the_campaign_once(db, ses):
    add_contacts(db, ["ana@example.org", "bo@example.org"])
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    define(db, now=now, send_at=(now - timedelta(minutes=1)).isoformat())
    dispatch_at(now)
    [triggered] = send_runs()

    first = parse_dag("send_campaign").test(run_conf=triggered["conf"])
    again = parse_dag("send_campaign").test(run_conf=triggered["conf"])  # e.g. a duplicate trigger

    assert (first.state, again.state) == ("success", "success")
    assert campaign(db)["status"] == "sent"
    assert len(sent_messages()) == 2
    assert task_states(again, "preflight") == ["skipped"]


def test_the_dispatched_run_of_a_held_campaign_sends_nothing(db, ses):
    add_contacts(db, ["ana@example.org"])
    row = define(db, send_at=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    conf = {"campaign_id": row["id"], "scheduled_for": scheduling.utc_text(row["send_at"])}

    dag_run = parse_dag("send_campaign").test(run_conf=conf)

    assert dag_run.state == "success"
    assert campaign(db)["status"] == "held"  # the late run held it itself: the dispatcher had not yet
    assert sent_messages() == []
