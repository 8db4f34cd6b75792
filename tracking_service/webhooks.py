"""POST /webhooks/ses: SES events from SNS over HTTPS; verified before anything is read, recorded in one transaction.

SNS retries a failed delivery 3 times (20 s apart) and then drops it, so the handler answers quickly: refusals are
4xx (SNS retrying a forged message changes nothing), database trouble is 5xx (a retry may succeed).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from campaigns import db
from campaigns.config import Settings
from campaigns.errors import SnsVerificationError
from campaigns.feedback.ses_events import record_notification
from campaigns.feedback.sns import (
    NOTIFICATION,
    SUBSCRIPTION_CONFIRMATION,
    UNSUBSCRIBE_CONFIRMATION,
    SnsVerifier,
    confirm_subscription,
    parse_envelope,
    warn_test_confirm_url,
)
from tracking_service.errors import error_response

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

MAX_BODY_BYTES = 256 * 1024  # SNS messages are at most 256 KB
VERIFIER_KEY = "sns_verifier"


def _refuse(status: int, message: str, reason: str, message_id: Any = None) -> Response:
    # The reason goes to the log (never the body, which an attacker controls and may be large); the client gets
    # only the short public message.
    log.warning("refused SNS request from %s (message id %r): %s", request.remote_addr,
                str(message_id)[:100] if message_id else None, reason[:300])
    return error_response(status, message)


def verifier() -> SnsVerifier:
    """The per-process verifier, built once from the app's settings (its certificate cache lives as long)."""
    existing = current_app.extensions.get(VERIFIER_KEY)
    if existing is None:
        settings: Settings = current_app.config["SETTINGS"]
        existing = SnsVerifier(settings.sns_topic_arns, test_cert_pem=settings.sns_test_cert_pem,
                               fetch=current_app.config.get("SNS_CERT_FETCH"),
                               max_clock_skew=settings.sns_max_clock_skew_seconds)
        current_app.extensions[VERIFIER_KEY] = existing
    return existing


def init_app(app: Flask) -> None:
    """Start-up checks of the webhook's settings: the dev-only SNS_TEST_CONFIRM_URL is logged loudly."""
    warn_test_confirm_url(app.config["SETTINGS"].sns_test_confirm_url)


def _read_body() -> bytes | None:
    """The raw body, or None when it is larger than MAX_BODY_BYTES (with or without a Content-Length)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    try:
        # One byte more than allowed tells "exactly at the limit" from "over it" for bodies without a length.
        body = request.stream.read(MAX_BODY_BYTES + 1)
    except RequestEntityTooLarge:
        return None
    return None if len(body) > MAX_BODY_BYTES else body


@bp.post("/webhooks/ses")
def ses_webhook():
    body = _read_body()
    if body is None:
        return _refuse(413, "body too large", f"body over {MAX_BODY_BYTES} bytes")
    try:
        message = parse_envelope(body)
    except SnsVerificationError as exc:
        return _refuse(400, "malformed SNS message", str(exc))
    header_type = request.headers.get("x-amz-sns-message-type")
    if header_type is not None and header_type != message["Type"]:
        return _refuse(400, "malformed SNS message", f"header type {header_type!r} != body Type", message["MessageId"])
    try:
        verifier().verify(message)
    except SnsVerificationError as exc:
        return _refuse(403, "SNS verification failed", str(exc), message["MessageId"])

    kind = message["Type"]
    if kind == SUBSCRIPTION_CONFIRMATION:
        return _confirm(message)
    if kind == UNSUBSCRIBE_CONFIRMATION:
        log.warning("SNS unsubscribed this endpoint from %s (message id %s)", message["TopicArn"],
                    message["MessageId"])
        return jsonify(status="ok"), 200
    if kind == NOTIFICATION:
        settings: Settings = current_app.config["SETTINGS"]
        with db.connect(db.postgres_dsn(settings.db_conn_id), autocommit=True, connect_timeout=5) as conn:
            outcome = record_notification(conn, message, settings)
        log.info("SNS %s: %s", message["MessageId"], outcome)
        return jsonify(status="ok", result=outcome), 200
    return _refuse(400, "malformed SNS message", f"unhandled Type {kind!r}", message["MessageId"])


def _confirm(message: dict[str, Any]) -> Response | tuple[Response, int]:
    get = current_app.config.get("SNS_HTTP_GET")
    kwargs = {"get": get} if get is not None else {}
    settings: Settings = current_app.config["SETTINGS"]
    try:
        status = confirm_subscription(message, verifier=verifier(), test_confirm_url=settings.sns_test_confirm_url,
                                      **kwargs)
    except SnsVerificationError as exc:
        return _refuse(403, "SNS verification failed", str(exc), message["MessageId"])
    except OSError as exc:  # requests' errors are OSErrors: SNS could not be reached; it may resend the request
        log.error("could not confirm SNS subscription to %s: %s", message["TopicArn"], type(exc).__name__)
        return error_response(502, "subscription confirmation failed")
    return jsonify(status="confirmed", upstream_status=status), 200
