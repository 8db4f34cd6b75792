"""
### dispatch_scheduled_campaigns: start scheduled campaigns when they are due

Every minute (catchup off, one run at a time):

1. **find_due_campaigns** creates the instance of each recurring campaign whose occurrence has come (only the
   latest one after an outage), holds every scheduled campaign more than `SCHEDULE_HOLD_AFTER_HOURS` past its
   `send_at` (the scheduler was down: a person releases or cancels it), and lists the due ones.
2. **trigger_send_campaign** (mapped, one per due campaign) triggers `send_campaign` with
   `{"campaign_id": ..., "scheduled_for": "<send_at>"}` and the run id `dispatch__campaign-<id>__<send_at>`.
   The same campaign and time always give the same run id, so a second dispatcher run finds the run already
   there and the task is skipped: a campaign is never started twice.

The time a run judges "due" by is its own scheduled time (data interval end), not the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, get_current_context, task


@dag(
    dag_id="dispatch_scheduled_campaigns",
    schedule="* * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,  # after downtime one run looks at everything that is due; stale ones are held, not sent
    max_active_runs=1,
    tags=["campaigns", "scheduling"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15)},
)
def dispatch_scheduled_campaigns():
    @task
    def find_due_campaigns() -> list[dict]:
        from campaigns.config import get_settings
        from campaigns.db import campaign_db
        from campaigns.lifecycle.scheduling import dispatch_due

        context = get_current_context()
        # A manual run has no data interval: it judges by when it was triggered.
        now = context.get("data_interval_end") or context["dag_run"].run_after
        settings = get_settings()
        with campaign_db(settings.db_conn_id) as conn:
            return dispatch_due(conn, now, hold_after=timedelta(hours=settings.schedule_hold_after_hours),
                                run_id=context["run_id"])

    due = find_due_campaigns()
    TriggerDagRunOperator.partial(
        task_id="trigger_send_campaign",
        trigger_dag_id="send_campaign",
        # The run id already exists: an earlier dispatcher run started this campaign for this send_at.
        skip_when_already_exists=True,
        wait_for_completion=False,
        # The conf goes through send_campaign's strict params: nothing may be added to it.
        openlineage_inject_parent_info=False,
        map_index_template="{{ task.trigger_run_id }}",
        retries=0,  # the next minute's run tries again
    ).expand_kwargs(due)


dispatch_scheduled_campaigns()
