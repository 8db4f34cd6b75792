"""The test stack for end-to-end tests: a stack instance of its own beside the user's, started for the session.

These tests talk to the stack the way a user does: Airflow's REST API, the tracking service over https, the local
SES endpoint's message list and the campaign database. They never use the user's stack (`make up`): the `stack`
fixture starts the `test` instance (devstack.settings.TEST_STACK) on the same PostgreSQL and Redis, with its own
campaign and Airflow databases, Redis db, app ports and state folder (.local/instances/test), empties its data
first and stops its apps at the end of the session. A running user's stack is neither stopped nor restarted.
docs/testing.md says how to write a test on it.

The Celery test (test_celery.py) needs the stack on the CeleryExecutor: the `celery_stack` fixture starts the
`celery` instance (devstack.settings.CELERY_STACK) once the test stack's apps are stopped, so the two never share
the machine's two cores; the Celery tests are therefore collected last.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from devstack import stack as devstack
from devstack.demo import Api
from devstack.processes import read_pid, running
from devstack.settings import CELERY_STACK, TEST_STACK, StackSettings, for_instance
from tests.e2e.helpers import connect

# what tests/conftest.py set for dag.test(): the stack's processes must not inherit it
_TEST_ONLY_PREFIXES = ("AIRFLOW", "TRACKING_", "SES_", "SNS_", "AWS_")
# the user's stack, whatever STACK_INSTANCE says: what these tests must leave as they found it
USER_STACK = for_instance("")
CELERY_TESTS = "test_celery.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Celery tests last: their stack starts only after the test stack's apps are stopped (celery_stack)."""
    items.sort(key=lambda item: item.path.name == CELERY_TESTS)  # stable: every other order stays as it was


def users_stack_view() -> dict:
    """What the user's stack holds: its running processes (pids), campaign keys and list names."""
    pids = {f.stem: read_pid(f) for f in sorted(USER_STACK.run_dir.glob("*.pid")) if running(f)}
    view = {"at": dt.datetime.now(dt.UTC), "pids": pids, "campaigns": set(), "lists": set()}
    try:
        with psycopg.connect(USER_STACK.pg_dsn(), connect_timeout=10) as conn:
            view["campaigns"] = {key for (key,) in conn.execute("SELECT key FROM campaigns")}
            view["lists"] = {name for (name,) in conn.execute("SELECT name FROM lists")}
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise  # the user's stack never made its database: it holds nothing the tests could have touched
    return view


@pytest.fixture(scope="session")
def users_stack_before() -> dict:
    """The user's stack as it was before the session started the test stack."""
    return users_stack_view()


def _started(instance: StackSettings) -> Iterator[StackSettings]:
    """Stack instance `instance` emptied (new campaign database, Redis dbs flushed) and started; its apps are stopped
    afterwards, also when starting failed half-way."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_TEST_ONLY_PREFIXES)}
    env["STACK_INSTANCE"] = instance.instance
    try:
        for command in ("reset", "up"):
            subprocess.run([sys.executable, "-m", "devstack", command], check=True, env=env, timeout=900)
    except BaseException:
        devstack.stop_apps(instance)  # whatever did start must not outlive the test session
        raise
    yield instance
    devstack.stop_apps(instance)


@pytest.fixture(scope="session")
def stack(users_stack_before) -> Iterator[StackSettings]:
    """The test stack, emptied (new campaign database, Redis db flushed) and started for the session; its apps are
    stopped afterwards. PostgreSQL and Redis are the user's stack's servers, started when not running."""
    yield from _started(TEST_STACK)


@pytest.fixture(scope="session")
def celery_stack(users_stack_before) -> Iterator[StackSettings]:
    """The `celery` instance on the CeleryExecutor (CELERY_STACK.celery_workers workers, task heartbeat timeout
    CELERY_STACK.task_heartbeat_timeout), started after the test stack's apps are stopped: the tests that used it
    ran before (pytest_collection_modifyitems), and two stacks at once would starve a 2-core machine."""
    devstack.stop_apps(TEST_STACK)
    yield from _started(CELERY_STACK)


@pytest.fixture(scope="session")
def api(stack) -> Api:
    """Airflow's REST API with a token from POST /auth/token (the admin user of the test stack)."""
    return Api(stack)


@pytest.fixture
def stack_db(stack):
    """A connection to the test stack's campaign database (neither the unit tests' nor the user's)."""
    with connect(stack) as conn:
        yield conn


@pytest.fixture(scope="session")
def tls(stack) -> ssl.SSLContext:
    """Trusts exactly the test stack's self-signed tracking certificate."""
    return ssl.create_default_context(cafile=str(stack.state_dir / "tls" / "tracking.crt"))
