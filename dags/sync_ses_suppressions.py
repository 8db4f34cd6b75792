"""
### sync_ses_suppressions: the SES account-level suppression list, synced both ways

SES keeps a suppression list per account and region: it drops mail to an address on it (the bounce says
`OnAccountSuppressionList`) from every application of the account. This DAG keeps the product's suppressions in
step with it, daily by default (`SES_SUPPRESSION_SYNC_SCHEDULE`):

1. **import_account_list**: ListSuppressedDestinations, page by page, only what SES changed since the last
   successful run (its high-water mark, less an hour of overlap). `BOUNCE` becomes a `hard_bounce` suppression,
   `COMPLAINT` a `complaint`, with source `ses-account` and a `suppression_changes` row (actor
   `sync_ses_suppressions`). An existing suppression is never downgraded (a soft-bounce-limit entry is upgraded).
   Entries without a valid address or with an unknown reason are listed under `problems` and logged as warnings.
2. **push_product_suppressions** (only when `SES_SUPPRESSION_PUSH=1`): PutSuppressedDestination for the product's
   own hard bounces and complaints that SES does not have yet, each once.

Trigger with `{"full": true}` to read the whole list again (after pointing `aws_default` at another account or
region, say). The worker needs `ses:ListSuppressedDestinations` (and `ses:PutSuppressedDestination` to push).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from campaigns.config import get_settings

PARAMS = {
    "full": Param(False, type="boolean", title="Whole list",
                  description="Read the whole account list instead of what changed since the last run"),
}


@dag(
    dag_id="sync_ses_suppressions",
    schedule=get_settings().ses_suppression_sync_schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    doc_md=__doc__,
    tags=["campaigns", "ses", "suppressions"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
)
def sync_ses_suppressions():
    @task(execution_timeout=timedelta(hours=2))
    def import_account_list() -> dict:
        from campaigns import db
        from campaigns.feedback import ses_account_list
        from campaigns.sending.resources import account_ses_client

        context = get_current_context()
        with db.campaign_db(get_settings().db_conn_id, autocommit=True) as conn:
            return ses_account_list.import_account_list(conn, account_ses_client(), run_id=context["run_id"],
                                                        full=bool(context["params"].get("full")))

    @task(execution_timeout=timedelta(hours=2))
    def push_product_suppressions() -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from campaigns import db
        from campaigns.feedback import ses_account_list
        from campaigns.sending.resources import account_ses_client

        settings = get_settings()
        if not settings.ses_suppression_push:
            raise AirflowSkipException("SES_SUPPRESSION_PUSH is off: the product's suppressions stay in the product")
        with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
            return ses_account_list.push_product_suppressions(conn, account_ses_client())

    # After the import, so an address SES already has is marked listed and never pushed back.
    import_account_list() >> push_product_suppressions()


sync_ses_suppressions()
