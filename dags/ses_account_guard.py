"""
### ses_account_guard: pause every sending campaign when the SES account is not fit to send

Every 5 minutes, reads SES GetAccount once. When `SendingEnabled` is false or `EnforcementStatus` is not
`HEALTHY` (SES put the account on PROBATION for its bounce or complaint rate, or SHUT it DOWN), every `running`
campaign is paused with the reason stored, a `campaign_actions` row (actor `ses_account_guard`) and an error in
the log; the run then fails, so the grid shows red for as long as the account is unhealthy.

Why a schedule and not the send tasks: the account state is one fact for every campaign, so one call every few
minutes covers them all instead of one per send task (GetAccount has a low request quota); and a hard stop
(SendingPaused, AccountSuspended) already stops the send tasks on the very next SendEmail. What this adds is the
early warning SES gives before it stops the account, which develops over days, so minutes are soon enough.

Against a local SES endpoint (moto) the account's state is not checkable: the run logs so and succeeds.
Resume a paused campaign only after the account is HEALTHY again, or the next run pauses it again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task


@dag(
    dag_id="ses_account_guard",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["campaigns", "ses", "reputation"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
)
def ses_account_guard():
    @task(execution_timeout=timedelta(minutes=2))
    def check_account() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaigns import db
        from campaigns.config import get_settings
        from campaigns.lifecycle.reputation import guard_account
        from campaigns.sending.resources import account_ses_client

        with db.campaign_db(get_settings().db_conn_id, autocommit=True) as conn:
            result = guard_account(conn, account_ses_client(), run_id=get_current_context()["run_id"])
        if result["problem"]:
            # The pauses are committed; failing the run (no retry) keeps the problem visible in the grid.
            raise AirflowFailException(f"SES account is not fit to send: {result['problem']}; "
                                       f"paused campaign(s) {result['paused'] or 'none'}")
        return result

    check_account()


ses_account_guard()
