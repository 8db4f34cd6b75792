"""Where the local stack lives and which ports it uses; every value can be overridden from the environment.

One PostgreSQL and one Redis serve any number of named stack instances: the user's stack (no name, what `make up`
starts) and e.g. the `test` instance the end-to-end tests start beside it, with its own databases, Redis db, app
ports and state folder (`STACK_INSTANCE=test python -m devstack up`).

Airflow runs on the LocalExecutor unless STACK_EXECUTOR=celery (`make up EXECUTOR=celery`): then on the
CeleryExecutor, with STACK_CELERY_WORKERS worker processes and the stack's own Redis as the broker, on a db of its
own. The `celery` instance is the Celery end-to-end tests' one: Celery, two workers, a short task heartbeat timeout.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _executor(default: str = "local") -> str:
    raw = os.environ.get("STACK_EXECUTOR") or default
    if raw not in EXECUTORS:
        raise SystemExit(f"STACK_EXECUTOR must be one of {', '.join(sorted(EXECUTORS))}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class StackSettings:
    """Ports, folders and credentials of the project-local PostgreSQL, Redis, Airflow, tracking service and SES."""

    root: Path = ROOT
    state_dir: Path = Path(os.environ.get("STACK_STATE_DIR", ROOT / ".local"))
    # Below 32768 on purpose: Linux hands out 32768-60999 as ephemeral ports for outgoing connections, and a
    # server port in that range can be taken by some client's socket at the moment the server starts.
    pg_port: int = _int("STACK_PG_PORT", 25432)
    redis_port: int = _int("STACK_REDIS_PORT", 26379)
    airflow_port: int = _int("STACK_AIRFLOW_PORT", 28080)
    tracking_port: int = _int("STACK_TRACKING_PORT", 28443)
    ses_port: int = _int("STACK_SES_PORT", 25500)
    ses_pool_slots: int = _int("STACK_SES_POOL_SLOTS", 4)
    airflow_parallelism: int = _int("STACK_AIRFLOW_PARALLELISM", 8)
    # "local" (LocalExecutor) or "celery" (CeleryExecutor and celery_workers worker processes)
    executor: str = _executor()
    celery_workers: int = _int("STACK_CELERY_WORKERS", 2)
    celery_concurrency: int = _int("STACK_CELERY_CONCURRENCY", 4)
    # the broker's Redis db: never the limiter's (redis_db), the tests' or the benchmarks'
    celery_broker_db: int = _int("STACK_CELERY_BROKER_DB", 10)
    # [scheduler] task_instance_heartbeat_timeout: how long a task whose worker died stays `running` before the
    # scheduler fails it and its retry is queued (Airflow's default; the `celery` test instance sets 30)
    task_heartbeat_timeout: int = _int("STACK_TASK_HEARTBEAT_TIMEOUT", 300)
    # SEND_TASK_SECONDS of the stack's tasks: how much sending one mapped send task carries (the campaigns default;
    # the `celery` instance makes it short so that a 5,000-recipient campaign spreads over 10 tasks and both workers)
    send_task_seconds: int = _int("STACK_SEND_TASK_SECONDS", 300)
    # the local SES stands in for an account with this MaxSendRate; the stack sends at ses_rate
    ses_local_max_send_rate: int = _int("STACK_SES_MAX_SEND_RATE", 200)
    ses_rate: int = _int("STACK_SES_RATE", 100)
    ses_local_max_24h_send: int = _int("STACK_SES_MAX_24H_SEND", 1_000_000)
    pg_user: str = "campaigns"
    pg_password: str = "campaigns"
    campaign_db: str = os.environ.get("STACK_CAMPAIGN_DB", "campaigns")
    # two test runs at once (say, two checkouts) need their own database, Redis db and AIRFLOW_HOME
    test_campaign_db: str = os.environ.get("STACK_TEST_CAMPAIGN_DB", "campaigns_test")
    test_redis_db: int = _int("STACK_TEST_REDIS_DB", 1)
    airflow_db: str = "airflow"
    # "" is the user's stack; a named instance keeps its apps' state in state_dir, its servers' in servers_dir
    instance: str = ""
    servers_dir: Path | None = None
    redis_db: int = 0

    @property
    def server_dir(self) -> Path:
        """Where the shared PostgreSQL and Redis keep their data, pid files and logs (the user's .local)."""
        return self.servers_dir or self.state_dir

    @property
    def server_run_dir(self) -> Path:
        return self.server_dir / "run"

    @property
    def server_log_dir(self) -> Path:
        return self.server_dir / "log"

    @property
    def campaign_databases(self) -> tuple[str, ...]:
        """The campaign databases this instance creates and migrates (the user's stack also the unit tests' one)."""
        return (self.campaign_db,) if self.instance else (self.campaign_db, self.test_campaign_db)

    @property
    def airflow_executor(self) -> str:
        """Airflow's name of the executor this stack runs ([core] executor)."""
        return EXECUTORS[self.executor]

    @property
    def celery_worker_names(self) -> tuple[str, ...]:
        """The Airflow hostname of each Celery worker (what TaskInstance.hostname shows); none on LocalExecutor."""
        count = self.celery_workers if self.executor == "celery" else 0
        return tuple(f"celery-worker-{i}" for i in range(1, count + 1))

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def test_airflow_home(self) -> Path:
        suffix = "" if self.test_campaign_db == "campaigns_test" else f"-{self.test_campaign_db}"
        return self.state_dir / f"airflow-test{suffix}"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def pg_dsn(self, database: str | None = None) -> str:
        db = database or self.campaign_db
        return f"postgresql://{self.pg_user}:{self.pg_password}@127.0.0.1:{self.pg_port}/{db}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def tracking_base_url(self) -> str:
        return f"https://localhost:{self.tracking_port}"

    @property
    def ses_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ses_port}"


TEST_INSTANCE = "test"
CELERY_INSTANCE = "celery"
_INSTANCE_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")
# What a named instance differs by unless STACK_INSTANCE_* / STACK_* say otherwise. The `celery` instance runs beside
# (or after) `test`, so its ports, limiter db and broker db are its own; its short heartbeat timeout lets the e2e
# test see a killed worker's task retried within a minute.
_INSTANCE_DEFAULTS = {
    "": {"port_offset": 100, "redis_db": 9, "broker_db": 11, "executor": "local", "heartbeat": 300,
         "send_task_seconds": 300},
    CELERY_INSTANCE: {"port_offset": 200, "redis_db": 8, "broker_db": 12, "executor": "celery", "heartbeat": 30,
                      "send_task_seconds": 20},
}


def for_instance(name: str) -> StackSettings:
    """The settings of stack instance `name` ("" is the user's stack)."""
    # Same PostgreSQL and Redis as the user's stack; its apps on ports STACK_INSTANCE_PORT_OFFSET above the user's,
    # databases <name>_<instance>_stack, its own Redis db and its state in <STACK_STATE_DIR>/instances/<instance>.
    base = StackSettings()
    if not name:
        return base
    if not _INSTANCE_NAME.fullmatch(name):
        raise SystemExit(f"STACK_INSTANCE must be a lower-case name of letters and digits, got {name!r}")
    defaults = _INSTANCE_DEFAULTS.get(name, _INSTANCE_DEFAULTS[""])
    offset = _int("STACK_INSTANCE_PORT_OFFSET", defaults["port_offset"])
    return replace(
        base, instance=name, servers_dir=base.state_dir, state_dir=base.state_dir / "instances" / name,
        airflow_port=base.airflow_port + offset, tracking_port=base.tracking_port + offset,
        ses_port=base.ses_port + offset,
        # a suffix, not "campaigns_test": that name is the unit tests' database, truncated before every test
        campaign_db=f"{base.campaign_db}_{name}_stack", airflow_db=f"{base.airflow_db}_{name}_stack",
        redis_db=_int("STACK_INSTANCE_REDIS_DB", defaults["redis_db"]),
        celery_broker_db=_int("STACK_INSTANCE_CELERY_BROKER_DB", defaults["broker_db"]),
        executor=_executor(defaults["executor"]),
        task_heartbeat_timeout=_int("STACK_TASK_HEARTBEAT_TIMEOUT", defaults["heartbeat"]),
        send_task_seconds=_int("STACK_SEND_TASK_SECONDS", defaults["send_task_seconds"]),
    )


SETTINGS = for_instance(os.environ.get("STACK_INSTANCE", ""))
# the stack the end-to-end tests start beside the user's, on the same servers (tests/e2e/conftest.py)
TEST_STACK = for_instance(TEST_INSTANCE)
# the Celery stack the Celery end-to-end test starts once the test stack's apps are stopped (tests/e2e/conftest.py)
CELERY_STACK = for_instance(CELERY_INSTANCE)
