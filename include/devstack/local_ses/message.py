"""One message the local SES accepted: what SendEmail carried, its MessageId and when the local SES received it.

`delivered()` is that message as SES hands it on to the recipient's server: with the Feedback-ID header SES writes
from the `ses:feedback-id-a` / `ses:feedback-id-b` tags (`a:b:<SES's id>:AmazonSES`), and SES's own Date (the
time it accepted the message) and Message-ID in place of any the sender wrote. SES adds a DKIM-Signature and
Received headers too; the local SES signs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime

REGION = "us-east-1"  # the local stack's region
FEEDBACK_ID_TAGS = ("ses:feedback-id-a", "ses:feedback-id-b")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_REPLACED = re.compile(rb"(?im)^(?:date|message-id|feedback-id):.*(?:\r?\n[ \t].*)*\r?\n")  # with their folds


def feedback_id(tags: dict[str, str], source: str) -> str:
    """The Feedback-ID header value SES writes: the two tags (empty when not given), its id of the sender, AmazonSES.

    SES's own id is opaque; here it is `1.<region>.<base64 of a hash of the From domain>=`, shaped like SES's.
    """
    domain = source.rpartition("@")[2].rstrip(">").lower()
    internal = base64.b64encode(hashlib.sha256(domain.encode("utf-8")).digest()).decode("ascii")
    return ":".join([*(tags.get(name, "") for name in FEEDBACK_ID_TAGS), f"1.{REGION}.{internal}", "AmazonSES"])


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

    @property
    def feedback_id(self) -> str:
        """The Feedback-ID header SES adds to this message."""
        return feedback_id(self.tags, self.source)

    def delivered(self) -> bytes:
        """The message as SES sends it on: Feedback-ID, SES's Date and Message-ID on top of the sender's headers."""
        blank = _BLANK_LINE.search(self.raw)
        end = blank.start() if blank else len(self.raw)  # the sender's last header line ends here
        newline = 2 if self.raw.startswith(b"\r\n", end) else 1
        added = (f"Feedback-ID: {self.feedback_id}\r\nDate: {format_datetime(self.received_at)}\r\n"
                 f"Message-ID: <{self.message_id}@email.amazonses.com>\r\n").encode("ascii")
        return added + _REPLACED.sub(b"", self.raw[:end] + b"\r\n") + self.raw[end + newline:]
