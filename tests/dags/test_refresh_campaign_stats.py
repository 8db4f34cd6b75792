"""refresh_campaign_stats through dag.test(): real PostgreSQL, events written by the product's own functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from campaigns.db import connect
from campaigns.lifecycle import stats
from tests.campaigns.lifecycle.test_stats import assert_matches_scratch, make_campaign, ses_event, track
from tests.helpers import parse_dag


@pytest.fixture
def stats_dag():
    """A freshly parsed DAG per test (dag.test() runs in-process)."""
    return parse_dag("refresh_campaign_stats")


def test_runs_every_five_minutes_one_at_a_time_without_catchup(stats_dag):
    assert stats_dag.timetable.delta == timedelta(minutes=5)
    assert stats_dag.catchup is False
    assert stats_dag.max_active_runs == 1
    assert [t.task_id for t in stats_dag.topological_sort()] == ["roll_up_stats", "prune_old_events"]


def test_a_run_rolls_up_events_then_prunes_old_rolled_up_ones(stats_dag, db, spool, settings):
    now = datetime.now(UTC)
    campaign_id, ids = make_campaign(db, "dag", now - timedelta(days=450), sent=3)
    track(spool, db, ("open", campaign_id, ids[0], now - timedelta(days=449), {}))
    db.execute("UPDATE email_events SET created_at = occurred_at")  # an event from 449 days ago
    track(spool, db, ("click", campaign_id, ids[1], now - timedelta(hours=1), {"link_id": 0}))

    dag_run = stats_dag.test()

    assert dag_run.state == "success"
    result = stats.campaign_stats(db, campaign_id)
    # both opens (one implied by the click) and the click are counted although the old open is gone now
    assert (result["opens"], result["unique_opens"], result["clicks"], result["sent"]) == (2, 2, 1, 3)
    assert [e["type"] for e in db.execute("SELECT type FROM email_events ORDER BY id")] == ["click", "open"]


def test_an_event_committed_after_a_run_with_a_lower_id_is_counted_once(stats_dag, db, dsn, settings):
    campaign_id, _ = make_campaign(db, "late", datetime.now(UTC) - timedelta(hours=3), sent=2)
    late = connect(dsn)
    try:
        late.execute("SELECT 1")
        ses_event(late, settings, "Delivery", "msg-late-0", datetime.now(UTC))  # lower id, still uncommitted
        ses_event(db, settings, "Delivery", "msg-late-1", datetime.now(UTC))
        assert stats_dag.test().state == "success"
        assert stats.campaign_stats(db, campaign_id)["delivered"] == 1
        late.commit()
    finally:
        late.close()

    assert stats_dag.test().state == "success"
    assert stats_dag.test().state == "success"

    assert stats.campaign_stats(db, campaign_id)["delivered"] == 2
    assert_matches_scratch(db, campaign_id)
