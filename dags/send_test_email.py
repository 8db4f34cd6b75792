"""
### send_test_email: a campaign's email to a few test addresses

```json
{"campaign_key": "nov-news", "recipients": ["me@example.com", "qa@example.net"],
 "sample_values": {"first_name": "Ana", "city": "Graz"}}
```

(or `"campaign_id": 42` instead of the key). Up to 20 addresses.

- An address that is a contact gets the email rendered with **that contact's data**; any other address gets it
  rendered with `sample_values`. The subject starts with `[TEST]`.
- Links point straight at their targets (not tracked) and there is no open pixel; the unsubscribe link is there
  but does nothing (the tracking service says it is not valid), so testers never unsubscribe themselves.
- Sent through the same SES account and rate limiter as campaigns; recorded in `test_sends` (one row per address,
  with SES's MessageId). The campaign itself, its ledger and its statistics are never touched.
- Suppressed addresses are refused (the reason is named); bad addresses, more than 20, or a template that does not
  render for one of the recipients fail the run before anything is sent.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

PARAMS = {
    "campaign_id": Param(None, type=["null", "integer"], minimum=1,
                         description="The campaign's id (or give its key below)."),
    "campaign_key": Param(None, type=["null", "string"], description="The campaign's key (or give its id above)."),
    "recipients": Param([], type="array", items={"type": "string", "maxLength": 254}, minItems=1, maxItems=20,
                        description="1 to 20 email addresses, one per line."),
    "sample_values": Param({}, type="object",
                           description="Merge values for addresses that are not contacts, e.g. "
                                       '{"first_name": "Ana", "city": "Graz"}.'),
}


@dag(
    dag_id="send_test_email",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["campaigns", "ses"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
)
def send_test_email():
    # retries=0: a retry would send the test email again to everyone who already got it. No `ses` pool: campaign
    # send tasks may hold every slot for hours; the Redis limiter alone keeps the account's rate.
    @task(retries=0)
    def send() -> dict:
        from campaigns import db
        from campaigns.config import get_settings
        from campaigns.errors import CampaignError
        from campaigns.lifecycle.testsend import TestSendRequest, send_test
        from campaigns.sending.resources import send_resources
        from campaigns.sending.ses import SesTransport

        context = get_current_context()
        settings = get_settings()
        try:
            request = TestSendRequest.parse(dict(context["params"]))
            with (send_resources(settings=settings) as resources,
                  db.campaign_db(settings.db_conn_id, autocommit=True) as conn):
                transport = SesTransport(resources.ses_client, configuration_set=settings.configuration_set)
                report = send_test(conn, request, run_id=context["run_id"], transport=transport,
                                   limiter=resources.limiter, settings=settings)
        except CampaignError as exc:  # a refused request sent nothing: fail once, with the reason
            raise AirflowFailException(str(exc)) from exc
        if report["failed"]:
            failed = [f"{r['email']}: {r['error']}" for r in report["results"] if r["status"] == "failed"]
            raise AirflowFailException(f"{report['failed']} test email(s) failed: " + "; ".join(failed))
        return report

    send()


send_test_email()
