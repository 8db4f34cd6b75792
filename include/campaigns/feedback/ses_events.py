"""Record one verified SNS Notification carrying an SES event: log it, apply suppression rules, settle the ledger.

Both SES shapes are handled: configuration-set events (`eventType`, with the sender's tags) and identity
notifications (`notificationType`, no tags). Everything for one SNS message happens in one transaction, and the
SNS MessageId makes a redelivery a no-op.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from campaigns import queries
from campaigns.config import Settings

log = logging.getLogger(__name__)

# SES event name (eventType or notificationType) -> email_events.type; anything else is recorded as "other".
EVENT_TYPES: dict[str, str] = {
    "Send": "send",
    "Delivery": "delivery",
    "Bounce": "bounce",
    "Complaint": "complaint",
    "Reject": "reject",
    "DeliveryDelay": "delivery_delay",
    "Rendering Failure": "rendering_failure",
    "Open": "open",
    "Click": "click",
}
# The event's own object inside the SES message, for its timestamp, subtype and recipients.
EVENT_KEYS: dict[str, str] = {
    "send": "send", "delivery": "delivery", "bounce": "bounce", "complaint": "complaint", "reject": "reject",
    "delivery_delay": "deliveryDelay", "rendering_failure": "failure", "open": "open", "click": "click",
}
# Events that prove SES accepted the message (an `unknown` ledger row was sent) or refused it (it was not).
ACCEPTED = frozenset({"send", "delivery", "bounce", "complaint", "delivery_delay", "open", "click"})
REFUSED = frozenset({"reject", "rendering_failure"})
SOFT_BOUNCE_TYPES = frozenset({"Transient", "Undetermined"})


def record_notification(conn: psycopg.Connection, envelope: Mapping[str, Any], settings: Settings) -> str:
    """Process one verified SNS Notification in one transaction; returns a short summary of what it did."""
    sql = queries.load("events")
    event = _decode(envelope.get("Message"))
    kind_name = event.get("eventType") or event.get("notificationType")
    kind = EVENT_TYPES.get(kind_name, "other") if isinstance(kind_name, str) else "other"
    mail = event.get("mail") if isinstance(event.get("mail"), dict) else {}
    detail = event.get(EVENT_KEYS.get(kind, ""))
    detail = detail if isinstance(detail, dict) else {}
    ses_message_id = mail.get("messageId") if isinstance(mail.get("messageId"), str) else None

    with conn.transaction():
        recipient = _find_recipient(conn, sql, ses_message_id, mail.get("tags"))
        addresses = _addresses(kind, detail)
        inserted = conn.execute(sql["insert-event"], {
            "campaign_id": recipient["campaign_id"] if recipient else None,
            "recipient_id": recipient["id"] if recipient else None,
            "email": recipient["email"] if recipient else (addresses[0] if addresses else _first(mail)),
            "type": kind,
            "subtype": _subtype(kind, detail, kind_name),
            "ip": _ip(detail.get("ipAddress")),
            "user_agent": detail.get("userAgent") if isinstance(detail.get("userAgent"), str) else None,
            "sns_message_id": envelope["MessageId"],
            "ses_message_id": ses_message_id,
            "payload": Jsonb(event),
            "occurred_at": _timestamp(detail.get("timestamp"), mail.get("timestamp"), envelope.get("Timestamp")),
        }).fetchone()
        if inserted is None:
            return "duplicate"

        done = [kind if kind != "bounce" else f"bounce:{detail.get('bounceType')}"]
        suppressed = _apply_suppression_rules(conn, sql, kind, detail, addresses, settings)
        if suppressed is not None:
            done.append(f"suppressed {suppressed}")
        if recipient is not None and recipient["status"] == "unknown":
            done.append(_settle(conn, sql, kind, recipient, ses_message_id, mail, detail))
        elif recipient is None:
            done.append("no ledger row")
    return " ".join(done)


def _decode(raw: Any) -> dict[str, Any]:
    # The SNS Message is a JSON string; anything else is kept verbatim as an "other" event rather than refused,
    # because SNS already verified it and would only retry a refusal.
    try:
        event = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"unparsed": raw if isinstance(raw, str) else None}


def _find_recipient(conn: psycopg.Connection, sql: Mapping[str, str], ses_message_id: str | None,
                    tags: Any) -> dict[str, Any] | None:
    if ses_message_id:
        row = conn.execute(sql["recipient-by-message"], {"ses_message_id": ses_message_id}).fetchone()
        if row is not None:
            return row
    campaign_id, recipient_id = _tag_id(tags, "campaign"), _tag_id(tags, "recipient")
    if campaign_id is None or recipient_id is None:
        return None
    return conn.execute(sql["recipient-by-tags"], {"campaign_id": campaign_id, "recipient_id": recipient_id}).fetchone()


def _tag_id(tags: Any, name: str) -> int | None:
    # SES delivers tags as {"name": ["value"]}; only a single all-digit value in bigint range is an id.
    values = tags.get(name) if isinstance(tags, dict) else None
    if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
        return None
    value = values[0]
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


def _addresses(kind: str, detail: Mapping[str, Any]) -> list[str]:
    key = {"bounce": "bouncedRecipients", "complaint": "complainedRecipients"}.get(kind)
    entries = detail.get(key) if key else None
    if not isinstance(entries, list):
        return []
    found: list[str] = []
    for entry in entries:
        address = entry.get("emailAddress") if isinstance(entry, dict) else None
        if isinstance(address, str) and "@" in address and address.strip().lower() not in found:
            found.append(address.strip().lower())
    return found


def _first(mail: Mapping[str, Any]) -> str | None:
    destination = mail.get("destination")
    if isinstance(destination, list) and destination and isinstance(destination[0], str):
        return destination[0]
    return None


def _subtype(kind: str, detail: Mapping[str, Any], kind_name: Any) -> str | None:
    key = {"bounce": "bounceType", "complaint": "complaintFeedbackType", "delivery_delay": "delayType",
           "reject": "reason", "rendering_failure": "templateName"}.get(kind)
    if kind == "other":
        return str(kind_name)[:100] if kind_name is not None else None
    value = detail.get(key) if key else None
    return value if isinstance(value, str) else None


def _ip(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _timestamp(*candidates: Any) -> datetime:
    for value in candidates:
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _apply_suppression_rules(conn: psycopg.Connection, sql: Mapping[str, str], kind: str,
                             detail: Mapping[str, Any], addresses: list[str], settings: Settings) -> int | None:
    """Suppress per the rules; returns how many addresses were newly suppressed, or None when no rule applies."""
    rows: list[tuple[str, str, str]] = []
    if kind == "complaint":
        rows = [(a, "complaint", f"complaint {detail.get('complaintFeedbackType') or ''}".strip()) for a in addresses]
    elif kind == "bounce" and detail.get("bounceType") == "Permanent":
        rows = [(a, "hard_bounce", f"Permanent/{detail.get('bounceSubType')}") for a in addresses]
    elif kind == "bounce" and detail.get("bounceType") in SOFT_BOUNCE_TYPES:
        for address in addresses:
            count = conn.execute(sql["count-soft-bounces"],
                                 {"email": address, "days": settings.soft_bounce_days}).fetchone()["n"]
            if count >= settings.soft_bounce_limit:
                rows.append((address, "soft_bounce_limit", f"{count} soft bounces in {settings.soft_bounce_days} days"))
    else:
        return None
    suppressed = 0
    for address, reason, why in rows:
        if conn.execute(sql["suppress"], {"email": address, "reason": reason, "detail": why}).fetchone():
            suppressed += 1
    return suppressed


def _settle(conn: psycopg.Connection, sql: Mapping[str, str], kind: str, recipient: Mapping[str, Any],
            ses_message_id: str | None, mail: Mapping[str, Any], detail: Mapping[str, Any]) -> str:
    if kind in ACCEPTED and ses_message_id:
        row = conn.execute(sql["settle-sent"], {
            "recipient_id": recipient["id"], "ses_message_id": ses_message_id,
            "sent_at": _timestamp(mail.get("timestamp")),
        }).fetchone()
        return "settled sent" if row else "not settled"
    if kind in REFUSED:
        reason = detail.get("reason") or detail.get("errorMessage") or kind
        row = conn.execute(sql["settle-failed"],
                           {"recipient_id": recipient["id"], "error": f"ses {kind}: {str(reason)[:500]}"}).fetchone()
        return "settled failed" if row else "not settled"
    return "left unknown"
