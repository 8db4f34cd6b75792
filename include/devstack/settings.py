"""Where the local stack lives and which ports it uses; every value can be overridden from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


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


SETTINGS = StackSettings()
