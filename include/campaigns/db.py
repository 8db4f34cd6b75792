"""Connections to the campaign database and Redis, resolved from Airflow connections.

Airflow tasks resolve `campaign_db` / `redis_default` through the Postgres and Redis providers' hooks; the tracking
service (no Airflow in its process) reads the same `AIRFLOW_CONN_<ID>` environment variables, so one `.env`
configures both. Values may be a URI or Airflow's JSON form. `REDIS_URL` (the original design's name) configures
`redis_default` when AIRFLOW_CONN_REDIS_DEFAULT is not set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit

import psycopg
import redis
from psycopg.rows import dict_row

from campaigns.config import Settings
from campaigns.errors import ConnectionNotConfigured


def _conn_from_env(conn_id: str) -> dict:
    raw = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if raw is None:
        raise ConnectionNotConfigured(
            f"connection {conn_id!r} is not configured: set AIRFLOW_CONN_{conn_id.upper()} (URI or JSON)"
        )
    raw = raw.strip()
    if raw.startswith("{"):
        return json.loads(raw)
    parts = urlsplit(raw)
    return {
        "conn_type": parts.scheme,
        "host": parts.hostname,
        "port": parts.port,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": parts.path.lstrip("/") or None,
    }


def postgres_dsn(conn_id: str = "campaign_db") -> str:
    """A libpq URL for the Airflow connection `conn_id`, from the environment."""
    c = _conn_from_env(conn_id)
    return _libpq_url(c.get("host"), c.get("port"), c.get("login"), c.get("password"), c.get("schema"))


def _libpq_url(host, port, login, password, database) -> str:
    auth = ""
    if login:
        auth = quote(login, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    return f"postgresql://{auth}{host or 'localhost'}:{port or 5432}/{database or ''}"


def redis_url(conn_id: str = "redis_default", settings: Settings | None = None) -> str:
    """A redis:// URL for the Airflow connection `conn_id`, from the environment (db from extra, as RedisHook).

    For the limiter's connection (`settings.redis_conn_id`), the original design's REDIS_URL (`settings.redis_url`)
    is the fallback when AIRFLOW_CONN_REDIS_DEFAULT is not set.
    """
    try:
        c = _conn_from_env(conn_id)
    except ConnectionNotConfigured:
        if settings is None:
            # REDIS_URL stands in for AIRFLOW_CONN_REDIS_DEFAULT, which is read when the client is built: a caller
            # that only names the connection gets REDIS_URL as the environment has it now, like the connection.
            settings = Settings.from_env()
        alias = settings.redis_url if conn_id == settings.redis_conn_id else None
        if alias is None:
            raise
        return alias
    extra = c.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    db = extra.get("db", c.get("schema") or 0)
    auth = f":{quote(c['password'], safe='')}@" if c.get("password") else ""
    return f"redis://{auth}{c.get('host') or 'localhost'}:{c.get('port') or 6379}/{db}"


def connect(dsn: str, **kwargs) -> psycopg.Connection:
    """A psycopg 3 connection with dict rows; callers own the transaction (autocommit off unless asked)."""
    return psycopg.connect(dsn, row_factory=dict_row, **kwargs)


@contextmanager
def campaign_db(conn_id: str = "campaign_db", **kwargs) -> Iterator[psycopg.Connection]:
    """Open the campaign database for one unit of work; inside Airflow the Postgres provider resolves the id."""
    with connect(resolve_postgres_dsn(conn_id), **kwargs) as conn:
        yield conn


def resolve_postgres_dsn(conn_id: str = "campaign_db") -> str:
    """Environment first (works everywhere); otherwise ask Airflow's connection machinery (task SDK / metadata)."""
    try:
        return postgres_dsn(conn_id)
    except ConnectionNotConfigured:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = PostgresHook.get_connection(conn_id)
        return _libpq_url(conn.host, conn.port, conn.login, conn.password, conn.schema)


def resolve_redis(conn_id: str = "redis_default", settings: Settings | None = None) -> redis.Redis:
    """A Redis client: from the environment (or `settings.redis_url`), otherwise through the Redis provider's hook."""
    try:
        return redis.Redis.from_url(redis_url(conn_id, settings), socket_timeout=5, socket_connect_timeout=5)
    except ConnectionNotConfigured:
        from airflow.providers.redis.hooks.redis import RedisHook

        return RedisHook(redis_conn_id=conn_id).get_conn()
