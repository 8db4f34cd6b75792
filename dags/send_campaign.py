"""
### send_campaign: one email campaign, one DAG run

Trigger it from the form, the REST API or the CLI with either an existing campaign or an inline definition:

```json
{"campaign_id": 42}
{"campaign": {"key": "nov-news", "subject": "Hi {{ first_name | default('there') }}",
              "from_email": "news@example.com", "html": "<p>Hello</p>",
              "audience": {"lists": ["newsletter"], "where": {"country": ["DE", "AT"]}}},
 "batch_size": 500, "dry_run": false}
```

`resolve_campaign -> preflight -> snapshot_recipients -> plan_batches -> send_batch (mapped) -> finalize`

Nothing is sent before preflight passes. The ledger (`campaign_recipients`) guarantees that a recipient never
gets the campaign twice, whatever crashes; `finalize` reports sent, failed, skipped by reason and unknown.
A dry run stops after preflight, snapshot and plan.

An inline campaign with `send_at` (ISO 8601 with a timezone) or a cron `recurrence` is stored as `scheduled` and
the run ends after resolve_campaign without sending; `dispatch_scheduled_campaigns` starts its send when it is due.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from campaigns.config import MAX_BATCH_SIZE, MIN_BATCH_SIZE
from campaigns.lifecycle.definitions import CAMPAIGN_JSON_SCHEMA

PARAMS = {
    "campaign_id": Param(None, type=["null", "integer"], minimum=1,
                         description="An existing campaign's id (leave empty when you define `campaign` inline)."),
    "campaign": Param(None, **CAMPAIGN_JSON_SCHEMA,
                      description="An inline campaign, created or updated by its `key`."),
    "batch_size": Param(None, type=["null", "integer"], minimum=MIN_BATCH_SIZE, maximum=MAX_BATCH_SIZE,
                        description="Recipients per page (default: SES_BATCH_SIZE, 500)."),
    "dry_run": Param(False, type="boolean", description="Stop after preflight, snapshot and plan: send nothing."),
    "scheduled_for": Param(None, type=["null", "string"],
                           description="Set by dispatch_scheduled_campaigns: the send_at this run was started for "
                                       "(leave empty when triggering by hand)."),
}


@dag(
    dag_id="send_campaign",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["campaigns", "ses"],
    doc_md=__doc__,
    max_active_tasks=16,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True,
                  "max_retry_delay": timedelta(minutes=5)},
)
def send_campaign():
    # short_circuit: a campaign scheduled for later (or a dispatched run that finds it rescheduled or held) ends the
    # run successfully here, every later task skipped; a campaign id lets the run go on.
    @task.short_circuit(retries=0)
    def resolve_campaign() -> int | None:
        from campaigns.errors import CampaignError
        from campaigns.lifecycle.pipeline import resolve_campaign as resolve

        context = get_current_context()
        try:
            return resolve(dict(context["params"]), context["run_id"])
        except CampaignError as exc:  # a bad campaign fails once, clearly, before anything is sent
            raise AirflowFailException(str(exc)) from exc

    @task(retries=0)
    def preflight(campaign_id: int) -> dict:
        from campaigns.config import get_settings
        from campaigns.errors import CampaignError
        from campaigns.lifecycle.pipeline import run_preflight
        from campaigns.sending.ses import ses_client_from_airflow

        try:
            return run_preflight(campaign_id, dict(get_current_context()["params"]),
                                 ses_client_from_airflow(get_settings().aws_conn_id))
        except CampaignError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def snapshot_recipients(campaign_id: int, _preflight: dict) -> dict:
        from campaigns.lifecycle.pipeline import snapshot_recipients as snapshot

        return snapshot(campaign_id, dict(get_current_context()["params"]))

    @task
    def plan_batches(campaign_id: int, _snapshot: dict) -> list[dict]:
        from campaigns.config import get_settings
        from campaigns.lifecycle.pipeline import plan_batches as plan
        from campaigns.sending.resources import sending_rate

        context = get_current_context()
        return plan(campaign_id, dict(context["params"]), context["run_id"], sending_rate(get_settings()))

    @task(pool="ses", map_index_template="{{ batch_label }}", retries=3, retry_delay=timedelta(seconds=5))
    def send_batch(descriptor: dict) -> dict:
        from campaigns.config import get_settings
        from campaigns.lifecycle.pipeline import send_batch as send
        from campaigns.sending.ledger import Attempt
        from campaigns.sending.resources import send_resources

        context = get_current_context()
        context["batch_label"] = descriptor["label"]
        ti = context["ti"]
        attempt = Attempt(run_id=ti.run_id, map_index=ti.map_index, try_number=ti.try_number)
        settings = get_settings()
        with send_resources(sibling_tasks=descriptor["total"], settings=settings) as resources:
            return send(descriptor, attempt=attempt, resources=resources, settings=settings)

    @task(trigger_rule="all_done", retries=1)
    def finalize(campaign_id: int | None, _sent) -> dict:
        from campaigns.lifecycle.pipeline import finalize as settle

        if campaign_id is None:  # resolve_campaign failed: there is no campaign to settle
            raise AirflowSkipException("no campaign was resolved")
        summary = settle(campaign_id, get_current_context()["run_id"])
        if summary["incomplete"]:
            raise AirflowFailException(summary["incomplete"])
        return summary

    @task(trigger_rule="one_failed", retries=0)
    def fail_run_if_a_task_failed() -> None:
        """finalize runs whatever happened (all_done); this makes the run itself fail when anything failed."""
        raise AirflowFailException("a task of this campaign run failed; see its log")

    campaign_id = resolve_campaign()
    report = preflight(campaign_id)
    snapshot = snapshot_recipients(campaign_id, report)
    batches = plan_batches(campaign_id, snapshot)
    sent = send_batch.expand(descriptor=batches)
    done = finalize(campaign_id, sent)
    [campaign_id, report, snapshot, batches, sent, done] >> fail_run_if_a_task_failed()


send_campaign()
