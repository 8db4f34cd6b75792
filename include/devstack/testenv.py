"""The throw-away environment `make test` runs in: its own campaign database and an AIRFLOW_HOME on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import StackError
from devstack.settings import StackSettings
from devstack.stack import connections

VENV_BIN = Path(sys.executable).parent


def test_airflow_env(s: StackSettings) -> dict[str, str]:
    """Environment for dag.test() in tests: SQLite metadata, the project's DAGs, no examples, test connections."""
    import json

    home = s.test_airflow_home
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(s.root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(s.root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    for conn_id, conn in connections(s, database=s.test_campaign_db).items():
        if conn_id == "redis_default":
            conn = {**conn, "extra": {"db": s.test_redis_db}}  # tests never touch the stack's limiter keys
        if conn_id == "aws_default":
            conn = {**conn, "extra": {"region_name": "us-east-1"}}  # tests use moto's in-process mock_aws
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


def prepare(s: StackSettings) -> None:
    """Migrate the test AIRFLOW_HOME's SQLite database once (a stamp file makes the second run instant)."""
    env = test_airflow_env(s)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    import airflow

    stamp = home / f".migrated-{airflow.__version__}"
    if stamp.exists():
        return
    result = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env={**os.environ, **env},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"airflow db migrate (test home) failed:\n{result.stderr[-3000:]}")
    stamp.touch()
