"""POST /webhooks/ses through Flask's test client: refusals change nothing, SES events apply the suppression rules."""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import replace
from unittest import mock

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.test import EnvironBuilder

from campaigns.audience.contacts import import_csv
from campaigns.config import Settings
from tests.sns_signing import CERT_URL, SUBSCRIBE_URL, TOPIC, new_key, self_signed_cert, signed_message
from tracking_service import create_app, webhooks


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def cert_file(tmp_path, key):
    path = tmp_path / "sns-test-cert.pem"
    path.write_bytes(self_signed_cert(key))
    return path


@pytest.fixture
def http_get():
    return mock.Mock(return_value=mock.Mock(status_code=200))


@pytest.fixture
def app(cert_file, http_get):
    settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_cert_pem=str(cert_file))
    app = create_app(test_config={"TESTING": True, "SETTINGS": settings, "SNS_HTTP_GET": http_get,
                                  "TRACKING_DRAINER": False})
    if "webhooks" not in app.blueprints:  # until tracking_service/__init__.py registers it
        app.register_blueprint(webhooks.bp)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


_counter = iter(range(1, 1_000_000))


def envelope(key, event: dict | None = None, kind: str = "Notification", version: str = "2", **fields) -> dict:
    """A signed SNS envelope carrying `event` (as SNS does: the SES event is a JSON string in Message)."""
    return signed_message(key, kind=kind, version=version, message_id=f"sns-{next(_counter)}",
                          body=json.dumps(event if event is not None else {}), **fields)


def post(client, message: dict | bytes):
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    headers = {} if isinstance(message, bytes) else {"x-amz-sns-message-type": message.get("Type", "")}
    return client.post("/webhooks/ses", data=body, content_type="text/plain; charset=UTF-8", headers=headers)


def ses_event(event_type: str, message_id: str | None = "ses-sent-1", tags: dict | None = None, **detail) -> dict:
    mail = {"timestamp": "2026-01-02T03:04:00.000Z", "source": "news@example.com",
            "destination": ["ann@example.com"], "tags": tags or {}}
    if message_id is not None:
        mail["messageId"] = message_id
    return {"eventType": event_type, "mail": mail, **detail}


def bounce(bounce_type: str, address: str = "ann@example.com", message_id: str = "ses-sent-1") -> dict:
    now = dt.datetime.now(dt.UTC).isoformat()
    return ses_event("Bounce", message_id, bounce={
        "bounceType": bounce_type, "bounceSubType": "General", "timestamp": now,
        "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1"}]})


@pytest.fixture
def ledger(db):
    """One campaign with a sent row (ses-sent-1, Ann) and an unknown row (Bob, its SendEmail answer lost)."""
    campaign = db.execute(
        "INSERT INTO campaigns (key, name, subject, from_email, html, audience) "
        "VALUES ('spring', 'Spring', 'Hi', 'news@example.com', '<p>Hi</p>', '{}'::jsonb) RETURNING id").fetchone()["id"]
    sent = db.execute(
        "INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at) "
        "VALUES (%s, 'Ann@Example.com', 'sent', 'ses-sent-1', now()) RETURNING id", [campaign]).fetchone()["id"]
    unknown = db.execute(
        "INSERT INTO campaign_recipients (campaign_id, email, status) VALUES (%s, 'bob@example.com', 'unknown') "
        "RETURNING id", [campaign]).fetchone()["id"]
    return {"campaign": campaign, "sent": sent, "unknown": unknown}


def snapshot(db) -> dict:
    """Everything the webhook may write, to assert that a refusal wrote nothing."""
    return {
        "events": db.execute("SELECT * FROM email_events ORDER BY id").fetchall(),
        "suppressions": db.execute("SELECT * FROM suppressions ORDER BY email").fetchall(),
        "ledger": db.execute("SELECT * FROM campaign_recipients ORDER BY id").fetchall(),
    }


def suppression(db, email: str):
    return db.execute("SELECT reason, source FROM suppressions WHERE email = %s", [email]).fetchone()


def events(db) -> list[dict]:
    return db.execute("SELECT * FROM email_events ORDER BY id").fetchall()


# --- refusals: 4xx and no state change -------------------------------------------------------------------------

BAD_CERT_URLS = [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://example.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com.s3.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-abc.pem",
    "https://snsXus-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
]


def refused_cases(key, other_key) -> dict[str, dict]:
    permanent = bounce("Permanent")
    altered = envelope(key, permanent)
    altered["Message"] = json.dumps(bounce("Permanent", "victim@example.com"))
    return {
        "bad_signature": envelope(other_key, permanent),
        "altered_after_signing": altered,
        "topic_not_allowed": envelope(key, permanent, TopicArn="arn:aws:sns:us-east-1:999999999999:other"),
        "v1_bad_signature": envelope(other_key, permanent, version="1"),
        **{f"cert_url_{i}": envelope(key, permanent, SigningCertURL=url) for i, url in enumerate(BAD_CERT_URLS)},
    }


@pytest.mark.parametrize("case", ["bad_signature", "altered_after_signing", "topic_not_allowed", "v1_bad_signature",
                                  *(f"cert_url_{i}" for i in range(len(BAD_CERT_URLS)))])
def test_unverified_message_is_refused_with_no_state_change(client, db, ledger, key, other_key, case):
    before = snapshot(db)
    response = post(client, refused_cases(key, other_key)[case])
    assert response.status_code == 403
    assert response.get_json() == {"error": "Forbidden", "message": "SNS verification failed"}
    assert snapshot(db) == before


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"", b'{"Type": "Notification"}', b"\xff\xfe\x00"])
def test_malformed_body_is_400_with_no_state_change(client, db, ledger, body):
    before = snapshot(db)
    response = post(client, body)
    assert response.status_code == 400
    assert "error" in response.get_json()
    assert snapshot(db) == before


def test_oversized_body_is_413_with_no_state_change(client, db, ledger, key):
    before = snapshot(db)
    message = envelope(key, {**bounce("Permanent"), "padding": "x" * (300 * 1024)})
    response = post(client, message)
    assert response.status_code == 413
    assert response.get_json() == {"error": "Request Entity Too Large", "message": "body too large"}
    assert snapshot(db) == before


def chunked(body: bytes) -> dict:
    """A WSGI environ for a chunked request: no Content-Length, the server marks the stream as terminated."""
    environ = EnvironBuilder(path="/webhooks/ses", method="POST", input_stream=io.BytesIO(body),
                             content_type="text/plain").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    return environ


def test_oversized_body_without_content_length_is_413(client, db, ledger, key):
    before = snapshot(db)
    body = json.dumps(envelope(key, {**bounce("Permanent"), "padding": "x" * (300 * 1024)})).encode()
    response = client.open(chunked(body))
    assert response.status_code == 413
    assert response.get_json() == {"error": "Request Entity Too Large", "message": "body too large"}
    assert snapshot(db) == before


def test_oversized_body_is_413_even_without_app_limit(app, db, ledger, key):
    app.config["MAX_CONTENT_LENGTH"] = None
    before = snapshot(db)
    body = json.dumps(envelope(key, {**bounce("Permanent"), "padding": "x" * (300 * 1024)})).encode()
    assert app.test_client().open(chunked(body)).status_code == 413
    assert app.test_client().post("/webhooks/ses", data=body, content_type="text/plain").status_code == 413
    assert snapshot(db) == before


def test_chunked_body_within_limit_is_processed(client, db, ledger, key):
    response = client.open(chunked(json.dumps(envelope(key, bounce("Permanent"))).encode()))
    assert response.status_code == 200
    assert suppression(db, "ann@example.com")["reason"] == "hard_bounce"


def test_header_type_mismatch_is_400(client, db, ledger, key):
    before = snapshot(db)
    message = envelope(key, bounce("Permanent"))
    response = client.post("/webhooks/ses", data=json.dumps(message), content_type="text/plain",
                           headers={"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert response.status_code == 400
    assert snapshot(db) == before


def test_replayed_message_is_a_200_no_op(client, db, ledger, key):
    message = envelope(key, bounce("Transient"))
    first = post(client, message)
    assert first.status_code == 200
    after_first = snapshot(db)
    second = post(client, message)
    assert second.status_code == 200
    assert second.get_json()["result"] == "duplicate"
    assert snapshot(db) == after_first
    assert len(events(db)) == 1


# --- subscriptions -------------------------------------------------------------------------------------------


def test_valid_subscription_confirmation_gets_subscribe_url(client, db, key, http_get):
    before = snapshot(db)
    response = post(client, envelope(key, kind="SubscriptionConfirmation", version="1"))
    assert response.status_code == 200
    http_get.assert_called_once_with(SUBSCRIBE_URL, timeout=5, allow_redirects=False)
    assert snapshot(db) == before


DEV_CONFIRM_URL = "http://127.0.0.1:25500/sns/confirm"
BAD_SUBSCRIBE_URLS = [
    "https://169.254.169.254/latest/meta-data/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
    f"{DEV_CONFIRM_URL}?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc",
]


@pytest.fixture
def dev_client(cert_file, http_get):
    """A client of the service as the dev stack runs it: SNS_TEST_CONFIRM_URL set."""
    settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_cert_pem=str(cert_file),
                       sns_test_confirm_url=DEV_CONFIRM_URL)
    return create_app(test_config={"TESTING": True, "SETTINGS": settings, "SNS_HTTP_GET": http_get,
                                   "TRACKING_DRAINER": False}).test_client()


@pytest.mark.parametrize("url", BAD_SUBSCRIBE_URLS)
@pytest.mark.parametrize("service", ["client", "dev_client"])  # as in production, and with SNS_TEST_CONFIRM_URL
def test_subscribe_url_elsewhere_is_never_fetched(request, db, key, http_get, url, service):
    before = snapshot(db)
    response = post(request.getfixturevalue(service), envelope(key, kind="SubscriptionConfirmation", SubscribeURL=url))
    assert response.status_code == 403
    http_get.assert_not_called()
    assert snapshot(db) == before


def test_dev_confirm_url_gets_the_checked_subscribe_urls_query_instead_of_aws(dev_client, key, http_get, caplog):
    response = post(dev_client, envelope(key, kind="SubscriptionConfirmation"))
    assert response.status_code == 200
    http_get.assert_called_once_with(f"{DEV_CONFIRM_URL}?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc",
                                     timeout=5, allow_redirects=False)
    assert "through SNS_TEST_CONFIRM_URL" in caplog.text


def test_dev_confirm_url_still_needs_a_verified_message(dev_client, other_key, http_get):
    assert post(dev_client, envelope(other_key, kind="SubscriptionConfirmation")).status_code == 403
    http_get.assert_not_called()


def test_dev_confirm_url_is_logged_loudly_at_start_and_absent_otherwise(cert_file, http_get, caplog):
    for confirm_url in (None, DEV_CONFIRM_URL):
        caplog.clear()
        settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_confirm_url=confirm_url)
        create_app(test_config={"TESTING": True, "SETTINGS": settings, "TRACKING_DRAINER": False})
        warned = [r for r in caplog.records if "SNS_TEST_CONFIRM_URL is set" in r.getMessage()]
        assert [r.levelname for r in warned] == ([] if confirm_url is None else ["WARNING"])


def test_unverified_subscription_is_never_fetched(client, key, other_key, http_get):
    assert post(client, envelope(other_key, kind="SubscriptionConfirmation")).status_code == 403
    http_get.assert_not_called()


def test_unreachable_subscribe_url_is_502(client, key, http_get):
    http_get.side_effect = ConnectionError("refused")
    assert post(client, envelope(key, kind="SubscriptionConfirmation")).status_code == 502


def test_unsubscribe_confirmation_is_logged_and_acknowledged(client, db, key, http_get):
    before = snapshot(db)
    assert post(client, envelope(key, kind="UnsubscribeConfirmation")).status_code == 200
    http_get.assert_not_called()
    assert snapshot(db) == before


# --- SES events ------------------------------------------------------------------------------------------------


def test_permanent_bounce_suppresses_now(client, db, ledger, key):
    response = post(client, envelope(key, bounce("Permanent", "Ann@Example.com")))
    assert response.status_code == 200
    assert response.get_json()["result"].startswith("bounce:Permanent suppressed 1")
    assert suppression(db, "ann@example.com") == {"reason": "hard_bounce", "source": "ses"}
    [event] = events(db)
    assert (event["type"], event["subtype"]) == ("bounce", "Permanent")
    assert (event["campaign_id"], event["recipient_id"]) == (ledger["campaign"], ledger["sent"])
    assert event["ses_message_id"] == "ses-sent-1"
    assert event["payload"]["bounce"]["bounceType"] == "Permanent"


def test_complaint_suppresses_now(client, db, ledger, key):
    event = ses_event("Complaint", complaint={
        "complainedRecipients": [{"emailAddress": "ann@example.com"}], "complaintFeedbackType": "abuse",
        "timestamp": "2026-01-02T04:00:00.000Z"})
    assert post(client, envelope(key, event, version="1")).status_code == 200
    assert suppression(db, "ann@example.com") == {"reason": "complaint", "source": "ses"}
    [row] = events(db)
    assert (row["type"], row["subtype"], row["recipient_id"]) == ("complaint", "abuse", ledger["sent"])


def test_three_soft_bounces_in_window_suppress(client, db, ledger, key):
    for bounce_type in ("Transient", "Undetermined"):
        assert post(client, envelope(key, bounce(bounce_type))).status_code == 200
    assert suppression(db, "ann@example.com") is None  # two are not enough
    assert post(client, envelope(key, bounce("Transient"))).status_code == 200
    assert suppression(db, "ann@example.com") == {"reason": "soft_bounce_limit", "source": "ses"}
    assert len(events(db)) == 3


def test_soft_bounces_outside_window_do_not_count(client, db, ledger, key):
    db.execute("INSERT INTO email_events (email, type, subtype, payload, occurred_at) VALUES "
               "('ann@example.com', 'bounce', 'Transient', %s, now() - interval '40 days')",
               [json.dumps(bounce("Transient"))])
    for _ in range(2):
        assert post(client, envelope(key, bounce("Transient"))).status_code == 200
    assert suppression(db, "ann@example.com") is None


def test_hard_bounce_upgrades_soft_limit_but_soft_never_downgrades(client, db, ledger, key):
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES "
               "('ann@example.com', 'soft_bounce_limit', 'ses'), ('bob@example.com', 'complaint', 'ses')")
    post(client, envelope(key, bounce("Permanent")))
    assert suppression(db, "ann@example.com")["reason"] == "hard_bounce"
    for _ in range(3):
        post(client, envelope(key, bounce("Transient", "bob@example.com", message_id="ses-other")))
    assert suppression(db, "bob@example.com")["reason"] == "complaint"


def test_delivery_is_recorded(client, db, ledger, key):
    event = ses_event("Delivery", delivery={"timestamp": "2026-01-02T03:04:30.000Z", "recipients": ["ann@example.com"]})
    response = post(client, envelope(key, event))
    assert response.status_code == 200
    [row] = events(db)
    assert (row["type"], row["recipient_id"], row["email"]) == ("delivery", ledger["sent"], "Ann@Example.com")
    assert row["occurred_at"] == dt.datetime(2026, 1, 2, 3, 4, 30, tzinfo=dt.UTC)
    assert snapshot(db)["suppressions"] == []


def test_send_settles_unknown_ledger_row_by_tags(client, db, ledger, key):
    tags = {"campaign": [str(ledger["campaign"])], "recipient": [str(ledger["unknown"])]}
    response = post(client, envelope(key, ses_event("Send", "ses-recovered", tags=tags, send={})))
    assert response.status_code == 200
    assert "settled sent" in response.get_json()["result"]
    row = db.execute("SELECT status, ses_message_id, sent_at FROM campaign_recipients WHERE id = %s",
                     [ledger["unknown"]]).fetchone()
    assert (row["status"], row["ses_message_id"]) == ("sent", "ses-recovered")
    assert row["sent_at"] is not None
    assert events(db)[0]["recipient_id"] == ledger["unknown"]


def test_tags_of_another_campaign_settle_nothing(client, db, ledger, key):
    tags = {"campaign": [str(ledger["campaign"] + 1)], "recipient": [str(ledger["unknown"])]}
    post(client, envelope(key, ses_event("Send", "ses-recovered", tags=tags, send={})))
    status = db.execute("SELECT status FROM campaign_recipients WHERE id = %s", [ledger["unknown"]]).fetchone()
    assert status["status"] == "unknown"
    assert events(db)[0]["recipient_id"] is None


def test_reject_fails_unknown_ledger_row(client, db, ledger, key):
    tags = {"campaign": [str(ledger["campaign"])], "recipient": [str(ledger["unknown"])]}
    post(client, envelope(key, ses_event("Reject", "ses-rejected", tags=tags, reject={"reason": "Bad content"})))
    row = db.execute("SELECT status, error FROM campaign_recipients WHERE id = %s", [ledger["unknown"]]).fetchone()
    assert row["status"] == "failed"
    assert "Bad content" in row["error"]
    assert events(db)[0]["type"] == "reject"


def test_rendering_failure_is_recorded(client, db, ledger, key):
    event = ses_event("Rendering Failure", failure={"errorMessage": "Attribute 'x' missing", "templateName": "t"})
    assert post(client, envelope(key, event)).status_code == 200
    assert (events(db)[0]["type"], events(db)[0]["subtype"]) == ("rendering_failure", "t")


def test_identity_notification_joins_by_message_id(client, db, ledger, key):
    event = {"notificationType": "Bounce", "mail": {"messageId": "ses-sent-1", "destination": ["ann@example.com"]},
             "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": "ann@example.com"}]}}
    assert post(client, envelope(key, event)).status_code == 200
    assert suppression(db, "ann@example.com")["reason"] == "hard_bounce"
    assert events(db)[0]["recipient_id"] == ledger["sent"]


@pytest.mark.parametrize("message", [json.dumps({"eventType": "Subscription", "mail": {}}), "not json at all",
                                     json.dumps(["a list"])])
def test_unknown_event_is_recorded_as_other(client, db, ledger, key, message):
    response = post(client, envelope(key, Message=message))
    assert response.status_code == 200
    [row] = events(db)
    assert row["type"] == "other"
    assert snapshot(db)["suppressions"] == []


def test_injected_cert_fetch_is_used_once_per_url(cert_file, db, ledger, key):
    fetch = mock.Mock(return_value=cert_file.read_bytes())
    settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_cert_pem=None)
    app = create_app(test_config={"TESTING": True, "SETTINGS": settings, "SNS_CERT_FETCH": fetch,
                                  "TRACKING_DRAINER": False})
    client = app.test_client()
    assert post(client, envelope(key, bounce("Transient"))).status_code == 200
    assert post(client, envelope(key, bounce("Transient"), version="1")).status_code == 200
    fetch.assert_called_once_with(CERT_URL)


# --- every shape of SES payload (modelled on the SES developer guide's examples and real payloads) ---------------


def identity_bounce(bounce_type: str, recipients: list[dict], destination: list[str], sub_type: str = "General",
                    message_id: str = "ses-not-ours") -> dict:
    """An identity notification (`notificationType`) bounce, the shape SES sends without a configuration set."""
    return {
        "notificationType": "Bounce",
        "bounce": {"feedbackId": "0100018c-feedback-000000", "bounceType": bounce_type, "bounceSubType": sub_type,
                   "bouncedRecipients": recipients, "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                   "reportingMTA": "dns; amazonses.com"},
        "mail": {"timestamp": "2026-11-30T09:15:02.118Z", "source": "news@example.com", "messageId": message_id,
                 "destination": destination, "headersTruncated": False,
                 "commonHeaders": {"from": ["Example News <news@example.com>"], "to": destination}},
    }


def suppressed_addresses(db) -> dict[str, str]:
    return {row["email"]: row["reason"] for row in db.execute("SELECT email, reason FROM suppressions")}


def test_display_name_hard_bounce_suppresses_the_address_not_the_string(client, db, key):
    # As SES reported an OnAccountSuppressionList bounce of a message addressed with a display name.
    named = "Carla Mendes <Carla.Mendes@Example.org>"
    event = identity_bounce("Permanent", [{"emailAddress": named, "action": "failed", "status": "5.1.1",
                                           "diagnosticCode": "Amazon SES did not send the message"}],
                            [named], sub_type="OnAccountSuppressionList")
    response = post(client, envelope(key, event))
    assert response.status_code == 200
    assert suppressed_addresses(db) == {"carla.mendes@example.org": "hard_bounce"}
    assert events(db)[0]["email"] == "carla.mendes@example.org"
    # The next import (and so the next campaign's snapshot) knows the contact as suppressed.
    report = import_csv(db, io.StringIO("email\nCARLA.MENDES@example.org\n"), "newsletter")
    assert [p.email for p in report.suppressed_rows] == ["CARLA.MENDES@example.org"]


def test_quoted_display_name_with_a_comma_in_a_complaint_is_parsed(client, db, key):
    event = ses_event("Complaint", message_id="ses-not-ours", complaint={
        "complainedRecipients": [{"emailAddress": '"Mendes, Carla" <carla@Example.ORG>'}],
        "complaintFeedbackType": "abuse", "complaintSubType": None, "timestamp": "2026-11-30T10:00:00.000Z",
        "userAgent": "Yahoo!-Mail-Feedback/2.0"})
    assert post(client, envelope(key, event)).status_code == 200
    assert suppressed_addresses(db) == {"carla@example.org": "complaint"}


def test_encoded_word_display_name_is_parsed(client, db, key):
    named = "=?UTF-8?B?w4RubmEgQsO2aG0=?= <anna.boehm@example.net>"  # "Änna Böhm"
    event = identity_bounce("Permanent", [{"emailAddress": named, "action": "failed", "status": "5.1.1"}], [named])
    assert post(client, envelope(key, event)).status_code == 200
    assert suppressed_addresses(db) == {"anna.boehm@example.net": "hard_bounce"}


def test_punycode_bounce_suppresses_the_contact_stored_with_its_unicode_domain(client, db, key):
    import_csv(db, io.StringIO("email\nJonas@Bücher.example\n"), "newsletter")
    event = identity_bounce("Permanent", [{"emailAddress": "Jonas <JONAS@xn--bcher-kva.example>",
                                           "action": "failed", "status": "5.1.1"}], ["jonas@xn--bcher-kva.example"])
    assert post(client, envelope(key, event)).status_code == 200
    [contact] = db.execute("SELECT email FROM contacts").fetchall()
    assert suppressed_addresses(db) == {contact["email"].lower(): "hard_bounce"}
    assert contact["email"].lower() == "jonas@bücher.example"


def test_every_recipient_of_a_multi_recipient_bounce_is_suppressed(client, db, key):
    # As the guide's bounce with a DSN: three destinations in one To header, two of them bounced.
    to = "Jane Roe <jane@example.com>, \"Roe, Mary\" <MARY@example.com>, Rick Roe <rick@example.com>"
    event = identity_bounce("Permanent", [
        {"emailAddress": "jane@example.com", "action": "failed", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User unknown"},
        {"emailAddress": "\"Roe, Mary\" <MARY@example.com>", "action": "failed", "status": "5.1.1"},
    ], ["jane@example.com", "mary@example.com", "rick@example.com"])
    event["mail"]["commonHeaders"]["to"] = [to]
    response = post(client, envelope(key, event))
    assert response.get_json()["result"].startswith("bounce:Permanent suppressed 2")
    assert suppressed_addresses(db) == {"jane@example.com": "hard_bounce", "mary@example.com": "hard_bounce"}


def test_transient_bounce_without_action_or_status_counts_towards_the_soft_limit(client, db, key):
    # As the mailbox simulator's out-of-office bounce: the recipient entry has only its address.
    for sns_round in range(3):
        named = ["Ola <ola@example.com>", "ola@example.com", "OLA <Ola@Example.com>"][sns_round]
        event = identity_bounce("Transient", [{"emailAddress": named}], [named])
        assert post(client, envelope(key, event)).status_code == 200
        if sns_round < 2:
            assert suppressed_addresses(db) == {}
    assert suppressed_addresses(db) == {"ola@example.com": "soft_bounce_limit"}
    assert [(row["type"], row["subtype"]) for row in events(db)] == [("bounce", "Transient")] * 3


def test_soft_bounce_sharing_only_the_local_part_does_not_count(client, db, key):
    for domain in ("example.com", "example.net"):
        post(client, envelope(key, identity_bounce("Transient", [{"emailAddress": f"ola@{domain}"}], [])))
    post(client, envelope(key, identity_bounce("Transient", [{"emailAddress": "Ola <ola@example.com>"}], [])))
    assert suppressed_addresses(db) == {}


def test_destination_validation_text_is_recorded_as_other(client, db, ledger, key):
    # SES publishes this plain text, not JSON, when an SNS event destination is created.
    response = post(client, envelope(key, Message="Successfully validated SNS topic for Amazon SES event publishing."))
    assert response.status_code == 200
    [row] = events(db)
    assert (row["type"], row["email"], row["payload"]) == (
        "other", None, {"unparsed": "Successfully validated SNS topic for Amazon SES event publishing."})
    assert snapshot(db)["suppressions"] == []


def test_sns_subscription_succeeded_is_recorded_as_other(client, db, ledger, key):
    event = {"notificationType": "AmazonSnsSubscriptionSucceeded",
             "message": "You have successfully subscribed your Amazon SNS topic "
                        f"'{TOPIC}' to receive 'Bounce' notifications from Amazon SES for identity 'example.com'."}
    ledger_before = snapshot(db)["ledger"]
    response = post(client, envelope(key, event))
    assert response.status_code == 200
    [row] = events(db)
    assert (row["type"], row["subtype"], row["campaign_id"]) == ("other", "AmazonSnsSubscriptionSucceeded", None)
    assert snapshot(db)["ledger"] == ledger_before
    assert snapshot(db)["suppressions"] == []


def test_event_type_the_product_does_not_know_is_other_with_the_destination_parsed(client, db, key):
    event = {"eventType": "MailboxFullWarning", "mail": {
        "messageId": "ses-not-ours", "destination": ["Pia Berg <Pia.Berg@example.com>"],
        "commonHeaders": {"to": ["Pia Berg <Pia.Berg@example.com>"]}}, "mailboxFullWarning": {"percent": 97}}
    assert post(client, envelope(key, event)).status_code == 200
    [row] = events(db)
    assert (row["type"], row["subtype"], row["email"]) == ("other", "MailboxFullWarning", "pia.berg@example.com")


def test_common_headers_to_names_the_event_when_destination_does_not(client, db, key):
    event = ses_event("Send", message_id="ses-not-ours", send={})
    event["mail"]["destination"] = ["undisclosed-recipients:;"]
    event["mail"]["commonHeaders"] = {"to": ["Jane Roe <Jane@Example.com>, Mary Roe <mary@example.com>"]}
    assert post(client, envelope(key, event)).status_code == 200
    assert events(db)[0]["email"] == "jane@example.com"


def test_recipient_that_is_no_address_is_ignored_and_the_rest_suppressed(client, db, key):
    event = identity_bounce("Permanent", [{"emailAddress": "not an address"}, {"emailAddress": '"a b"@example.com'},
                                          {"emailAddress": "Real <real@example.com>"}], [])
    assert post(client, envelope(key, event)).status_code == 200
    assert suppressed_addresses(db) == {"real@example.com": "hard_bounce"}


@pytest.mark.parametrize("raw", [
    '{"eventType": "Open", "mail": {"messageId": "ses-sent-1"}, "open": {"userAgent": "Mail\\u0000Client"}}',
    '{"eventType": "Click", "mail": {"messageId": "ses-sent-1"}, "click": {"userAgent": "half \\ud83c pair"}}',
    '{"eventType": "Open", "mail": {"messageId": "ses-sent-1"}, "open": {"score": NaN, "big": 1e400}}',
    '{"eventType": "Bounce", "mail": {}, "bounce": {"bounceType": "Transient", "bouncedRecipients": {"a": 1}}}',
], ids=["nul", "lone-surrogate", "nan-infinity", "recipients-not-a-list"])
def test_payload_postgresql_cannot_store_verbatim_is_recorded_not_a_500(client, db, ledger, key, raw):
    assert post(client, envelope(key, Message=raw)).status_code == 200
    assert len(events(db)) == 1


def test_soft_bounce_is_counted_past_an_earlier_bounce_whose_recipients_are_not_a_list(client, db, key):
    odd = identity_bounce("Transient", [], [])
    odd["bounce"]["bouncedRecipients"] = {"emailAddress": "ola@example.com"}
    assert post(client, envelope(key, odd)).status_code == 200
    assert post(client, envelope(key, identity_bounce("Transient", [{"emailAddress": "ola@example.com"}], []))
                ).status_code == 200
    assert len(events(db)) == 2


def future(minutes: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def test_notification_from_the_future_is_403_with_no_state_change(client, db, ledger, key):
    before = snapshot(db)
    response = post(client, envelope(key, bounce("Permanent"), Timestamp=future(10)))
    assert response.status_code == 403
    assert snapshot(db) == before


def test_clock_skew_setting_lets_a_slow_clock_accept_what_sns_sent(cert_file, db, ledger, key):
    settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_cert_pem=str(cert_file),
                       sns_max_clock_skew_seconds=3600)
    client = create_app(test_config={"TESTING": True, "SETTINGS": settings, "TRACKING_DRAINER": False}).test_client()
    assert post(client, envelope(key, bounce("Permanent"), Timestamp=future(10))).status_code == 200
    assert post(client, envelope(key, bounce("Permanent"), Timestamp=future(70))).status_code == 403


def test_forged_unsubscribe_url_is_403_with_no_state_change(client, db, ledger, key):
    before = snapshot(db)
    message = {**envelope(key, bounce("Permanent")), "UnsubscribeURL": "https://evil.example/?Action=Unsubscribe"}
    assert post(client, message).status_code == 403
    assert snapshot(db) == before


def test_text_that_cannot_have_been_signed_is_403_not_500(client, db, ledger, key):
    body = json.dumps(envelope(key, bounce("Permanent"))).replace('"Message": "', '"Message": "\\udc00', 1)
    assert post(client, body.encode()).status_code == 403
