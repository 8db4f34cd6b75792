"""The MIME side of a message: header checks, the skeleton built once per campaign, quoted-printable bodies and the
Subject header produced per recipient.

The output parses like the stdlib `EmailMessage(policy=SMTP)` build of the same content. No Date or Message-ID
header is written: SES overwrites both (docs/deliverability.md). No Feedback-ID either: SES writes it from the
`ses:feedback-id-*` message tags (campaigns.sending.ses).
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage

from campaigns.errors import AddressProblem
from campaigns.sending.addresses import normalize_address
from campaigns.sending.list_id import ListId

# Headers the Composer writes itself (or SES does); extra_headers may not set them.
_MANAGED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "sender", "subject", "mime-version", "content-type",
    "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post", "return-path", "date", "message-id",
    "list-id", "feedback-id",
})
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext
_MAX_LINE = 998
HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CR, LF or another control (not tab): header injection

# QP spelling of every byte: printable ASCII, space and tab as is, everything else (and '=') as =XX
_QP_BYTE = tuple(chr(b) if (33 <= b <= 126 and b != 61) or b in (9, 32) else f"={b:02X}" for b in range(256))
_QP_CACHE_LINES = 4096  # per part; static template lines fill it during the first renders
_EW_CHUNK = 42  # bytes per RFC 2047 encoded word: "Subject: " + 10 + 56 + 2 stays within 78 columns
# RFC 5322 atoms separated by single spaces: a phrase that needs neither quoting nor encoding
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _qp_line(line: str) -> str:
    """One line (no line break) as quoted-printable, soft-wrapped at 76 columns with CRLF.

    Hand-rolled because binascii.b2a_qp is slow (a byte loop, ~12 us per KB) and can exceed 76 columns when it
    encodes trailing white space; this gives the same decoded text as the stdlib's encoder.
    """
    if line.isascii() and line.isprintable():
        encoded = line.replace("=", "=3D")  # printable ASCII: '=' is the only character that needs escaping
    else:
        encoded = "".join([_QP_BYTE[byte] for byte in line.encode("utf-8")])
    if encoded.endswith((" ", "\t")):  # trailing white space would be stripped in transit
        encoded = encoded[:-1] + ("=20" if encoded[-1] == " " else "=09")
    if len(encoded) <= 76:
        return encoded
    chunks: list[str] = []
    start, end = 0, len(encoded)
    while end - start > 76:
        stop = start + 75  # 75 characters + the soft break '=' = 76
        escape = encoded.rfind("=", stop - 2, stop)
        if escape != -1:  # every '=' starts an =XX escape: never split one across a soft break
            stop = escape
        chunks.append(encoded[start:stop])
        start = stop
    chunks.append(encoded[start:])
    return "=\r\n".join(chunks)


def qp_body(text: str, cache: dict[str, str]) -> bytes:
    """Quoted-printable body with CRLF line ends and a final line break, like EmailMessage.set_content.

    Most lines of a campaign's body are the same for every recipient, so lines are encoded one by one through
    `cache` (QP's line state resets at every hard line break, so per-line encoding is exact). Regular expressions
    over the whole body were tried and are several times slower than this loop.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines[-1] == "" and len(lines) > 1:
        lines.pop()  # the final line break is added back below (an empty body still gets one, as in the stdlib)
    get = cache.get
    encoded = [hit if (hit := get(line)) is not None else _qp_miss(line, cache) for line in lines]
    encoded.append("")
    return "\r\n".join(encoded).encode("ascii")


def _qp_miss(line: str, cache: dict[str, str]) -> str:
    encoded = _qp_line(line)
    if len(cache) < _QP_CACHE_LINES:  # static lines arrive first; a full cache just stops growing
        cache[line] = encoded
    return encoded


def subject_value(subject: str) -> bytes:
    """The Subject header value: plain ASCII folded at spaces, or RFC 2047 base64 words when that cannot work."""
    if subject.isascii() and "=?" not in subject and subject.isprintable():
        if len(subject) <= 69:  # "Subject: " + 69 = 78 columns
            return subject.encode("ascii")
        lines: list[str] = []
        current = ""
        for word in subject.split(" "):
            if not current:
                current = word if not lines else " " + word
            elif len(current) + 1 + len(word) <= 69 or not word:
                current += " " + word
            else:
                lines.append(current)
                current = " " + word  # the folding white space is the original space: unfolding restores it
        lines.append(current)
        if all(len(line) <= _MAX_LINE - 10 and line.strip() for line in lines):
            return "\r\n".join(lines).encode("ascii")
    return _encoded_words(subject)


def _encoded_words(text: str) -> bytes:
    """`text` as RFC 2047 base64 encoded words of UTF-8, one per folded line."""
    data = text.encode("utf-8")
    words: list[bytes] = []
    start, end = 0, len(data)
    while start < end:
        stop = min(start + _EW_CHUNK, end)
        while stop < end and (data[stop] & 0xC0) == 0x80:  # never split a UTF-8 sequence between words
            stop -= 1
        words.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:stop], newline=False) + b"?=")
        start = stop
    return b"\r\n ".join(words)


def list_id_value(list_id: ListId) -> bytes:
    """The List-Id header value: the description as atoms, a quoted string or encoded words, then <id>.

    The description is untrusted text (a list's name), already free of control characters (list_id._clean):
    quoting escapes its quotes and backslashes, so it can never close the phrase or add a header; lines stay
    within 78 columns except for an id longer than that.
    """
    bracketed = b"<" + list_id.identifier.encode("ascii") + b">"
    description = list_id.description
    if not description:
        return bracketed
    quoted = '"' + description.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _ATOM_PHRASE.fullmatch(description):
        phrase = subject_value(description)  # atoms folded at spaces ("=?" in one: encoded words)
    elif description.isascii() and len(quoted) <= 69:
        phrase = quoted.encode("ascii")
    else:
        phrase = _encoded_words(description)
    last_line = phrase.rpartition(b"\r\n")[2]
    fits = len(last_line) + 1 + len(bracketed) <= 69  # "List-Id: " + 69 = 78 columns
    return phrase + (b" " if fits else b"\r\n ") + bracketed


def _check_header_text(value: str, what: str) -> None:
    if HEADER_CONTROL.search(value):
        raise AddressProblem(f"{what} contains a line break or control character")


@dataclass(frozen=True, slots=True)
class MimeSkeleton:
    """One campaign's message bytes around the per-recipient values: To, Subject, List-Unsubscribe and the bodies.

    From/Reply-To/List-Id/extra headers, the boundary and the part headers are built once; per recipient the
    Composer joins head + To + after_to + Subject + after_subject + unsubscribe URL + after_unsubscribe + text +
    between_parts + html + tail.
    """

    head: bytes
    after_to: bytes
    after_subject: bytes
    after_unsubscribe: bytes
    between_parts: bytes
    tail: bytes

    @classmethod
    def build(cls, campaign_id: int, from_email: str, from_name: str | None, reply_to: str | None,
              extra_headers: Mapping[str, str], list_id: ListId | None = None) -> MimeSkeleton:
        """The skeleton for a sender (`from_email` already normalized); AddressProblem for a header that cannot be."""
        headers = EmailMessage(policy=email_policy.SMTP)
        display_name = from_name or ""
        _check_header_text(display_name, "from name")
        try:
            headers["From"] = Address(display_name=display_name, addr_spec=from_email)
            if reply_to:
                headers["Reply-To"] = Address(addr_spec=normalize_address(reply_to, "reply-to"))
            headers["MIME-Version"] = "1.0"
            for name, value in extra_headers.items():
                if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
                    raise AddressProblem(f"extra header name {name!r} is not a valid header name")
                if name.lower() in _MANAGED_HEADERS:
                    raise AddressProblem(f"extra header {name!r} is set by the composer (or SES) and cannot be added")
                if not isinstance(value, str):
                    raise AddressProblem(f"extra header {name!r} must be a string")
                _check_header_text(value, f"extra header {name!r}")
                headers[name] = value
            head = b"".join(headers.policy.fold_binary(name, value) for name, value in headers.items())
            if list_id is not None:
                head += b"List-Id: " + list_id_value(list_id) + b"\r\n"
        except AddressProblem:
            raise
        except (ValueError, TypeError) as exc:  # the stdlib's own header checks
            raise AddressProblem(f"header cannot be encoded: {exc}") from exc
        if any(len(line) > _MAX_LINE for line in head.split(b"\r\n")):
            raise AddressProblem("a header line would exceed 998 characters")
        boundary = f"=_c{campaign_id}_{secrets.token_hex(8)}".encode("ascii")  # "=_" never occurs in QP
        part_head = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        return cls(
            head=head + b"To: ",
            after_to=b"\r\nSubject: ",
            after_subject=b"\r\nList-Unsubscribe: <",
            after_unsubscribe=(
                b">\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n\r\n'
                b"--" + boundary + b"\r\n" + part_head % b"plain"
            ),
            between_parts=b"\r\n--" + boundary + b"\r\n" + part_head % b"html",
            tail=b"\r\n--" + boundary + b"--\r\n",
        )
