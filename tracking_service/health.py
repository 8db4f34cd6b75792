"""GET /healthz: 200 when PostgreSQL answers and the event spool is writable, 503 (with what failed) otherwise.

Redis is not checked: the tracking service does not use it (opens and clicks are spooled on local disk), and a
health check that fails on a dependency the service does not need takes healthy instances out of rotation.
"""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify

from campaigns import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    checks: dict[str, str] = {}
    try:
        with db.connect(db.postgres_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", reported by type only
        checks["postgres"] = f"error: {type(exc).__name__}"
    spool_dir = current_app.config["TRACKING_SPOOL_DIR"]
    writable = os.path.isdir(spool_dir) and os.access(spool_dir, os.W_OK | os.X_OK)
    checks["spool"] = "ok" if writable else "error: missing or not writable"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
