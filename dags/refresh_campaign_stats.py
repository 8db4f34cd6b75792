"""
### refresh_campaign_stats: roll events and ledgers up into the stats tables, then apply event retention

Every 5 minutes (no catch-up, one run at a time):

`roll_up_stats -> prune_old_events`

- **roll_up_stats** counts exactly the email events committed since the last run (never one twice, never one
  missed, even when transactions commit out of id order) into `campaign_stats`, `campaign_stats_series`,
  `campaign_link_stats` and `email_event_counts_hourly`, and recounts the ledgers of campaigns that changed.
  Its cost follows the new events, not the history.
- **prune_old_events** deletes events older than `EVENTS_RETENTION_DAYS` (default 400; 0 keeps them) that a
  rollup has already counted: the rollups keep the numbers.

What every table and column means, and the SQL for the usual questions: docs/analytics.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

PRUNE_MAX_ROWS_PER_RUN = 200_000  # a backlog is worked off over several runs instead of one long task


@dag(
    dag_id="refresh_campaign_stats",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["campaigns", "stats"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    dagrun_timeout=timedelta(minutes=30),
)
def refresh_campaign_stats():
    @task
    def roll_up_stats() -> dict:
        from campaigns.config import get_settings
        from campaigns.db import campaign_db
        from campaigns.lifecycle.stats import refresh

        with campaign_db(get_settings().db_conn_id) as conn:
            return refresh(conn)

    @task
    def prune_old_events(_rolled_up: dict) -> int:
        from campaigns.config import get_settings
        from campaigns.db import campaign_db
        from campaigns.lifecycle.stats import prune_events

        settings = get_settings()
        with campaign_db(settings.db_conn_id) as conn:
            return prune_events(conn, settings.events_retention_days, max_rows=PRUNE_MAX_ROWS_PER_RUN)

    prune_old_events(roll_up_stats())


refresh_campaign_stats()
