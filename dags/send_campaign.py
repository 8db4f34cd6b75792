"""
### send_campaign: one email campaign, one DAG run

**From the Trigger form** (no JSON): fill the sections and press Trigger.

- **Content**: name, key (optional: empty = the name's slug and the run's date, e.g. `nov-news-20261205`, logged
  as "campaign key: ..."), subject, preheader, from name and address (empty: the configured defaults), reply-to,
  HTML, plain text (optional: made from the HTML).
- **Campaign**: an existing campaign's id, to send a stored draft instead of Content.
- **Audience**: lists (one per line), filters (`country: DE, AT`, one per line; a contact must match every line),
  exclude lists (their members are left out).
- **When**: now, at a date and time (Send on + Send at, read on the clock of Time zone; must be in the future), or
  recurring (a cron in Time zone). Time zone is an IANA name; empty: CAMPAIGN_TIMEZONE.
- **Options**: track opens, track clicks, a "view in browser" footer link, batch size, dry run (off).
- **Test first**: up to 20 addresses: the campaign is stored as a draft, ONLY `[TEST]` copies go out and the run
  stops; its log says how to send for real.

Airflow draws each section as a collapsed item: open it by its title. The same key again revises a draft
(test -> fix -> test -> send); a campaign that is sending or sent refuses new content for its key.

**From the REST API or the CLI**: the conf keys `campaign_id` or `campaign` (an inline definition), as before:

```json
{"campaign_id": 42}
{"campaign": {"key": "nov-news", "subject": "Hi {{ first_name | default('there') }}",
              "preheader": "Our November picks", "from_email": "news@example.com", "html": "<p>Hello</p>",
              "audience": {"lists": ["newsletter"], "where": {"country": ["DE", "AT"]},
                           "exclude_lists": ["vip"]}},
 "batch_size": 500, "dry_run": false, "test_recipients": ["me@example.com"]}
```

`campaign` and `scheduled_for` (set by `dispatch_scheduled_campaigns`) are plain conf keys, not form fields;
`campaign` is checked against the definition's JSON schema in `resolve_campaign`. Any form field may also be
given as a conf key of the same name. Give exactly one of `campaign_id`, `campaign` or the form's fields.

`resolve_campaign -> send_tests_first -> preflight -> snapshot_recipients -> plan_batches -> send_batch (mapped)
-> finalize`

Nothing is sent before preflight passes (or, for a test first, before every test copy renders). The ledger
(`campaign_recipients`) guarantees that a recipient never gets the campaign twice, whatever crashes; `finalize`
reports sent, failed, skipped by reason and unknown. A dry run stops after preflight, snapshot and plan.

A campaign with a send time (`send_at` with a timezone in the inline JSON; When = at in the form) or a cron
`recurrence` is stored as `scheduled` and the run ends after resolve_campaign without sending;
`dispatch_scheduled_campaigns` starts its send when it is due. An inline `send_at` in the past means "send now";
the form refuses a time in the past.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from campaigns.config import get_settings
from campaigns.lifecycle.form import param_specs

# The form's fields (campaigns.lifecycle.form); the configured defaults (from address, time zone) are read from the
# environment, never from a database or a Variable.
PARAMS = {name: Param(**spec) for name, spec in param_specs(get_settings()).items()}


def run_conf(context) -> dict:
    """The form's fields (params) with the machine-only conf keys (`campaign`, `scheduled_for`) on top."""
    return {**dict(context["params"]), **(context["dag_run"].conf or {})}


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
        dag_run = context["dag_run"]
        try:
            return resolve(run_conf(context), context["run_id"], run_date=dag_run.logical_date or dag_run.run_after)
        except CampaignError as exc:  # a bad campaign fails once, clearly, before anything is sent
            raise AirflowFailException(str(exc)) from exc

    # short_circuit: a run with test addresses sends only the [TEST] copies and ends here, successfully.
    @task.short_circuit(retries=0)  # a retry would send the tests again
    def send_tests_first(campaign_id: int) -> bool:
        from campaigns.errors import CampaignError
        from campaigns.lifecycle.pipeline import send_tests_first as send_tests

        context = get_current_context()
        try:
            report = send_tests(campaign_id, run_conf(context), context["run_id"])
        except CampaignError as exc:  # refused (suppressed address, template error): nothing was sent
            raise AirflowFailException(str(exc)) from exc
        if report is None:
            return True
        if report["failed"]:
            failed = [f"{r['email']}: {r['error']}" for r in report["results"] if r["status"] == "failed"]
            raise AirflowFailException(f"{report['failed']} test email(s) failed: " + "; ".join(failed))
        return False

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
        with send_resources(parallel=descriptor["parallel"], settings=settings) as resources:
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
    tests_only = send_tests_first(campaign_id)
    report = preflight(campaign_id)
    tests_only >> report
    snapshot = snapshot_recipients(campaign_id, report)
    batches = plan_batches(campaign_id, snapshot)
    sent = send_batch.expand(descriptor=batches)
    done = finalize(campaign_id, sent)
    [campaign_id, tests_only, report, snapshot, batches, sent, done] >> fail_run_if_a_task_failed()


send_campaign()
