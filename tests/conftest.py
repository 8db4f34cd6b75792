"""Shared fixtures: the real PostgreSQL and Redis that `make test` started, moto for SES, a throw-away AIRFLOW_HOME.

The environment is set before anything imports Airflow, so dag.test() runs against .local/airflow-test (SQLite)
and the DAGs' connections point at the test campaign database and Redis db 1.
"""

from __future__ import annotations

import os

from devstack.settings import SETTINGS
from devstack.testenv import test_airflow_env

os.environ.update(test_airflow_env(SETTINGS))
os.environ.update(
    TRACKING_BASE_URL="https://track.example.test",
    TRACKING_SECRET_KEYS="test-signing-key,test-old-key",
    SES_FROM_EMAIL="news@example.com",
    SES_FROM_NAME="Example News",
    SES_CONFIGURATION_SET="campaign-events",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
)

import boto3
import psycopg
import pytest
import redis as redis_lib
from moto import mock_aws

from campaigns import db as campaign_db
from campaigns.config import get_settings

TABLES = ("campaign_recipient_link_activity", "campaign_recipient_activity", "campaign_link_stats",
          "campaign_stats_series", "campaign_stats", "email_event_counts_hourly", "stats_rollup_state",
          "email_events", "campaign_links", "campaign_recipients", "campaign_actions", "test_sends", "campaigns",
          "suppression_changes", "suppressions", "list_members", "lists", "contacts",
          "tracking_spool_segments", "tracking_spool_rejects", "ses_suppression_sync")


@pytest.fixture(scope="session")
def dsn() -> str:
    """The test campaign database (migrated by `make test`)."""
    return SETTINGS.pg_dsn(SETTINGS.test_campaign_db)


@pytest.fixture
def db(dsn):
    """A connection to an empty campaign database; every table is truncated before the test."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    with campaign_db.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def redis_client():
    """The test Redis db (1 unless STACK_TEST_REDIS_DB), emptied before and after the test."""
    client = redis_lib.Redis.from_url(SETTINGS.redis_url(SETTINGS.test_redis_db))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def _tracking_spool_dir(tmp_path, monkeypatch):
    """Every tracking app a test builds spools into the test's own folder, never into the working directory."""
    monkeypatch.setenv("TRACKING_SPOOL_DIR", str(tmp_path / "tracking-spool"))


@pytest.fixture
def spool(tmp_path):
    """A tracking-service spool writer in a temporary folder (drainer.drain_once(spool.directory, db))."""
    from tracking_service.spool import Spool

    spool = Spool(tmp_path / "spool")
    yield spool
    spool.close()


@pytest.fixture
def settings():
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def ses():
    """moto's in-process SES with example.com verified; yields the sesv2 client."""
    with mock_aws():
        client = boto3.client("sesv2", region_name="us-east-1")
        client.create_email_identity(EmailIdentity="example.com")
        # SES_CONFIGURATION_SET above names it; preflight refuses a configuration set that does not exist.
        client.create_configuration_set(ConfigurationSetName="campaign-events")
        yield client


@pytest.fixture
def settings_env(monkeypatch):
    """Settings from the environment for one test: `settings_env(SES_SENDING_RATE=5)` sets the variables and makes
    get_settings() read them again; both are undone afterwards."""

    def apply(**values) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


@pytest.fixture
def fast_rate(settings_env, redis_client):
    """A high sending rate, so DAG tests do not wait on the limiter (the limiter itself is tested on its own)."""
    settings_env(SES_SENDING_RATE=500)
