"""Record one verified SNS Notification carrying an SES event: log it, apply suppression rules, settle the ledger.

Both SES shapes are handled: configuration-set events (`eventType`, with the sender's tags) and identity
notifications (`notificationType`, no tags). Everything for one SNS message happens in one transaction, and the
SNS MessageId makes a redelivery a no-op.

SES writes recipients as they appeared in the message, so an address may come with a display name
(`"John <john@example.com>"`), several may share one string (`commonHeaders.to`), and domains may be punycode.
Each is parsed as a header address list and brought into the form contacts are stored in
(`campaigns.audience.addresses`), so a bounce suppresses the address the next campaign would send to. A payload the
product does not know (a new SES type, `AmazonSnsSubscriptionSucceeded`, the plain-text "Successfully validated
SNS topic" message) is recorded as `other`: SNS already verified it and would only retry a refusal.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import HeaderRegistry
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from campaigns import queries
from campaigns.audience.addresses import EmailNotValidError, suppression_address
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
# Where each event lists the recipients it is about: (key in the event's object, key in each entry or None when
# the entries are plain strings).
RECIPIENT_KEYS: dict[str, tuple[str, str | None]] = {
    "bounce": ("bouncedRecipients", "emailAddress"),
    "complaint": ("complainedRecipients", "emailAddress"),
    "delivery_delay": ("delayedRecipients", "emailAddress"),
    "delivery": ("recipients", None),
}
_HEADERS = HeaderRegistry()


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
        addresses = _recipients(kind, detail)
        inserted = conn.execute(sql["insert-event"], {
            "campaign_id": recipient["campaign_id"] if recipient else None,
            "recipient_id": recipient["id"] if recipient else None,
            "email": recipient["email"] if recipient else _first_address(addresses, mail),
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
    return _storable(event if isinstance(event, dict) else {"unparsed": raw if isinstance(raw, str) else None})


def _storable(value: Any) -> Any:
    """The decoded event with what PostgreSQL cannot store replaced, so a strange payload is recorded, never a 500.

    JSON allows NUL (\\u0000), lone surrogates and NaN/Infinity (Python's json reads them); jsonb and text columns
    refuse all three, and the refused INSERT would fail the request and make SNS retry it in vain.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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


def parse_addresses(values: Iterable[Any]) -> list[str]:
    """Every address in SES's address strings, in suppression form (stored form, lower-case), once each, in order.

    A string is read as a header's address list, as SES copies it from the message: a display name, quoting,
    encoded words and several comma-separated addresses are all understood. Whatever is not a valid address (a
    group with no members, a quoted local part no contact can have) is skipped, never guessed at.
    """
    found: list[str] = []
    for value in values:
        for spec in _addr_specs(value):
            try:
                address = suppression_address(spec)
            except EmailNotValidError:
                log.info("SES reported %r, which is not an address the product can store; ignored", spec[:200])
                continue
            if address not in found:
                found.append(address)
    return found


def _addr_specs(value: Any) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        header = _HEADERS("to", value)
    except (HeaderParseError, ValueError, IndexError, TypeError):  # the email parser's ways of giving up
        return []
    return [address.addr_spec for address in header.addresses if address.addr_spec]


def _recipients(kind: str, detail: Mapping[str, Any]) -> list[str]:
    """The addresses the event is about, from its own object (bouncedRecipients, complainedRecipients, ...)."""
    list_key, entry_key = RECIPIENT_KEYS.get(kind, ("", None))
    entries = detail.get(list_key)
    if not isinstance(entries, list):
        return []
    if entry_key is None:
        return parse_addresses(entries)
    return parse_addresses(entry.get(entry_key) for entry in entries if isinstance(entry, dict))


def _first_address(addresses: list[str], mail: Mapping[str, Any]) -> str | None:
    """The event's address when no ledger row is known: its recipients, else the message's destination or To."""
    if addresses:
        return addresses[0]
    headers = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    for values in (mail.get("destination"), headers.get("to")):
        found = parse_addresses(values) if isinstance(values, list) else []
        if found:
            return found[0]
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
            count = _soft_bounces(conn, sql, address, settings.soft_bounce_days)
            if count >= settings.soft_bounce_limit:
                rows.append((address, "soft_bounce_limit", f"{count} soft bounces in {settings.soft_bounce_days} days"))
    else:
        return None
    suppressed = 0
    for address, reason, why in rows:
        if conn.execute(sql["suppress"], {"email": address, "reason": reason, "detail": why}).fetchone():
            suppressed += 1
    return suppressed


def _soft_bounces(conn: psycopg.Connection, sql: Mapping[str, str], address: str, days: int) -> int:
    """Soft bounces of `address` in the window, this one included, each recipient string parsed like this one's.

    The database only narrows the candidates (the local part appears in a bounced recipient): whether a recipient
    such as "John <JOHN@xn--bcher-kva.de>" is this address takes the same parsing as the bounce being recorded.
    """
    local_part = address.rpartition("@")[0]
    candidates = conn.execute(sql["soft-bounce-recipients"], {"local_part": local_part, "days": days}).fetchall()
    return len({row["id"] for row in candidates if address in parse_addresses([row["address"]])})


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
