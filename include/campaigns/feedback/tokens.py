"""Signed tracking tokens shared by the send path (which builds the URLs) and the tracking service (which checks them).

Format (version 1), chosen to be compact in URLs and cheap enough to sign several per email:

    token  = base64url_nopad( header || varint(campaign_id) || varint(recipient_id) [|| varint(link_id)] || tag )
    header = 0x10 | kind code        (high nibble: format version 1; low nibble: open=1, click=2, unsubscribe=3,
                                      view=4)
    varint = unsigned LEB128, shortest form, 0 <= id < 2**63 (ids are PostgreSQL bigint/integer keys)
    tag    = HMAC-SHA256(key, b"campaigns/token/v1/" + kind + b"\\0" + header || ids)[:16]   (128 bits)

A typical click token is about 32 characters. The kind is inside the MAC twice over (as the domain string and as the
header byte), so an open token can never be replayed as an unsubscribe, click or view ("view in browser") token,
nor the other way round. Key rotation: the first key
signs, every key verifies, so an old key can stay in the list until the mail that carries it no longer matters.
Tokens do not expire: an unsubscribe link must keep working for as long as the mail sits in an inbox.

HMAC is computed by hand from precomputed inner/outer SHA-256 states (RFC 2104, identical output to `hmac.new`)
because that is about twice as fast as `hmac.digest` and signing happens ~7 times per email.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from campaigns.errors import InvalidToken

OPEN = "open"
CLICK = "click"
UNSUBSCRIBE = "unsubscribe"
VIEW = "view"
KINDS = (OPEN, CLICK, UNSUBSCRIBE, VIEW)

_VERSION = 1
_HEADERS = {OPEN: (_VERSION << 4) | 1, CLICK: (_VERSION << 4) | 2, UNSUBSCRIBE: (_VERSION << 4) | 3,
            VIEW: (_VERSION << 4) | 4}
_ID_COUNT = {OPEN: 2, CLICK: 3, UNSUBSCRIBE: 2, VIEW: 2}
_TAG_BYTES = 16
_MAX_ID = (1 << 63) - 1
# header + 2 one-byte ids + tag .. header + 3 ten-byte ids + tag, as base64url without padding
_MIN_CHARS = -(-(1 + 2 + _TAG_BYTES) * 4 // 3)
_MAX_CHARS = -(-(1 + 3 * 10 + _TAG_BYTES) * 4 // 3)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_BLOCK = 64  # SHA-256 block size, for HMAC's key padding


@dataclass(frozen=True, slots=True)
class TokenPayload:
    """What a verified token says: which campaign, which ledger row, and for clicks which link."""

    kind: str
    campaign_id: int
    recipient_id: int
    link_id: int | None = None


_SMALL = tuple(bytes((i,)) for i in range(0x80))
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _check_id(name: str, value: int) -> int:
    # bool is an int subclass; a True campaign id is always a bug upstream
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise ValueError(f"{name} must be an integer between 0 and 2**63-1, got {value!r}")
    return value


def _message_ids(campaign_id: int, recipient_id: int) -> bytes:
    """The id bytes every token of one email starts with."""
    return _varint(_check_id("campaign_id", campaign_id)) + _varint(_check_id("recipient_id", recipient_id))


def _read_varints(data: bytes, count: int) -> list[int]:
    """Decode exactly `count` shortest-form varints filling `data`; ValueError otherwise."""
    values: list[int] = []
    pos, end = 0, len(data)
    for _ in range(count):
        value = shift = 0
        while True:
            if pos >= end or shift > 56:
                raise ValueError("truncated or oversized id")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                # a zero final byte after continuation bytes is a non-shortest encoding: reject so that
                # every payload has exactly one token string per key
                if shift and not byte:
                    raise ValueError("non-canonical id encoding")
                break
            shift += 7
        if value > _MAX_ID:
            raise ValueError("id out of range")
        values.append(value)
    if pos != end:
        raise ValueError("trailing bytes")
    return values


class _Signer:
    """HMAC-SHA256 under one key, with the per-kind domain string already absorbed into the inner hash."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        inner_pad = bytes(b ^ 0x36 for b in key)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._inner = {}
        for kind in KINDS:
            inner = hashlib.sha256(inner_pad)
            inner.update(b"campaigns/token/v1/" + kind.encode("ascii") + b"\0")
            self._inner[kind] = inner

    def tag(self, kind: str, body: bytes) -> bytes:
        inner = self._inner[kind].copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_TAG_BYTES]


class TokenCodec:
    """Signs and verifies open, click, unsubscribe and view tokens; the first key signs, all keys verify."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        if isinstance(secret_keys, str | bytes):
            # a bare string would be taken as a sequence of one-character keys
            raise TypeError("secret_keys must be a sequence of keys, not a single string")
        keys = list(secret_keys)
        if not keys:
            raise ValueError("TokenCodec needs at least one secret key (TRACKING_SECRET_KEYS is empty)")
        if any(not isinstance(key, str) or not key for key in keys):
            raise ValueError("every tracking secret key must be a non-empty string")
        self._signers = tuple(_Signer(key.encode("utf-8")) for key in keys)
        self._signer = self._signers[0]

    def __repr__(self) -> str:
        return f"TokenCodec(<{len(self._signers)} keys>)"

    def _encode(self, kind: str, ids: bytes) -> str:
        body = _SMALL[_HEADERS[kind]] + ids
        raw = body + self._signer.tag(kind, body)
        return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")

    def open_token(self, campaign_id: int, recipient_id: int) -> str:
        """The token of the open pixel of one email."""
        ids = _message_ids(campaign_id, recipient_id)
        return self._encode(OPEN, ids)

    def click_token(self, campaign_id: int, recipient_id: int, link_id: int) -> str:
        """The token of one tracked link (`link_id` indexes the campaign's links) in one email."""
        ids = _message_ids(campaign_id, recipient_id) + _varint(_check_id("link_id", link_id))
        return self._encode(CLICK, ids)

    def unsubscribe_token(self, campaign_id: int, recipient_id: int) -> str:
        """The token of the unsubscribe URL (body link and List-Unsubscribe) of one email."""
        ids = _message_ids(campaign_id, recipient_id)
        return self._encode(UNSUBSCRIBE, ids)

    def view_token(self, campaign_id: int, recipient_id: int) -> str:
        """The token of the "view in browser" URL of one email (the tracking service shows that recipient's copy)."""
        ids = _message_ids(campaign_id, recipient_id)
        return self._encode(VIEW, ids)

    def message_tokens(self, campaign_id: int, recipient_id: int, link_count: int) -> tuple[str, str, list[str]]:
        """(open, unsubscribe, [click for link 0..link_count-1]) of one email, sharing the id encoding."""
        ids = _message_ids(campaign_id, recipient_id)
        encode = self._encode
        # the click loop is the hot spot of composing an email: HMAC inlined, names bound locally
        inner, outer = self._signer._inner[CLICK], self._signer._outer
        head = _SMALL[_HEADERS[CLICK]] + ids
        b64, urlsafe = binascii.b2a_base64, _TO_URLSAFE
        clicks = []
        for link_id in range(link_count):
            body = head + _varint(link_id)
            mac = inner.copy()
            mac.update(body)
            tag = outer.copy()
            tag.update(mac.digest())
            clicks.append(b64(body + tag.digest()[:_TAG_BYTES], newline=False).translate(urlsafe).rstrip(b"=")
                          .decode("ascii"))
        return encode(OPEN, ids), encode(UNSUBSCRIBE, ids), clicks

    def decode(self, kind: str, token: str) -> TokenPayload:
        """Verify `token` as a token of `kind` and return its payload; InvalidToken for anything else."""
        if not isinstance(kind, str) or kind not in _HEADERS:
            raise InvalidToken(f"unknown token kind {kind!r}")
        # Cheap shape checks first, so huge or hostile input costs nothing and never reaches a decoder.
        if not isinstance(token, str) or not _MIN_CHARS <= len(token) <= _MAX_CHARS or len(token) % 4 == 1:
            raise InvalidToken("malformed token")
        if not token.isascii() or _TOKEN_CHARS.fullmatch(token) is None:
            raise InvalidToken("malformed token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("malformed token") from exc
        # Unused low bits of the last character would give one payload many spellings; allow only one.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            raise InvalidToken("malformed token")
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not body or body[0] != _HEADERS[kind]:
            raise InvalidToken(f"not a {kind} token")
        if not any(hmac.compare_digest(signer.tag(kind, body), tag) for signer in self._signers):
            raise InvalidToken("bad token signature")
        try:
            ids = _read_varints(body[1:], _ID_COUNT[kind])
        except ValueError as exc:  # only reachable with a key that signed a malformed body
            raise InvalidToken("malformed token payload") from exc
        return TokenPayload(kind, ids[0], ids[1], ids[2] if kind == CLICK else None)
