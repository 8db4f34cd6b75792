"""The local stack for end-to-end tests: started here when it is not running (and stopped again afterwards).

These tests talk to the stack the way a user does: Airflow's REST API, the tracking service over https, the local
SES endpoint's message list and the campaign database. Every test uses its own list, keys and addresses, so a
developer's running stack (`make up`) can be used as is.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import psycopg
import pytest
from psycopg.rows import dict_row

from devstack import stack as devstack
from devstack.demo import Api
from devstack.settings import SETTINGS

# what tests/conftest.py set for dag.test(): the stack's processes must not inherit it
_TEST_ONLY_PREFIXES = ("AIRFLOW", "TRACKING_", "SES_", "SNS_", "AWS_")


@pytest.fixture(scope="session")
def stack():
    """The running local stack (`make up`); started for the session when it was not running."""
    started = False
    if not devstack.apps_running(SETTINGS):
        env = {k: v for k, v in os.environ.items() if not k.startswith(_TEST_ONLY_PREFIXES)}
        started = True
        try:
            subprocess.run([sys.executable, "-m", "devstack", "up"], check=True, env=env, timeout=600)
        except BaseException:
            devstack.stop_apps(SETTINGS)  # whatever did start must not outlive the test session
            raise
    yield SETTINGS
    if started:
        devstack.stop_apps(SETTINGS)


@pytest.fixture(scope="session")
def api(stack) -> Api:
    """Airflow's REST API with a token from POST /auth/token (the admin user of the local stack)."""
    return Api(stack)


@pytest.fixture
def stack_db(stack):
    """A connection to the stack's campaign database (not the test database)."""
    with psycopg.connect(stack.pg_dsn(), autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture(scope="session")
def tls() -> ssl.SSLContext:
    """Trusts exactly the stack's self-signed tracking certificate."""
    return ssl.create_default_context(cafile=str(SETTINGS.state_dir / "tls" / "tracking.crt"))
