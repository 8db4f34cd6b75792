"""The maintenance DAGs run on a schedule an operator can change, one run at a time, never catching up."""

from __future__ import annotations

import pytest

from tests.helpers import parse_dag

MAINTENANCE = [  # dag_id, default schedule, the setting that changes it
    ("reconcile_unknown", "@hourly", "RECONCILE_UNKNOWN_SCHEDULE"),
    ("sync_ses_suppressions", "@daily", "SES_SUPPRESSION_SYNC_SCHEDULE"),
]


@pytest.mark.parametrize(("dag_id", "default", "setting"), MAINTENANCE)
def test_runs_on_its_default_schedule_one_run_at_a_time(dag_id, default, setting):
    dag = parse_dag(dag_id)
    assert dag.schedule == default
    assert (dag.max_active_runs, dag.catchup) == (1, False)


@pytest.mark.parametrize(("dag_id", "default", "setting"), MAINTENANCE)
def test_the_schedule_is_a_setting(settings_env, dag_id, default, setting):
    settings_env(**{setting: "15 3 * * *"})
    assert parse_dag(dag_id).schedule == "15 3 * * *"
