"""The view's way into Airflow's own DAG runs: start one (as the REST API's POST dagRuns does), ask whether one is
still active, and whether a user may start runs at all (to show or grey out the buttons).

All three run inside the api-server, so they use Airflow's metadata database session and auth manager directly,
never an HTTP call to the api-server itself.
"""

from __future__ import annotations

import contextlib
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.utils.types import DagRunTriggeredByType

ACTIVE_STATES = ("queued", "running")


def trigger(dag_id: str, *, run_id: str, conf: dict[str, Any], username: str) -> str:
    """Queue a run of `dag_id` under `run_id` with `conf`, triggered by `username` from the UI; returns the run id.

    An existing run with that id (a double-submitted form) is the run asked for: not an error, not a second run.
    """
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.exceptions import DagRunAlreadyExists

    with contextlib.suppress(DagRunAlreadyExists):
        trigger_dag(dag_id, run_id=run_id, conf=conf, triggered_by=DagRunTriggeredByType.UI,
                    triggering_user_name=username)
    return run_id


def run_is_active(dag_id: str, run_id: str) -> bool:
    """Whether the run is still queued or running (a paused campaign's send run winds down for a few seconds)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return bool(session.scalar(select(func.count()).select_from(DagRun).where(
            DagRun.dag_id == dag_id, DagRun.run_id == run_id, DagRun.state.in_(ACTIVE_STATES))))


def may_trigger(user, dag_id: str) -> bool:
    """The auth manager's own answer to "may this user start runs of `dag_id`" (the check every POST runs)."""
    return get_auth_manager().is_authorized_dag(method="POST", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=dag_id), user=user)
