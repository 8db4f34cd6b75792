"""
### manage_suppressions: add, remove or export suppressed addresses

Suppressed addresses never receive a campaign (checked at the snapshot and again right before each send).
Trigger from the form or with conf:

```json
{"action": "add", "emails": ["ann@example.com"], "reason": "asked by phone, ticket 4711"}
{"action": "remove", "emails": ["bob@example.com"], "reason": "typo fixed, confirmed by the customer"}
{"action": "remove", "emails": ["bob@example.com"], "reason": "...", "remove_from_ses": true}
{"action": "export"}
```

- **add**: a `manual` suppression per address. An address already suppressed keeps its entry (a hard bounce
  stays a hard bounce) and is listed as `already_suppressed`.
- **remove**: requires a reason. An address that is not suppressed is listed as `not_suppressed`. Removing a
  complaint or unsubscribe suppression is logged as a warning: the person asked not to be mailed. Each address is
  also looked up on the SES account-level suppression list (SES drops mail to an address on it whatever the
  product says): `ses_account_list` says per address whether it is still there; with `remove_from_ses` it is
  removed there too.
- **export**: writes `suppressions-<time>-<run id>.csv` (email, reason, source, detail, created_at in UTC) into
  `SUPPRESSIONS_EXPORT_DIR` on the worker and logs the path and the count.

Every add and remove is recorded in `suppression_changes` with the reason, the old reason, the actor (the user who
triggered the run) and the run id. An invalid address fails the run with every problem named, and nothing
changes. The task's result (XCom) lists what was done.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, get_current_context, task

PARAMS = {
    "action": Param("add", type="string", enum=["add", "remove", "export"], title="Action",
                    description="add or remove the addresses below, or export every suppression to CSV"),
    "emails": Param([], type="array", items={"type": "string"}, title="Addresses",
                    description="One address per line (leave empty for export)"),
    "reason": Param("", type="string", maxLength=500, title="Reason",
                    description="Why (required to remove; kept in the audit log)"),
    "remove_from_ses": Param(False, type="boolean", title="Also remove from the SES account list",
                             description="remove only: also take the addresses off SES's account-level "
                                         "suppression list"),
}


@dag(
    dag_id="manage_suppressions",
    schedule=None,
    catchup=False,
    params=PARAMS,
    doc_md=__doc__,
    tags=["campaigns", "suppressions"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
)
def manage_suppressions():
    @task
    def apply_request() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from campaigns import db
        from campaigns.config import get_settings
        from campaigns.errors import SuppressionRequestError
        from campaigns.feedback.suppressions import REMOVE, Request, manage
        from campaigns.sending.resources import account_ses_client

        context = get_current_context()
        params = context["params"]
        try:
            request = Request.parse(params.get("action"), params.get("emails"), params.get("reason"),
                                    params.get("remove_from_ses", False))
        except SuppressionRequestError as exc:  # bad input fails once, clearly; a retry would fail the same way
            raise AirflowFailException(str(exc)) from exc
        actor = getattr(context["dag_run"], "triggering_user_name", None) or "manage_suppressions"
        settings = get_settings()
        with db.campaign_db(settings.db_conn_id, autocommit=True) as conn:
            ses = account_ses_client() if request.action == REMOVE else None  # only a remove asks SES
            return manage(conn, request, actor=actor, run_id=context["run_id"], settings=settings, ses=ses)

    apply_request()


manage_suppressions()
