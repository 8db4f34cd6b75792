"""The SES events real SES publishes for a message sent with a configuration set that has an SNS event destination,
by the rules of SES's mailbox simulator. Dev stack and tests only.

Shapes follow AWS's "Examples of event data that Amazon SES publishes to Amazon SNS" (eventType Send, Delivery,
Bounce, Complaint, DeliveryDelay, Reject, Rendering Failure; `mail` with headers, commonHeaders and tags). The
mailbox simulator (success@, bounce@, ooto@, complaint@, suppressionlist@ simulator.amazonses.com, each also with a
`+label`) answers as AWS documents it; any other address is delivered, or, when the rules ask for realism, soft
bounces or is delayed first (a seeded random choice, off by default).

SES publishes nothing for a message without a configuration set (there is no event destination), so neither does
this, unless the rules name a default configuration set (as an identity's default configuration set would).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email import policy as email_policy
from email.header import decode_header, make_header
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Any

from devstack.local_ses.message import AcceptedMessage

SIMULATOR_DOMAIN = "simulator.amazonses.com"
SIMULATOR_USER_AGENT = "Amazon SES Mailbox Simulator"
# The EICAR test string: antivirus scanners (and SES's) treat it as a virus, so a message carrying it is rejected.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SUPPRESSED_DIAGNOSTIC = (
    "Amazon SES did not send the message to this address because it is on the suppression list for your account. "
    "For more information about removing addresses from the suppression list, see the Amazon SES Developer Guide at "
    "https://docs.aws.amazon.com/ses/latest/DeveloperGuide/sending-email-suppression-list.html")

SEND, DELIVERY, BOUNCE, COMPLAINT = "Send", "Delivery", "Bounce", "Complaint"
DELIVERY_DELAY, REJECT, RENDERING_FAILURE = "DeliveryDelay", "Reject", "Rendering Failure"
# The event's own object, keyed by eventType (as in AWS's examples; Rendering Failure's is `failure`).
DETAIL_KEYS = {SEND: "send", DELIVERY: "delivery", BOUNCE: "bounce", COMPLAINT: "complaint",
               DELIVERY_DELAY: "deliveryDelay", REJECT: "reject", RENDERING_FAILURE: "failure"}


@dataclass(frozen=True)
class EventRules:
    """How the local SES answers: account, identity tags, delays between events, the optional realism shares."""

    account_id: str = "123456789012"
    region: str = "us-east-1"
    source_ip: str = "127.0.0.1"  # ses:source-ip: the caller's address
    caller_identity: str = "local-ses"  # ses:caller-identity: the IAM user or role that called SendEmail
    reporting_mta: str = "local-ses.smtp-out.amazonses.com"
    default_configuration_set: str | None = None  # used when a message names none; None: such messages get no events
    # Sub-second by default so tests and the demo see the whole loop quickly; real SES takes seconds to minutes.
    delivery_after: timedelta = timedelta(milliseconds=200)  # Send -> Delivery (or bounce)
    feedback_after: timedelta = timedelta(milliseconds=300)  # Delivery -> the ooto bounce or the complaint
    soft_bounce_share: float = 0.0  # of other addresses: a Transient/General bounce instead of a delivery
    delivery_delay_share: float = 0.0  # of other addresses: a DeliveryDelay before the delivery
    seed: int = 0


@dataclass(frozen=True, order=True)
class SesEvent:
    """One event SES would publish: when, and the JSON SNS carries as its Message."""

    at: datetime
    seq: int  # keeps the order of events at the same instant
    event_type: str = field(compare=False)
    body: dict[str, Any] = field(compare=False)

    def message(self) -> str:
        """The SNS Message: compact JSON with the trailing newline SES's event publishing adds."""
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False) + "\n"


def simulator_mailbox(address: str) -> str | None:
    """'bounce' for bounce@ or bounce+label@simulator.amazonses.com; None for any other address."""
    local, _, domain = address.strip().rpartition("@")
    if domain.lower() != SIMULATOR_DOMAIN:
        return None
    mailbox = local.split("+", 1)[0].lower()
    return mailbox if mailbox in ("success", "bounce", "ooto", "complaint", "suppressionlist") else None


def iso(moment: datetime) -> str:
    """SES's timestamp format: UTC, milliseconds, Z."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def feedback_id(moment: datetime) -> str:
    """An id shaped like SES's feedbackId (hex time, a UUID, -000000)."""
    return f"{int(moment.timestamp() * 1000):016x}-{uuid.uuid4()}-000000"


class EventBuilder:
    """Builds the events of accepted messages by the rules; its random choices are seeded, so runs repeat."""

    def __init__(self, rules: EventRules | None = None) -> None:
        self.rules = rules or EventRules()
        self._random = random.Random(self.rules.seed)  # noqa: S311 - seeded realism, not security
        self._seq = 0

    def events_for(self, message: AcceptedMessage) -> list[SesEvent]:
        """Every event SES publishes for `message`, in time order (none without a configuration set)."""
        configuration_set = message.configuration_set or self.rules.default_configuration_set
        if configuration_set is None:
            return []
        mail = self.mail(message, configuration_set)
        t0 = message.received_at
        if EICAR in message.raw:
            return [self._event(t0, REJECT, mail, {"reason": "Bad content"})]
        events = [self._event(t0, SEND, mail, {})]
        for address in message.destinations:
            events.extend(self._outcome(address, mail, t0))
        return sorted(events)

    def rendering_failure(self, message: AcceptedMessage, template: str, error: str) -> SesEvent:
        """The event SES publishes when a templated send cannot be rendered (the raw send path never has one)."""
        mail = self.mail(message, message.configuration_set or self.rules.default_configuration_set or "")
        return self._event(message.received_at, RENDERING_FAILURE, mail,
                           {"errorMessage": error, "templateName": template})

    def _outcome(self, address: str, mail: dict[str, Any], t0: datetime) -> list[SesEvent]:
        r = self.rules
        delivered, feedback = t0 + r.delivery_after, t0 + r.delivery_after + r.feedback_after
        dsn = f"dsn; {r.reporting_mta}"
        mailbox = simulator_mailbox(address)
        if mailbox == "bounce":
            return [self._bounce(delivered, mail, address, "Permanent", "General", {
                "action": "failed", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}, dsn)]
        if mailbox == "suppressionlist":
            # SES never attempted it: the bounce comes from SES itself, at once, with SES's own reporting MTA
            return [self._bounce(t0, mail, address, "Permanent", "OnAccountSuppressionList", {
                "action": "failed", "status": "5.1.1", "diagnosticCode": SUPPRESSED_DIAGNOSTIC},
                "dns; amazonses.com")]
        if mailbox == "ooto":  # delivered, then the auto reply: a Transient bounce without DSN fields
            return [self._delivery(delivered, t0, mail, address),
                    self._bounce(feedback, mail, address, "Transient", "General", {}, None)]
        if mailbox == "complaint":
            return [self._delivery(delivered, t0, mail, address), self._complaint(feedback, mail, address)]
        if mailbox is None:
            roll = self._random.random()
            if roll < r.soft_bounce_share:
                return [self._bounce(delivered, mail, address, "Transient", "General", {
                    "action": "failed", "status": "4.4.7",
                    "diagnosticCode": "smtp; 554 4.4.7 Message expired: unable to deliver in 840 minutes."}, dsn)]
            if roll < r.soft_bounce_share + r.delivery_delay_share:
                return [self._delay(delivered, mail, address), self._delivery(feedback, t0, mail, address)]
        return [self._delivery(delivered, t0, mail, address)]

    def mail(self, message: AcceptedMessage, configuration_set: str) -> dict[str, Any]:
        """The `mail` object every event of the message carries."""
        r = self.rules
        headers, common = parse_headers(message)
        from_domain = parseaddr(message.source)[1].rpartition("@")[2].lower()
        tags: dict[str, list[str]] = {name: [value] for name, value in message.tags.items()}
        tags.update({
            "ses:configuration-set": [configuration_set],
            "ses:source-ip": [r.source_ip],
            "ses:from-domain": [from_domain],
            "ses:caller-identity": [r.caller_identity],
        })
        return {
            "timestamp": iso(message.received_at),
            "source": message.source,
            "sourceArn": f"arn:aws:ses:{r.region}:{r.account_id}:identity/{from_domain}",
            "sendingAccountId": r.account_id,
            "messageId": message.message_id,
            "destination": list(message.destinations),
            "headersTruncated": False,
            "headers": headers,
            "commonHeaders": common,
            "tags": tags,
        }

    def _event(self, at: datetime, event_type: str, mail: dict[str, Any], detail: dict[str, Any]) -> SesEvent:
        self._seq += 1
        return SesEvent(at, self._seq, event_type, {"eventType": event_type, "mail": mail,
                                                    DETAIL_KEYS[event_type]: detail})

    def _delivery(self, at: datetime, t0: datetime, mail: dict[str, Any], address: str) -> SesEvent:
        return self._event(at, DELIVERY, mail, {
            "timestamp": iso(at), "processingTimeMillis": int((at - t0).total_seconds() * 1000),
            "recipients": [address], "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": self.rules.reporting_mta})

    def _bounce(self, at: datetime, mail: dict[str, Any], address: str, bounce_type: str, subtype: str,
                recipient: dict[str, str], reporting_mta: str | None) -> SesEvent:
        detail: dict[str, Any] = {
            "bounceType": bounce_type, "bounceSubType": subtype,
            "bouncedRecipients": [{"emailAddress": address, **recipient}],
            "timestamp": iso(at), "feedbackId": feedback_id(at)}
        if reporting_mta is not None:
            detail["reportingMTA"] = reporting_mta
        return self._event(at, BOUNCE, mail, detail)

    def _complaint(self, at: datetime, mail: dict[str, Any], address: str) -> SesEvent:
        return self._event(at, COMPLAINT, mail, {
            "complainedRecipients": [{"emailAddress": address}], "timestamp": iso(at), "feedbackId": feedback_id(at),
            "userAgent": SIMULATOR_USER_AGENT, "complaintFeedbackType": "abuse", "arrivalDate": iso(at)})

    def _delay(self, at: datetime, mail: dict[str, Any], address: str) -> SesEvent:
        return self._event(at, DELIVERY_DELAY, mail, {
            "timestamp": iso(at), "delayType": "TransientCommunicationFailure",
            "expirationTime": iso(at + timedelta(hours=14)),
            "delayedRecipients": [{"emailAddress": address, "status": "4.4.1",
                                   "diagnosticCode": "smtp; 421 4.4.1 Unable to connect to remote host"}]})


def parse_headers(message: AcceptedMessage) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """(headers, commonHeaders) of the raw MIME as SES reports them, with the Date and Message-ID SES adds."""
    # Only the header block, with the compat32 parser: the bodies and policy.default's header objects would cost
    # more than everything else here, at every message the local SES accepts.
    head = re.split(rb"\r?\n\r?\n", message.raw, maxsplit=1)[0] + b"\r\n\r\n"
    parsed = message_from_bytes(head, policy=email_policy.compat32)
    # the raw header text, unfolded, as SES lists it
    headers = [{"name": name, "value": " ".join(str(value).split())} for name, value in parsed.items()]
    names = {h["name"].lower() for h in headers}
    if "date" not in names:
        headers.append({"name": "Date", "value": format_datetime(message.received_at)})
    if "message-id" not in names:
        headers.append({"name": "Message-ID", "value": f"<{message.message_id}@email.amazonses.com>"})
    values = {h["name"].lower(): h["value"] for h in reversed(headers)}  # the first of a repeated header
    common: dict[str, Any] = {}
    for key, header in (("from", "from"), ("replyTo", "reply-to"), ("to", "to"), ("cc", "cc")):
        if header in values:
            common[key] = [_address(_decoded(name), address) for name, address in getaddresses([values[header]])]
    common["date"] = values["date"]
    common["messageId"] = message.message_id  # SES reports its own id here
    if "subject" in values:
        common["subject"] = _decoded(values["subject"])
    return headers, common


def _decoded(text: str) -> str:
    """RFC 2047 encoded words decoded, as SES shows commonHeaders."""
    return str(make_header(decode_header(text))) if "=?" in text else text


def _address(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def new_message_id(moment: datetime) -> str:
    """A MessageId shaped like SES's (for tests that build an AcceptedMessage without the local SES)."""
    return f"{int(moment.timestamp() * 1000):016x}-{uuid.uuid4()}-000000"
