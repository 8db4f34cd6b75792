"""SNS message verification: v1/v2 signatures, certificate and subscribe URL checks, topic allow-list, cert cache."""

from __future__ import annotations

import datetime as dt
import json
import logging
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from campaigns.feedback.sns import (
    SnsVerificationError,
    SnsVerifier,
    check_cert_url,
    check_subscribe_url,
    confirm_subscription,
    parse_envelope,
    string_to_sign,
)
from tests.sns_signing import CERT_URL, SUBSCRIBE_URL, TOPIC, new_key, self_signed_cert, signed_message


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def cert_pem(key) -> bytes:
    return self_signed_cert(key)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


def make_message(key, kind: str = "Notification", version: str = "2", **fields) -> dict:
    body = json.dumps({"eventType": "Delivery", "mail": {"messageId": "abc"}})
    return signed_message(key, kind=kind, version=version, message_id="22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                          body=body, **fields)


@pytest.fixture
def fetch(cert_pem):
    return mock.Mock(return_value=cert_pem)


@pytest.fixture
def verifier(fetch):
    return SnsVerifier([TOPIC], fetch=fetch)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", ["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_good_signature_verifies(verifier, key, version, kind):
    verifier.verify(make_message(key, kind, version))


@pytest.mark.parametrize("version", ["1", "2"])
def test_notification_with_subject_verifies(verifier, key, version):
    verifier.verify(make_message(key, version=version, Subject="Amazon SES Email Event Notification"))


def test_string_to_sign_is_exact_per_type():
    notification = {"Type": "Notification", "MessageId": "m", "TopicArn": "t", "Message": "x", "Timestamp": "ts",
                    "Subject": "s", "Token": "ignored", "SubscribeURL": "ignored"}
    assert string_to_sign(notification) == (b"Message\nx\nMessageId\nm\nSubject\ns\nTimestamp\nts\nTopicArn\nt\n"
                                            b"Type\nNotification\n")
    del notification["Subject"]
    assert b"Subject" not in string_to_sign(notification)
    confirmation = {"Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "t", "Message": "x",
                    "Timestamp": "ts", "Token": "k", "SubscribeURL": "u", "Subject": "not signed"}
    assert string_to_sign(confirmation) == (b"Message\nx\nMessageId\nm\nSubscribeURL\nu\nTimestamp\nts\nToken\nk\n"
                                            b"TopicArn\nt\nType\nSubscriptionConfirmation\n")


@pytest.mark.parametrize("version", ["1", "2"])
def test_signature_from_another_key_is_refused(verifier, other_key, version):
    with pytest.raises(SnsVerificationError, match="signature"):
        verifier.verify(make_message(other_key, version=version))


@pytest.mark.parametrize("change", [
    {"Message": json.dumps({"eventType": "Bounce"})},
    {"MessageId": "another-id"},
    {"Timestamp": "2030-01-01T00:00:00.000Z"},
    {"Subject": "added after signing"},
    {"Type": "SubscriptionConfirmation", "SubscribeURL": SUBSCRIBE_URL, "Token": "t"},
])
def test_message_altered_after_signing_is_refused(verifier, key, change):
    message = {**make_message(key), **change}
    with pytest.raises(SnsVerificationError):
        verifier.verify(message)


def test_v1_signature_presented_as_v2_is_refused(verifier, key):
    message = {**make_message(key, version="1"), "SignatureVersion": "2"}
    with pytest.raises(SnsVerificationError, match="signature"):
        verifier.verify(message)


@pytest.mark.parametrize("version", ["0", "3", "", None])
def test_unknown_signature_version_is_refused(verifier, key, version):
    message = {**make_message(key), "SignatureVersion": version}
    with pytest.raises(SnsVerificationError, match="SignatureVersion"):
        verifier.verify(message)


def test_garbage_signature_is_refused(verifier, key):
    with pytest.raises(SnsVerificationError, match="base64"):
        verifier.verify({**make_message(key), "Signature": "not base64!!"})


BAD_CERT_URLS = [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",  # not https
    "https://example.com/SimpleNotificationService-abc.pem",  # not AWS
    "https://sns.us-east-1.amazonaws.com.s3.amazonaws.com/SimpleNotificationService-abc.pem",  # S3 bucket
    "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",  # S3 path
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",  # lookalike
    "https://snsXus-east-1.amazonaws.com/SimpleNotificationService-abc.pem",  # unescaped dot
    "https://sns.us-east-1.amazonawsXcom/SimpleNotificationService-abc.pem",
    "https://evil.com@sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",  # userinfo
    "https://sns.us-east-1.amazonaws.com@evil.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc.pem",  # port
    "https://sns.us-east-1.amazonaws.com/evil/SimpleNotificationService-abc.pem",  # path
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1",  # query
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem\n",
    "https://sns.us-east-1.amazonaws.com/other.pem",
    "https://sns..amazonaws.com/SimpleNotificationService-abc.pem",
    "",
]


@pytest.mark.parametrize("url", BAD_CERT_URLS)
def test_bad_cert_url_is_refused_without_fetching(verifier, fetch, key, url):
    with pytest.raises(SnsVerificationError, match="SigningCertURL"):
        check_cert_url(url)
    with pytest.raises(SnsVerificationError, match="SigningCertURL"):
        verifier.verify(make_message(key, SigningCertURL=url))  # signed with the bad URL in it: still refused
    fetch.assert_not_called()


@pytest.mark.parametrize("url", [CERT_URL, "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-a1.pem",
                                 "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-a1.pem"])
def test_sns_cert_urls_are_accepted(url):
    check_cert_url(url)


def test_topic_not_allowed_is_refused_without_fetching(verifier, fetch, key):
    with pytest.raises(SnsVerificationError, match="topic not allowed"):
        verifier.verify(make_message(key, TopicArn="arn:aws:sns:us-east-1:999999999999:other"))
    fetch.assert_not_called()


def test_empty_allow_list_refuses_everything(fetch, key):
    with pytest.raises(SnsVerificationError, match="topic not allowed"):
        SnsVerifier([], fetch=fetch).verify(make_message(key))


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"str"', b"\xff\xfe", b"{}", b'{"Type": "Other"}',
                                  b'{"Type": "Notification", "MessageId": "m"}',
                                  b'{"Type": "SubscriptionConfirmation", "MessageId": "m", "TopicArn": "t", '
                                  b'"Message": "x", "Timestamp": "t", "SignatureVersion": "2", "Signature": "s", '
                                  b'"SigningCertURL": "u"}'])
def test_malformed_envelope_is_refused(body):
    with pytest.raises(SnsVerificationError):
        parse_envelope(body)


def test_envelope_parses_text_plain_json(key):
    message = make_message(key)
    assert parse_envelope(json.dumps(message).encode()) == message


def test_certificate_is_cached_by_url(verifier, fetch, key):
    verifier.verify(make_message(key))
    verifier.verify(make_message(key, version="1", MessageId="second"))
    assert fetch.call_count == 1


def test_cache_evicts_least_recent(fetch, key):
    small = SnsVerifier([TOPIC], fetch=fetch, cache_size=1)
    other = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-other.pem"
    small.verify(make_message(key))
    small.verify(make_message(key, SigningCertURL=other))
    small.verify(make_message(key))
    assert fetch.call_count == 3


def test_failed_fetch_is_not_cached(cert_pem, key):
    fetch = mock.Mock(side_effect=[OSError("connection reset"), cert_pem])
    verifier = SnsVerifier([TOPIC], fetch=fetch)
    with pytest.raises(SnsVerificationError, match="could not fetch"):
        verifier.verify(make_message(key))
    verifier.verify(make_message(key))  # the next message fetches again and succeeds
    assert fetch.call_count == 2


def test_non_certificate_is_refused_and_not_cached(cert_pem, key):
    fetch = mock.Mock(side_effect=[b"<html>error</html>", cert_pem])
    verifier = SnsVerifier([TOPIC], fetch=fetch)
    with pytest.raises(SnsVerificationError, match="not a PEM"):
        verifier.verify(make_message(key))
    verifier.verify(make_message(key))
    assert fetch.call_count == 2


def test_test_cert_pem_replaces_only_the_fetch(tmp_path, cert_pem, key, caplog):
    pem = tmp_path / "sns-test.pem"
    pem.write_bytes(cert_pem)
    with caplog.at_level(logging.WARNING, logger="campaigns.feedback.sns"):
        verifier = SnsVerifier([TOPIC], test_cert_pem=str(pem))
    assert "SNS_TEST_CERT_PEM" in caplog.text
    verifier.verify(make_message(key))
    with pytest.raises(SnsVerificationError, match="SigningCertURL"):
        verifier.verify(make_message(key, SigningCertURL="https://evil.com/SimpleNotificationService-a.pem"))
    with pytest.raises(SnsVerificationError, match="topic"):
        verifier.verify(make_message(key, TopicArn="arn:aws:sns:us-east-1:1:other"))


def test_no_warning_without_test_cert(fetch, caplog):
    with caplog.at_level(logging.WARNING, logger="campaigns.feedback.sns"):
        SnsVerifier([TOPIC], fetch=fetch)
    assert "SNS_TEST_CERT_PEM" not in caplog.text


@pytest.mark.parametrize("url", [
    SUBSCRIBE_URL,
    f"https://sns.us-east-1.amazonaws.com.cn/?Action=ConfirmSubscription&Token=x&TopicArn={TOPIC}",
])
def test_subscribe_url_on_topic_region_host_is_accepted(url):
    check_subscribe_url(url, "us-east-1")


@pytest.mark.parametrize("url", [
    "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",  # other region than the topic
    "https://169.254.169.254/latest/meta-data/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com@evil.com/?Action=ConfirmSubscription",
    "https://evil.com\\@sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com:8080/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com/internal?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com/?Action=Publish&Message=x",
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Action=Publish",
])
def test_subscribe_url_elsewhere_is_refused(url):
    with pytest.raises(SnsVerificationError, match="SubscribeURL"):
        check_subscribe_url(url, "us-east-1")


def test_confirm_subscription_gets_url_after_verification(verifier, key):
    get = mock.Mock(return_value=mock.Mock(status_code=200))
    assert confirm_subscription(make_message(key, "SubscriptionConfirmation"), verifier=verifier, get=get) == 200
    get.assert_called_once_with(SUBSCRIBE_URL, timeout=5, allow_redirects=False)


@pytest.mark.parametrize("change", [
    {"SubscribeURL": "https://169.254.169.254/latest/meta-data/?Action=ConfirmSubscription"},
    {"SubscribeURL": "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription"},
    {"TopicArn": "arn:aws:sns:us-east-1:999999999999:other"},
])
def test_confirm_subscription_never_fetches_a_bad_url(verifier, key, change):
    get = mock.Mock()
    with pytest.raises(SnsVerificationError):  # signed with the bad value: verification passes, the URL check not
        confirm_subscription(make_message(key, "SubscriptionConfirmation", **change), verifier=verifier, get=get)
    get.assert_not_called()


def test_confirm_subscription_never_fetches_unverified(verifier, key, other_key):
    get = mock.Mock()
    with pytest.raises(SnsVerificationError, match="signature"):
        confirm_subscription(make_message(other_key, "SubscriptionConfirmation"), verifier=verifier, get=get)
    message = {**make_message(key, "SubscriptionConfirmation"), "SubscribeURL": SUBSCRIBE_URL + "&x=1"}
    with pytest.raises(SnsVerificationError, match="signature"):
        confirm_subscription(message, verifier=verifier, get=get)
    get.assert_not_called()


# --- the certificate body, UnsubscribeURL, a Timestamp in the future, Lambda's key casing -------------------------

UNSUBSCRIBE_URL = f"https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:5e1a0c7f"


@pytest.mark.parametrize("around", [
    (b"<xml><value>\n", b"\n</value></xml>"),  # a body wrapped in a document
    (b"", b"\nanything after it"),
    (b"Certificate:\n    Data: ...\n", b""),  # openssl x509 -text output before the PEM
], ids=["wrapped", "text-after", "text-before"])
def test_certificate_body_with_anything_around_the_pem_is_refused_and_not_cached(cert_pem, key, around):
    before, after = around
    fetch = mock.Mock(side_effect=[before + cert_pem + after, cert_pem])
    verifier = SnsVerifier([TOPIC], fetch=fetch)
    with pytest.raises(SnsVerificationError, match="PEM certificate alone"):
        verifier.verify(make_message(key))
    verifier.verify(make_message(key))
    assert fetch.call_count == 2


def test_certificate_body_of_two_certificates_is_refused(cert_pem, other_key, key):
    fetch = mock.Mock(return_value=cert_pem + self_signed_cert(other_key))
    with pytest.raises(SnsVerificationError, match="PEM certificate alone"):
        SnsVerifier([TOPIC], fetch=fetch).verify(make_message(key))


def test_certificate_body_with_whitespace_around_it_verifies(cert_pem, key):
    fetch = mock.Mock(return_value=b"\r\n  " + cert_pem.replace(b"\n", b"\r\n") + b"\n\n\t")
    SnsVerifier([TOPIC], fetch=fetch).verify(make_message(key))


@pytest.mark.parametrize("kind", ["Notification", "UnsubscribeConfirmation"])
def test_unsubscribe_url_on_the_topic_host_verifies(verifier, key, kind):
    verifier.verify(make_message(key, kind, UnsubscribeURL=UNSUBSCRIBE_URL))


@pytest.mark.parametrize("url", [
    UNSUBSCRIBE_URL.replace("https:", "http:"),
    UNSUBSCRIBE_URL.replace("us-east-1", "eu-west-1"),  # an SNS host, but not the topic's
    "https://example.com/?Action=Unsubscribe",
    "https://sns.us-east-1.amazonaws.com@evil.com/?Action=Unsubscribe",
    "https://sns.us-east-1.amazonaws.com.evil.com/?Action=Unsubscribe",
    "https://sns.us-east-1.amazonaws.com:8443/?Action=Unsubscribe",
    "",
    None,
])
def test_unsubscribe_url_elsewhere_is_refused_without_fetching(verifier, fetch, key, url):
    # UnsubscribeURL is not signed, so a forger can put anything there on a genuine message.
    with pytest.raises(SnsVerificationError, match="UnsubscribeURL"):
        verifier.verify({**make_message(key), "UnsubscribeURL": url})
    fetch.assert_not_called()


def clock_at(when: str):
    return lambda: dt.datetime.fromisoformat(when)


@pytest.mark.parametrize(("skew", "now", "verifies"), [
    (300, "2026-01-02T02:59:06Z", True),  # Timestamp 03:04:05.678Z is 4 min 59.678 s ahead
    (300, "2026-01-02T02:59:05Z", False),  # 5 min 0.678 s ahead
    (60, "2026-01-02T03:03:00Z", False),
    (300, "2031-06-01T00:00:00Z", True),  # years old: a duplicate by MessageId, not a forgery by age
])
def test_timestamp_in_the_future_beyond_the_skew_is_refused(cert_pem, key, skew, now, verifies):
    fetch = mock.Mock(return_value=cert_pem)
    verifier = SnsVerifier([TOPIC], fetch=fetch, max_clock_skew=skew, clock=clock_at(now))
    if verifies:
        verifier.verify(make_message(key))
        return
    with pytest.raises(SnsVerificationError, match="in the future"):
        verifier.verify(make_message(key))
    fetch.assert_not_called()


@pytest.mark.parametrize("timestamp", ["January 5 2026", "", "2026-13-01T00:00:00Z"])
def test_timestamp_that_is_no_time_is_refused(verifier, key, timestamp):
    with pytest.raises(SnsVerificationError, match="Timestamp"):
        verifier.verify(make_message(key, Timestamp=timestamp))


def test_earlier_timestamp_altered_after_signing_is_refused(verifier, key):
    with pytest.raises(SnsVerificationError, match="signature"):
        verifier.verify({**make_message(key), "Timestamp": "2025-12-31T23:59:59.000Z"})


def test_lambda_casing_of_the_unsigned_url_keys_is_read_and_checked(verifier, key):
    message = make_message(key, UnsubscribeURL=UNSUBSCRIBE_URL)
    lambda_style = {k: v for k, v in message.items() if k not in ("SigningCertURL", "UnsubscribeURL")}
    lambda_style.update(SigningCertUrl=message["SigningCertURL"], UnsubscribeUrl=message["UnsubscribeURL"],
                        Subject=None)
    parsed = parse_envelope(json.dumps(lambda_style).encode())
    verifier.verify(parsed)
    parsed_bad = parse_envelope(json.dumps({**lambda_style, "UnsubscribeUrl": "https://evil.com/"}).encode())
    with pytest.raises(SnsVerificationError, match="UnsubscribeURL"):
        verifier.verify(parsed_bad)


def test_text_that_cannot_have_been_signed_is_refused_not_a_crash(verifier, key):
    body = json.dumps(make_message(key)).replace('"Message": "', '"Message": "\\ud83c', 1).encode()
    with pytest.raises(SnsVerificationError, match="not valid Unicode"):
        verifier.verify(parse_envelope(body))
