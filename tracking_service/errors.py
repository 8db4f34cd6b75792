"""JSON errors for the machine-facing routes (webhooks, unknown paths): one helper, one shape.

    {"error": "Not Found", "message": "..."}   with the HTTP status

Human-facing pages (unsubscribe, a dead click link) render HTML templates instead.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES


def error_response(status: int, message: str | None = None) -> Response:
    """A JSON error response with the status's standard phrase and an optional message."""
    payload = {"error": HTTP_STATUS_CODES.get(status, "Unknown error")}
    if message:
        payload["message"] = message
    response = jsonify(payload)
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Answer every HTTP error Flask raises (abort, 404 routing, 405, 413) in the JSON shape."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.description)
