"""The tracking service: opens, clicks, one-click unsubscribe, "view in browser" and SES notifications from SNS
(Flask, gunicorn)."""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from campaigns.config import ConfigError, Settings
from tracking_service.drainer import Drainer
from tracking_service.spool import Spool, check_locking


def create_app(test_config: dict | None = None) -> Flask:
    """App factory (gunicorn: `tracking_service:create_app()`); `test_config` overrides settings in tests."""
    app = Flask(__name__)
    settings = Settings.from_env()
    app.config.from_mapping(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=256 * 1024,
        # each worker drains spooled opens/clicks into PostgreSQL in a thread; off in tests and when a dedicated
        # `python -m tracking_service.drain --follow` does it
        TRACKING_DRAINER=settings.tracking_drainer,
        # how many reverse proxies in front append to X-Forwarded-For (0: trust the socket address only)
        TRUSTED_PROXY_HOPS=settings.tracking_trusted_proxy_hops,
        # where opens and clicks are spooled until the drainer stores them (local disk; keep it across restarts)
        TRACKING_SPOOL_DIR=settings.tracking_spool_dir,
        TRACKING_SPOOL_SEGMENT_BYTES=settings.tracking_spool_segment_bytes,
        TRACKING_SPOOL_FSYNC_SECONDS=settings.tracking_spool_fsync_seconds,
    )
    if test_config:
        app.config.update(test_config)
    spool_dir = Path(app.config["TRACKING_SPOOL_DIR"]).resolve()
    try:
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"TRACKING_SPOOL_DIR {spool_dir} cannot be created: {exc.strerror}") from exc
    check_spool_dir(spool_dir)
    app.config["TRACKING_SPOOL_DIR"] = spool_dir
    app.extensions["tracking_spool"] = Spool(
        spool_dir, segment_bytes=app.config["TRACKING_SPOOL_SEGMENT_BYTES"],
        fsync_seconds=app.config["TRACKING_SPOOL_FSYNC_SECONDS"])
    if app.config["TRUSTED_PROXY_HOPS"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXY_HOPS"])

    from tracking_service import errors, health, tracking, view, webhooks

    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(tracking.bp)
    app.register_blueprint(view.bp)
    app.register_blueprint(webhooks.bp)
    webhooks.init_app(app)
    app.teardown_appcontext(tracking.close_db)
    if app.config["TRACKING_DRAINER"]:
        _start_drainer(app)
    return app


def check_spool_dir(spool_dir: Path) -> None:
    """ConfigError unless `spool_dir` is a folder this user can write, on a file system with per-file flock."""
    if not spool_dir.is_dir():
        raise ConfigError(f"TRACKING_SPOOL_DIR {spool_dir} does not exist or is not a folder")
    if not os.access(spool_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"TRACKING_SPOOL_DIR {spool_dir} is not writable by this user")
    try:
        check_locking(spool_dir)
    except OSError as exc:
        raise ConfigError(f"TRACKING_SPOOL_DIR {spool_dir} must be on local disk: {exc.strerror or exc}") from exc


# The drainer's connection must not hang on a half-open socket (it would hold its segment's row lock meanwhile).
DRAINER_CONNECT_OPTIONS = {
    "autocommit": True, "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
    "keepalives_count": 3, "options": "-c statement_timeout=60s -c idle_in_transaction_session_timeout=60s",
}


def _start_drainer(app: Flask) -> None:
    """A drainer thread in this process now, and in every process forked from it (threads do not survive a fork:
    gunicorn --preload creates the app in the master, then forks the workers)."""
    from campaigns import db

    settings = app.config["SETTINGS"]

    def start() -> None:
        drainer = Drainer(
            app.config["TRACKING_SPOOL_DIR"],
            lambda: db.connect(db.resolve_postgres_dsn(settings.db_conn_id), **DRAINER_CONNECT_OPTIONS),
        )
        drainer.start()
        app.extensions["tracking_drainer"] = drainer

    start()
    os.register_at_fork(after_in_child=start)
