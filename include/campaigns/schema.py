"""Apply the campaign database's alembic migrations (used by setup, tests and the DAGs' operators)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(dsn: str) -> Config:
    """An alembic Config for the campaign database at `dsn` (a postgresql:// URL)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn))
    return cfg


def sqlalchemy_url(dsn: str) -> str:
    """Alembic speaks SQLAlchemy: point it at psycopg 3, the driver the rest of the project uses."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {dsn.split('@')[-1]!r}")


def upgrade(dsn: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(dsn), revision)
