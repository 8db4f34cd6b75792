"""Sign SNS messages the way SNS does, with a self-signed test certificate (shared by the SNS and webhook tests)."""

from __future__ import annotations

import base64
import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from campaigns.feedback.sns import string_to_sign

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
SUBSCRIBE_URL = f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_cert(key: rsa.RSAPrivateKey) -> bytes:
    """A PEM certificate for `key`, standing in for the one at SigningCertURL."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def sign(message: dict, key: rsa.RSAPrivateKey) -> dict:
    """Sign `message` the way SNS does for its SignatureVersion (1: SHA1, 2: SHA256)."""
    algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()  # noqa: S303 - SNS v1
    signature = key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def signed_message(key: rsa.RSAPrivateKey, *, kind: str, version: str, message_id: str, body: str,
                   **fields) -> dict:
    """A signed SNS envelope of type `kind`; confirmations carry SubscribeURL and Token; `fields` override."""
    message = {
        "Type": kind,
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": body,
        "Timestamp": "2026-01-02T03:04:05.678Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
    }
    if kind != "Notification":
        message.update(Message="You have chosen to subscribe...", SubscribeURL=SUBSCRIBE_URL, Token="abc")
    message.update(fields)
    return sign(message, key)
