"""
### reconcile_unknown: report the unknown sends that no SES event settled

Hourly by default (`RECONCILE_UNKNOWN_SCHEDULE`; no catch-up, one run at a time):

`report_unknown`

A ledger row is `unknown` when its SES call may or may not have happened: a send task crashed between claiming it
and SES's answer, or the answer timed out. SES Send, Delivery and Bounce events settle most of them within seconds.
This run reports, per campaign, the `unknown` rows that are older than `UNKNOWN_SENDS_WINDOW_HOURS` (default 24)
and have no SES event at all: how many, since when, and a sample of up to 10 (address, ledger row, claim time) as a
warning in the log; the run's XCom holds the counts and the sample's row ids.

Nothing is changed and nothing is resent: such rows stay `unknown` until a person chooses. The Campaigns view shows
them on the campaign's page and offers **Release unknown recipients for one more send** (or trigger
`campaign_control` with `{"campaign_id": 42, "action": "release_unknown"}`): an explicit choice of at-least-once
for those rows, since some of them may have reached their inbox already.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from campaigns.config import get_settings


@dag(
    dag_id="reconcile_unknown",
    schedule=get_settings().reconcile_schedule,  # the environment only: no database or Variable at parse time
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["campaigns", "ses", "ledger"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
)
def reconcile_unknown():
    @task
    def report_unknown() -> list[dict]:
        from campaigns import db
        from campaigns.config import get_settings
        from campaigns.lifecycle import reconcile

        settings = get_settings()
        with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
            return reconcile.report(conn, reconcile.window_for(settings))

    report_unknown()


reconcile_unknown()
