"""
### ses_doctor: is this deployment ready to send through SES?

Trigger it (no parameters needed) before the first campaign and after any change in AWS. Its log lists every check
as `pass`, `fail` with the fix, or `not checkable locally` (against the local SES, for what moto cannot answer):
AWS credentials; the SES account (sending enabled, sandbox or production access, enforcement status, MaxSendRate
and the 24-hour quota against `SES_SENDING_RATE`); the sender identity (verified, DKIM, custom MAIL FROM); the
configuration set, its SNS event destination and this deployment's confirmed HTTPS subscription to
`/webhooks/ses`; the tracking service's `/healthz`; Redis and PostgreSQL.

The task fails when any check failed; the report is also its XCom. A task cannot read Airflow pools in Airflow 3,
so the `ses` pool is checked only by the command form: `ses-doctor` (or `python -m campaigns.doctor`) on the
Airflow host. docs/aws-setup.md explains every fix.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import Param, dag, task

# A fixed name: DagBag imports DAG files under a generated module name, which would make log lines unreadable.
log = logging.getLogger("campaigns.dags.ses_doctor")


@dag(
    dag_id="ses_doctor",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["campaigns", "ses", "operations"],
    # A failed check fails the task at once (AirflowFailException); the retry is for a network blip.
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "from_email": Param(None, type=["null", "string"], title="Sender to check",
                            description="Leave empty to check SES_FROM_EMAIL."),
    },
)
def ses_doctor():
    @task
    def check_ses_setup(params: dict | None = None) -> dict:
        """Run every check a task can run; log the report; fail the task when a check failed."""
        from airflow.sdk.exceptions import AirflowFailException

        from campaigns.config import get_settings
        from campaigns.doctor.checks import AwsClients, run_checks

        settings = get_settings()
        report = run_checks(settings, AwsClients.from_airflow(settings.aws_conn_id),
                            from_email=(params or {}).get("from_email"), in_task=True)
        log.info("ses_doctor report:\n%s", report.render())
        if not report.ok:
            failed = ", ".join(check.name for check in report.checks if check.status == "fail")
            raise AirflowFailException(f"ses_doctor: failed checks: {failed} (the fixes are in the log above)")
        return report.as_dict()

    check_ses_setup()


ses_doctor()
