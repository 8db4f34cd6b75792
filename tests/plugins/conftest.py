"""The Campaigns view's app against the test campaign database, with tokens from Airflow's own auth manager.

The plugins folder is on sys.path in Airflow processes (that is how campaigns_plugin.py imports campaigns_view);
the tests put it there the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.append(str(PLUGINS))


@pytest.fixture(scope="session")
def auth_manager():
    """The configured auth manager (the simple one), initialized as the api-server does."""
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.fixture(scope="session")
def token_for(auth_manager):
    """A signed Airflow JWT for a simple-auth-manager user with `role` (None: a user without any permission)."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    def make(role: str | None, username: str = "analyst") -> str:
        return auth_manager.generate_jwt(SimpleAuthManagerUser(username=username, role=role))

    return make


@pytest.fixture
def view(db, dsn):
    """A TestClient for the view's app (not logged in) on the emptied test database."""
    from campaigns_view.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(dsn)) as client:
        yield client


@pytest.fixture
def analyst(view, token_for):
    """The same client logged in as a viewer, through the cookie the Airflow UI sets at login."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    view.cookies.set(COOKIE_NAME_JWT_TOKEN, token_for("viewer"))
    return view


@pytest.fixture
def admin(view, token_for):
    """The client logged in as `ana`, an Admin: she may trigger send_campaign runs, so she may act."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    view.cookies.set(COOKIE_NAME_JWT_TOKEN, token_for("admin", "ana"))
    return view


@pytest.fixture(scope="session")
def airflow_dags():
    """The project's DAGs written to the test Airflow metadata database, as the dag-processor does, so the view's
    actions can queue real runs of send_campaign and send_test_email."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)


@pytest.fixture
def dag_run():
    """The DAG run with this id in Airflow's metadata database: (dag_id, conf, triggering user), or None."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    def find(run_id: str):
        with create_session() as session:
            run = session.query(DagRun).filter(DagRun.run_id == run_id).one_or_none()
            return None if run is None else (run.dag_id, run.conf, run.triggering_user_name)

    return find
