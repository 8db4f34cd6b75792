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
