"""Verify Amazon SNS HTTP(S) messages (SignatureVersion 1 and 2) and confirm subscriptions safely.

No maintained Python library verifies SignatureVersion 2, so this is a port of the AWS JS/PHP validators onto
`cryptography`. Everything fails closed with SnsVerificationError: a message is trusted only when its topic is
allowed, its certificate URL is an SNS one, the certificate fetched from it is exactly one PEM certificate, its
UnsubscribeURL (when present) is on the topic's SNS host, its Timestamp is not in the future beyond the allowed
clock skew, and its signature checks out against that certificate.

The certificate's validity dates are not checked against the clock: SNS keeps signing with a certificate until it
publishes the next one at a new URL, and what makes a certificate trustworthy here is the URL it came from (https
on an SNS host, fetched without redirects), not its dates. Nor is a message's age limited: a replayed old message
is a duplicate by its MessageId, and SNS's retries of a message it could not deliver arrive late on purpose.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from campaigns.errors import SnsVerificationError

log = logging.getLogger(__name__)

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

_COMMON_KEYS = ("Type", "MessageId", "TopicArn", "Message", "Timestamp", "SignatureVersion", "Signature",
                "SigningCertURL")
# The keys each message type must carry; the signed ones below are a subset, in the order AWS signs them.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: _COMMON_KEYS,
    SUBSCRIPTION_CONFIRMATION: (*_COMMON_KEYS, "SubscribeURL", "Token"),
    UNSUBSCRIBE_CONFIRMATION: (*_COMMON_KEYS, "SubscribeURL", "Token"),
}
SIGNED_KEYS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    UNSUBSCRIBE_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
# SignatureVersion 1 is SHA1 because AWS signs it so; topics can be switched to 2 (SHA256) in SNS.
HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# Whole-URL match (not urlsplit + host compare): parsers disagree on userinfo, backslashes and ports, and an S3
# bucket named "sns.us-east-1.amazonaws.com" must not pass (novu #11056).
_CERT_URL = re.compile(r"https://sns\.[a-z0-9-]{3,}\.amazonaws\.com(?:\.cn)?/SimpleNotificationService-[A-Za-z0-9]+\.pem")
_REGION = re.compile(r"[a-z0-9-]{3,}")
# Exactly one PEM certificate, whitespace around it aside. The base64 body cannot hold a dash, so a second BEGIN
# line (or anything else) cannot hide inside it; cryptography's loader alone would skip text around the first one.
_ONE_PEM_CERTIFICATE = re.compile(rb"\s*-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*")
# Lambda's SNS records spell the unsigned URL keys so; SNS's HTTP deliveries use the URL casing.
_LAMBDA_KEYS = {"SigningCertUrl": "SigningCertURL", "SubscribeUrl": "SubscribeURL", "UnsubscribeUrl": "UnsubscribeURL"}
MAX_CERT_BYTES = 64 * 1024
FETCH_TIMEOUT = 5.0
DEFAULT_MAX_CLOCK_SKEW = 300.0


def parse_envelope(body: bytes) -> dict[str, Any]:
    """The SNS JSON envelope from a raw body, with every key its Type requires (all strings)."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SnsVerificationError("body is not JSON") from exc
    if not isinstance(message, dict):
        raise SnsVerificationError("body is not a JSON object")
    for lambda_key, key in _LAMBDA_KEYS.items():
        if lambda_key in message and key not in message:
            message[key] = message.pop(lambda_key)
    kind = message.get("Type")
    if kind not in REQUIRED_KEYS:
        raise SnsVerificationError(f"unsupported message Type {str(kind)[:40]!r}")
    missing = [key for key in REQUIRED_KEYS[kind] if not isinstance(message.get(key), str)]
    if missing:
        raise SnsVerificationError(f"{kind} lacks {', '.join(missing)}")
    if "Subject" in message and not isinstance(message["Subject"], str | None):
        raise SnsVerificationError("Subject is not a string")
    return message


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The exact bytes AWS signs: "Key\\nValue\\n" for the type's keys in order, optional ones only when present."""
    kind = message.get("Type")
    if kind not in SIGNED_KEYS:
        raise SnsVerificationError(f"unsupported message Type {str(kind)[:40]!r}")
    parts: list[str] = []
    for key in SIGNED_KEYS[kind]:
        value = message.get(key)
        if value is None:
            if key == "Subject":  # the only optional signed key; an absent Subject is simply not signed
                continue
            raise SnsVerificationError(f"{kind} lacks {key}")
        parts.append(f"{key}\n{value}\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape (\ud83c) decodes but cannot have been signed
        raise SnsVerificationError(f"{kind} has text that is not valid Unicode") from exc


def check_cert_url(url: str) -> None:
    """Refuse any SigningCertURL that is not https://sns.<region>.amazonaws.com(.cn)/SimpleNotificationService-*.pem."""
    if not isinstance(url, str) or not _CERT_URL.fullmatch(url):
        raise SnsVerificationError(f"SigningCertURL is not an SNS certificate URL: {str(url)[:200]!r}")


def topic_region(topic_arn: str) -> str:
    """The region of an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)."""
    parts = topic_arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "sns" or not _REGION.fullmatch(parts[3]):
        raise SnsVerificationError(f"not an SNS topic ARN: {topic_arn[:200]!r}")
    return parts[3]


def _check_topic_host_url(url: Any, region_from_topic: str, field: str) -> tuple[str, str, str]:
    """(path, query, fragment) of an https URL on the topic's SNS host; SnsVerificationError naming `field` else."""
    if not isinstance(url, str) or not _REGION.fullmatch(region_from_topic or ""):
        raise SnsVerificationError(f"{field} or region missing")
    if any(ch in url for ch in "\\@ \t\r\n"):
        # Userinfo and backslashes are where URL parsers disagree about the host; SNS never sends them.
        raise SnsVerificationError(f"{field} has forbidden characters: {url[:200]!r}")
    parts = urlsplit(url)
    allowed_hosts = {f"sns.{region_from_topic}.amazonaws.com", f"sns.{region_from_topic}.amazonaws.com.cn"}
    if parts.scheme != "https" or parts.netloc not in allowed_hosts:
        raise SnsVerificationError(f"{field} is not https on the topic's SNS host: {url[:200]!r}")
    return parts.path, parts.query, parts.fragment


def check_subscribe_url(url: str, region_from_topic: str) -> None:
    """Refuse a SubscribeURL that is not an SNS ConfirmSubscription call in the topic's region (no SSRF)."""
    path, query, fragment = _check_topic_host_url(url, region_from_topic, "SubscribeURL")
    if path not in ("", "/") or fragment:
        raise SnsVerificationError(f"SubscribeURL has an unexpected path: {url[:200]!r}")
    if parse_qs(query).get("Action") != ["ConfirmSubscription"]:
        raise SnsVerificationError("SubscribeURL is not a ConfirmSubscription call")


def check_unsubscribe_url(url: str, region_from_topic: str) -> None:
    """Refuse an UnsubscribeURL that is not https on the topic's SNS host, the same host rule as SubscribeURL.

    The product never follows it, but a person reading a logged or stored message might: a genuine one only ever
    points at SNS, so any other URL marks the message as not from SNS.
    """
    _check_topic_host_url(url, region_from_topic, "UnsubscribeURL")


def check_timestamp(value: str, now: datetime, max_skew: timedelta) -> None:
    """Refuse a Timestamp that is not an ISO 8601 time or lies more than `max_skew` after `now`."""
    try:
        sent = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise SnsVerificationError(f"Timestamp is not an ISO 8601 time: {str(value)[:40]!r}") from exc
    sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
    if sent - now > max_skew:
        raise SnsVerificationError(f"Timestamp {value} is more than {max_skew.total_seconds():g} s in the future")


def fetch_certificate(url: str) -> bytes:
    """GET a signing certificate (no redirects: the URL was checked, where it leads was not)."""
    response = requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False)
    response.raise_for_status()
    if len(response.content) > MAX_CERT_BYTES:
        raise ValueError(f"certificate at {url} is larger than {MAX_CERT_BYTES} bytes")
    return response.content


class SnsVerifier:
    """Checks topic, signature version, certificate URL and RSA signature of SNS messages; caches certificates."""

    def __init__(self, allowed_topic_arns: Sequence[str], *, test_cert_pem: str | None = None,
                 fetch: Callable[[str], bytes] | None = None, cache_size: int = 32,
                 max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.allowed_topic_arns = frozenset(allowed_topic_arns)
        self.cache_size = max(cache_size, 1)
        self.max_clock_skew = timedelta(seconds=max_clock_skew)
        self._clock = clock
        self._cache: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._lock = threading.Lock()
        if test_cert_pem:
            log.warning(
                "SNS_TEST_CERT_PEM is set: SNS signatures are checked against the LOCAL certificate %s instead of "
                "the one AWS publishes. This is for tests only; never set it in production.", test_cert_pem)
            pem_path = Path(test_cert_pem)
            self._fetch: Callable[[str], bytes] = lambda _url: pem_path.read_bytes()
        else:
            self._fetch = fetch or fetch_certificate
        if not self.allowed_topic_arns:
            log.warning("no SNS topic ARNs are allowed (SNS_TOPIC_ARNS is empty): every SNS message will be refused")

    def verify(self, message: Mapping[str, Any]) -> None:
        """Return only if the message is authentic and from an allowed topic; raise SnsVerificationError otherwise."""
        topic = message.get("TopicArn")
        if not isinstance(topic, str) or topic not in self.allowed_topic_arns:
            raise SnsVerificationError(f"topic not allowed: {str(topic)[:200]!r}")
        version = message.get("SignatureVersion")
        if version not in HASHES:
            raise SnsVerificationError(f"unsupported SignatureVersion {str(version)[:10]!r}")
        url = message.get("SigningCertURL")
        check_cert_url(url)
        if "UnsubscribeURL" in message:
            check_unsubscribe_url(message["UnsubscribeURL"], topic_region(topic))
        check_timestamp(message.get("Timestamp"), self._clock(), self.max_clock_skew)
        to_sign = string_to_sign(message)
        try:
            signature = base64.b64decode(message.get("Signature") or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SnsVerificationError("Signature is not base64") from exc
        key = self._public_key(url)
        try:
            key.verify(signature, to_sign, padding.PKCS1v15(), HASHES[version]())
        except InvalidSignature as exc:
            raise SnsVerificationError("signature does not match") from exc

    def _public_key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            key = self._cache.get(url)
            if key is not None:
                self._cache.move_to_end(url)
                return key
        # Fetched outside the lock so one slow fetch does not stall every request; a failure raises and is
        # never cached (caching "no certificate" would refuse every message until restart).
        try:
            pem = self._fetch(url)
        except (requests.RequestException, OSError, ValueError) as exc:
            raise SnsVerificationError(f"could not fetch signing certificate {url}: {type(exc).__name__}") from exc
        if not _ONE_PEM_CERTIFICATE.fullmatch(pem):
            raise SnsVerificationError(
                f"signing certificate at {url} is not a PEM certificate alone (one, nothing around it)")
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
        except ValueError as exc:
            raise SnsVerificationError(f"signing certificate at {url} is not a PEM certificate") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise SnsVerificationError(f"signing certificate at {url} has no RSA key")
        with self._lock:
            self._cache[url] = key
            self._cache.move_to_end(url)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return key


def warn_test_confirm_url(test_confirm_url: str | None) -> None:
    """Log loudly, once at start, that SubscribeURLs go to a local stand-in of SNS (SNS_TEST_CONFIRM_URL)."""
    if test_confirm_url:
        log.warning(
            "SNS_TEST_CONFIRM_URL is set: subscription confirmations are sent to the LOCAL %s instead of AWS (after "
            "the usual signature and SubscribeURL checks). This is for the dev stack only; never set it in "
            "production.", test_confirm_url)


def confirm_subscription(message: Mapping[str, Any], *, verifier: SnsVerifier,
                         get: Callable[..., Any] = requests.get, test_confirm_url: str | None = None) -> int:
    """Verify a SubscriptionConfirmation, check its SubscribeURL, then GET it; returns the HTTP status.

    With `test_confirm_url` (SNS_TEST_CONFIRM_URL, dev stack only) every check runs unchanged and only the GET goes
    to that local URL, carrying the SubscribeURL's query, instead of to AWS.
    """
    if message.get("Type") != SUBSCRIPTION_CONFIRMATION:
        raise SnsVerificationError("not a SubscriptionConfirmation")
    verifier.verify(message)
    url = message.get("SubscribeURL")
    check_subscribe_url(url, topic_region(message["TopicArn"]))
    if test_confirm_url:
        log.warning("confirming SNS subscription to %s through SNS_TEST_CONFIRM_URL %s, not AWS",
                    message["TopicArn"], test_confirm_url)
        url = f"{test_confirm_url}?{urlsplit(url).query}"
    response = get(url, timeout=5, allow_redirects=False)
    response.raise_for_status()
    log.info("confirmed SNS subscription to %s", message["TopicArn"])
    return response.status_code
