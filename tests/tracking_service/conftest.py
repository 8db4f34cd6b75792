"""The tracking app the endpoint tests share: real PostgreSQL, a spool in the test's folder, no drainer thread."""

from __future__ import annotations

import pytest

from campaigns.feedback.tokens import TokenCodec
from tracking_service import create_app, tracking


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def app(settings, spool_dir):
    tracking._link_cache.clear()
    app = create_app({"TESTING": True, "TRACKING_DRAINER": False, "TRACKING_SPOOL_DIR": spool_dir})
    yield app
    app.extensions["tracking_spool"].close()
    tracking._link_cache.clear()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def codec(settings):
    return TokenCodec(settings.tracking_secret_keys)
