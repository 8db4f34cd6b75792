"""Health: GET /healthz for monitoring, GET /livez for load balancers.

- /healthz: 200 when PostgreSQL answers and the event spool is writable, 503 (with what failed) otherwise. It is
  what `ses-doctor` and monitoring read: unsubscribes and SES notifications need PostgreSQL.
- /livez: 200 while this instance can take opens and clicks (its spool is writable), even with PostgreSQL down:
  a load balancer that used /healthz would take every instance out during a database outage, when the spool is
  what keeps opens and clicks (and the redirects readers are waiting for) working.

Redis is checked by neither: the tracking service does not use it, and a health check that fails on a dependency
the service does not need takes healthy instances out of rotation.
"""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify

from campaigns import db, queries

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    checks: dict[str, str] = {}
    try:
        dsn = db.postgres_dsn(current_app.config["SETTINGS"].db_conn_id)
        with db.connect(dsn, connect_timeout=3) as conn:
            conn.execute(queries.load("tracking")["health-check"])
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure is "not healthy", reported by type only
        checks["postgres"] = f"error: {type(exc).__name__}"
    checks["spool"] = _spool_check()
    return _answer(checks)


@bp.get("/livez")
def livez():
    return _answer({"spool": _spool_check()})


def _spool_check() -> str:
    spool_dir = current_app.config["TRACKING_SPOOL_DIR"]
    writable = os.path.isdir(spool_dir) and os.access(spool_dir, os.W_OK | os.X_OK)
    return "ok" if writable else "error: missing or not writable"


def _answer(checks: dict[str, str]):
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
