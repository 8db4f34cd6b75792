"""The tracking service: opens, clicks, one-click unsubscribe and SES notifications from SNS (Flask, gunicorn)."""

from __future__ import annotations

from flask import Flask

from campaigns.config import Settings


def create_app(test_config: dict | None = None) -> Flask:
    """App factory (gunicorn: `tracking_service:create_app()`); `test_config` overrides settings in tests."""
    app = Flask(__name__)
    app.config.from_mapping(
        SETTINGS=Settings.from_env(),
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    if test_config:
        app.config.update(test_config)

    from tracking_service import health

    app.register_blueprint(health.bp)
    return app
