"""GET /healthz: 200 when PostgreSQL and Redis answer, 503 (with what failed) otherwise."""

from __future__ import annotations

from flask import Blueprint, jsonify

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
    try:
        client = db.resolve_redis()
        client.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503
