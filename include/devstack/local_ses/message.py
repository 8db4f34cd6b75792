"""One message the local SES accepted: what SendEmail carried, its MessageId and when the local SES received it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class AcceptedMessage:
    """A SendEmail request the local SES answered with a MessageId (moto keeps no receive times; this does)."""

    message_id: str
    received_at: datetime  # UTC, when the request reached the local SES
    source: str  # FromEmailAddress
    destinations: tuple[str, ...]  # Destination.ToAddresses (the send path sends one recipient per call)
    raw: bytes  # Content.Raw.Data, decoded
    tags: dict[str, str] = field(default_factory=dict)  # EmailTags as {Name: Value}
    configuration_set: str | None = None  # ConfigurationSetName
