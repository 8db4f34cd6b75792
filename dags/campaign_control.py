"""
### campaign_control: pause, resume, cancel or release a campaign, or release its unknown recipients

```json
{"campaign_id": 42, "action": "pause"}
```

| action | allowed when the campaign is | what happens |
|---|---|---|
| `cancel` | draft, scheduled, held, running, paused | sending stops within 5 seconds; pending rows are cancelled |
| `pause` | running | sending stops within 5 seconds; pending recipients stay pending; the send run succeeds |
| `resume` | paused | a new `send_campaign` run sends only what is still pending |
| `release` | held (its send time passed while the scheduler was down) | a `send_campaign` run starts sending it |
| `start` | draft, scheduled (not recurring) | a `send_campaign` run sends it now (refused by preflight: unchanged) |
| `release_unknown` | sent, with old `unknown` rows | they become pending; a `send_campaign` run sends them once more |

Anything else (resume a cancelled campaign, cancel a sent one, release a running one) fails with the reason and
changes nothing. Every action is recorded in `campaign_actions` with this run's id.

`apply_action -> needs_send_run -> start_send_run` (the last two only do something for resume, release, start and
release_unknown; the send run's id is derived from the action row, so retrying this run never starts a second send).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

PARAMS = {
    "campaign_id": Param(None, type="integer", minimum=1, description="The campaign's id."),
    "action": Param(None, type="string", enum=["pause", "resume", "cancel", "release", "start", "release_unknown"],
                    description="pause / resume / cancel, release a held campaign, start a draft now, or release "
                                "a sent campaign's unknown recipients for one more send."),
}


@dag(
    dag_id="campaign_control",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["campaigns"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
)
def campaign_control():
    @task(multiple_outputs=True)
    def apply_action() -> dict:
        from campaigns import db
        from campaigns.config import get_settings
        from campaigns.errors import CampaignError
        from campaigns.lifecycle import control

        context = get_current_context()
        params, ti = context["params"], context["ti"]

        def run_is_active(run_id: str) -> bool:
            return ti.get_dr_count(dag_id=control.SEND_DAG_ID, run_ids=[run_id], states=["queued", "running"]) > 0

        try:
            with db.campaign_db(get_settings().db_conn_id, autocommit=True) as conn:
                result = control.apply_action(conn, params["campaign_id"], params["action"],
                                              run_id=context["run_id"], run_is_active=run_is_active)
        except CampaignError as exc:  # an illegal move changed nothing: fail once, with the reason
            raise AirflowFailException(str(exc)) from exc
        return result.as_xcom()

    @task.short_circuit
    def needs_send_run(trigger_run_id: str | None) -> bool:
        """Only resume, release, start and release_unknown start a send run; for the others the run ends here."""
        return bool(trigger_run_id)

    result = apply_action()
    start_send_run = TriggerDagRunOperator(
        task_id="start_send_run",
        trigger_dag_id="send_campaign",
        trigger_run_id=result["trigger_run_id"],
        conf=result["send_conf"],
        logical_date=None,  # several runs of send_campaign may exist side by side; the run id is what counts
        skip_when_already_exists=True,  # a retried task finds the run its first try started
        retries=3,
    )
    needs_send_run(result["trigger_run_id"]) >> start_send_run


campaign_control()
