"""The local SNS: signed notifications the product's own verifier accepts, delivered over https to the real tracking
service (test database), SNS's subscription handshake and SNS's retry policy."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from werkzeug.serving import make_server

from campaigns.config import Settings
from campaigns.feedback.sns import SnsVerifier, check_subscribe_url, parse_envelope
from devstack.local_ses.events import EICAR, EventRules, new_message_id
from devstack.local_ses.message import AcceptedMessage
from devstack.local_ses.publisher import (
    DELIVERED,
    PERMANENT_FAILURE,
    RETRY,
    SES_EVENT_SUBJECT,
    PublisherConfig,
    SnsPublisher,
    classify,
)
from devstack.processes import poll
from devstack.settings import StackSettings
from devstack.stack import SNS_TOPIC_ARN, self_signed_certificate, sns_test_signing_key
from tracking_service import create_app

FACTOR = 0.01  # SNS's 20 s between retries become 0.2 s
RETRY_GAP = 20 * FACTOR


@dataclass(frozen=True)
class StackFiles:
    """The dev stack's SNS signing key and certificate and its tracking certificate, made as the stack makes them."""

    sns_key: Path
    sns_cert: Path
    tls_cert: Path
    tls_key: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> StackFiles:
    stack = StackSettings(state_dir=tmp_path_factory.mktemp("stack"))
    sns_key, sns_cert = sns_test_signing_key(stack)
    tls_cert, tls_key = self_signed_certificate(stack)
    return StackFiles(sns_key, sns_cert, tls_cert, tls_key)


@contextlib.contextmanager
def serve(app, *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True,
                         ssl_context=(str(tls[0]), str(tls[1])) if tls else None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://localhost:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@dataclass
class Endpoint:
    """A scripted HTTPS endpoint: answers the statuses in turn (then 200) and records every request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        self.requests.append({"at": time.monotonic(), "headers": headers, "body": body})
        status = self.statuses.pop(0) if self.statuses else 200
        start_response(f"{status} X", [("Content-Length", "0")])
        return [b""]


def publisher(files: StackFiles, endpoint: str, **config) -> SnsPublisher:
    return SnsPublisher(PublisherConfig(endpoint=endpoint, topic_arn=SNS_TOPIC_ARN, signing_key=files.sns_key,
                                        signing_cert=files.sns_cert, ca_file=files.tls_cert,
                                        retry_delay_factor=FACTOR, **config)).start()


def confirm_directly(pub: SnsPublisher) -> None:
    """What the endpoint's GET of the SubscribeURL does, for tests of delivery alone."""
    assert pub.handle_confirm(urlsplit(pub.subscribe_url).query)[0] == 200


def accepted(to: str, *, tags: dict[str, str] | None = None, message_id: str | None = None) -> AcceptedMessage:
    raw = (f"From: Example News <news@example.com>\r\nTo: {to}\r\nSubject: Hello\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n").encode()
    now = datetime.now(UTC)
    return AcceptedMessage(message_id=message_id or new_message_id(now), received_at=now,
                           source="news@example.com", destinations=(to,), raw=raw, tags=tags or {},
                           configuration_set="campaign-events")


def settled(pub: SnsPublisher, count: int, timeout: float = 15) -> dict[str, str]:
    """Wait until `count` SNS messages have a final outcome and nothing is left to do; returns the outcomes."""
    poll(lambda: len(pub.outcomes) >= count and pub.idle(), what=f"{count} SNS outcomes", timeout=timeout,
         interval=0.05)
    return dict(pub.outcomes)


# --- the handshake and the real tracking service --------------------------------------------------------------


@pytest.fixture
def service(files, db):
    """The real tracking service over https (test database), confirming subscriptions through SNS_TEST_CONFIRM_URL
    at a local confirm endpoint; yields (publisher, its webhook URL)."""
    holder: dict[str, SnsPublisher] = {}

    def confirm(environ, start_response):
        return holder["publisher"].confirm_app(environ, start_response)

    with serve(confirm) as confirm_base:
        settings = replace(Settings.from_env(), sns_topic_arns=(SNS_TOPIC_ARN,), sns_test_cert_pem=str(files.sns_cert),
                           sns_test_confirm_url=f"{confirm_base.replace('localhost', '127.0.0.1')}/sns/confirm")
        app = create_app(test_config={"TESTING": True, "SETTINGS": settings, "TRACKING_DRAINER": False})
        with serve(app, tls=(files.tls_cert, files.tls_key)) as base:
            holder["publisher"] = pub = publisher(files, f"{base}/webhooks/ses")
            try:
                yield pub
            finally:
                pub.close()


def test_the_service_confirms_the_subscription_through_the_local_confirm_url(service):
    assert not service.confirmed
    message_id = service.subscribe()
    poll(lambda: service.confirmed, what="the subscription confirmed", timeout=10, interval=0.05)
    assert settled(service, 1) == {message_id: DELIVERED}
    [attempt] = service.attempts
    assert (attempt.kind, attempt.status) == ("SubscriptionConfirmation", 200)


def test_nothing_is_delivered_before_the_subscription_is_confirmed(service, db):
    events = service.publish(accepted("bounce@simulator.amazonses.com"))
    poll(lambda: len(service.unpublished) == len(events) and service.idle(), what="events due", timeout=10,
         interval=0.05)
    assert len(service.attempts) == 0
    assert db.execute("SELECT count(*) AS n FROM email_events").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM suppressions").fetchone()["n"] == 0


@pytest.fixture
def ledger(db) -> dict[str, int]:
    """A campaign with a sent row for the complaint and an unknown row (its SendEmail answer lost) for success@."""
    campaign = db.execute(
        "INSERT INTO campaigns (key, name, subject, from_email, html, audience) "
        "VALUES ('sim', 'Sim', 'Hi', 'news@example.com', '<p>Hi</p>', '{}'::jsonb) RETURNING id").fetchone()["id"]
    rows = db.execute(
        "INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at) VALUES "
        "(%(c)s, 'complaint@simulator.amazonses.com', 'sent', 'ses-complaint', now()), "
        "(%(c)s, 'success@simulator.amazonses.com', 'unknown', NULL, NULL) RETURNING id", {"c": campaign}).fetchall()
    return {"campaign": campaign, "sent": rows[0]["id"], "unknown": rows[1]["id"]}


def test_simulator_feedback_is_recorded_by_the_real_service(service, db, ledger):
    service.subscribe()
    poll(lambda: service.confirmed, what="the subscription confirmed", timeout=10, interval=0.05)
    messages = [
        accepted("bounce@simulator.amazonses.com"),
        accepted("complaint@simulator.amazonses.com", message_id="ses-complaint"),
        accepted("success@simulator.amazonses.com",
                 tags={"campaign": str(ledger["campaign"]), "recipient": str(ledger["unknown"])}),
    ]
    published = sum(len(service.publish(message)) for message in messages)
    outcomes = settled(service, 1 + published)
    assert set(outcomes.values()) == {DELIVERED}
    suppressions = {r["email"]: r["reason"] for r in db.execute("SELECT email, reason FROM suppressions")}
    assert suppressions == {"bounce@simulator.amazonses.com": "hard_bounce",
                            "complaint@simulator.amazonses.com": "complaint"}
    row = db.execute("SELECT status, ses_message_id FROM campaign_recipients WHERE id = %s",
                     [ledger["unknown"]]).fetchone()
    assert (row["status"], row["ses_message_id"]) == ("sent", messages[2].message_id)  # settled by its Send event
    recorded = db.execute("SELECT type, recipient_id FROM email_events ORDER BY id").fetchall()
    assert sorted(r["type"] for r in recorded) == ["bounce", "complaint", "delivery", "delivery", "send", "send",
                                                   "send"]
    assert {r["recipient_id"] for r in recorded if r["type"] == "complaint"} == {ledger["sent"]}


# --- what goes over the wire ----------------------------------------------------------------------------------


@pytest.fixture
def endpoint(files) -> Iterator[tuple[Endpoint, str]]:
    recorder = Endpoint()
    with serve(recorder, tls=(files.tls_cert, files.tls_key)) as base:
        yield recorder, f"{base}/webhooks/ses"


def test_every_message_verifies_with_the_products_verifier_and_carries_snss_headers(files, endpoint):
    recorder, url = endpoint
    pub = publisher(files, url)
    try:
        confirmation_id = pub.subscribe()
        confirm_directly(pub)
        count = 1 + sum(len(pub.publish(accepted(f"{box}@simulator.amazonses.com")))
                        for box in ("success", "bounce", "ooto", "complaint", "suppressionlist"))
        settled(pub, count)
    finally:
        pub.close()
    verifier = SnsVerifier([SNS_TOPIC_ARN], test_cert_pem=str(files.sns_cert))
    assert len(recorder.requests) == count
    for request in recorder.requests:
        message = parse_envelope(request["body"])
        verifier.verify(message)  # SigningCertURL shape, topic and SHA256 signature, as /webhooks/ses checks them
        headers = request["headers"]
        assert headers["x-amz-sns-message-type"] == message["Type"]
        assert headers["x-amz-sns-message-id"] == message["MessageId"]
        assert headers["x-amz-sns-topic-arn"] == SNS_TOPIC_ARN
        assert headers["content-type"] == "text/plain; charset=UTF-8"
        assert headers["user-agent"] == "Amazon Simple Notification Service Agent"
        assert message["SignatureVersion"] == "2"
        if message["Type"] == "SubscriptionConfirmation":
            assert message["MessageId"] == confirmation_id
            assert "x-amz-sns-subscription-arn" not in headers
            check_subscribe_url(message["SubscribeURL"], "us-east-1")
        else:
            assert headers["x-amz-sns-subscription-arn"] == pub.subscription_arn
            assert message["Subject"] == SES_EVENT_SUBJECT
            assert message["UnsubscribeURL"].startswith("https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&")
            assert json.loads(message["Message"])["mail"]["tags"]["ses:configuration-set"] == ["campaign-events"]
    notifications = [parse_envelope(r["body"]) for r in recorder.requests]
    kinds = [json.loads(m["Message"])["eventType"] for m in notifications if m["Type"] == "Notification"]
    assert sorted(kinds) == sorted(["Send"] * 5 + ["Delivery"] * 3 + ["Bounce"] * 3 + ["Complaint"])


def test_a_wrong_token_does_not_confirm_the_subscription(files, endpoint):
    pub = publisher(files, endpoint[1])
    try:
        good = urlsplit(pub.subscribe_url).query
        status, body = pub.handle_confirm(good.replace("Token=", "Token=0"))
        assert (status, "InvalidParameter" in body) == (400, True)
        assert pub.handle_confirm(good.replace("ConfirmSubscription", "Unsubscribe"))[0] == 400
        assert not pub.confirmed
        status, body = pub.handle_confirm(good)
        assert status == 200
        assert f"<SubscriptionArn>{pub.subscription_arn}</SubscriptionArn>" in body
        assert pub.confirmed
    finally:
        pub.close()


# --- SNS's retry policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "verdict"), [
    (None, RETRY), (100, RETRY), (101, RETRY), (500, RETRY), (503, RETRY), (599, RETRY),
    (200, DELIVERED), (204, DELIVERED), (302, DELIVERED),
    (400, PERMANENT_FAILURE), (403, PERMANENT_FAILURE), (404, PERMANENT_FAILURE), (499, PERMANENT_FAILURE),
])
def test_answers_are_judged_as_sns_documents(status, verdict):
    assert classify(status) == verdict


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.parametrize("kind", ["Notification", "SubscriptionConfirmation"])
def test_a_5xx_is_retried_with_the_same_message_id_at_the_scaled_delay(files, endpoint, kind):
    recorder, url = endpoint
    recorder.statuses = [500, 503]
    pub = publisher(files, url)
    try:
        if kind == "Notification":
            confirm_directly(pub)
            # a message carrying a virus has one event (Reject), so the script's answers are all its own
            virus = accepted("ann@example.com")
            assert len(pub.publish(replace(virus, raw=virus.raw + EICAR))) == 1
        else:
            pub.subscribe()
        [(message_id, outcome)] = settled(pub, 1).items()
    finally:
        pub.close()
    assert outcome == DELIVERED
    assert [r["headers"]["x-amz-sns-message-id"] for r in recorder.requests[:3]] == [message_id] * 3
    assert len({r["body"] for r in recorder.requests[:3]}) == 1  # the very same message, signature included
    assert [a.status for a in pub.attempts_for(message_id)] == [500, 503, 200]
    assert [a.attempt for a in pub.attempts_for(message_id)] == [1, 2, 3]
    assert all(RETRY_GAP <= gap < RETRY_GAP + 1.0 for gap in gaps([r["at"] for r in recorder.requests[:3]]))


def test_a_4xx_is_a_permanent_failure_and_not_retried(files, endpoint):
    recorder, url = endpoint
    recorder.statuses = [403]
    pub = publisher(files, url)
    try:
        pub.subscribe()
        [(message_id, outcome)] = settled(pub, 1).items()
        time_after = time.monotonic() + 3 * RETRY_GAP
        poll(lambda: time.monotonic() > time_after, what="the retry delays to pass", timeout=5, interval=0.05)
    finally:
        pub.close()
    assert outcome == "dropped: permanent failure (HTTP 403)"
    assert [a.status for a in pub.attempts_for(message_id)] == [403]
    assert len(recorder.requests) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def untrusted_endpoint(tmp_path: Path) -> Iterator[str]:
    """An https endpoint whose certificate is not the stack's tracking certificate."""
    cert, key = self_signed_certificate(StackSettings(state_dir=tmp_path / "other"))
    with serve(Endpoint(), tls=(cert, key)) as base:
        yield f"{base}/webhooks/ses"


@pytest.mark.parametrize("case", ["down", "untrusted certificate"])
def test_an_endpoint_that_cannot_be_reached_is_retried_three_times_then_dropped(files, tmp_path, case):
    with contextlib.ExitStack() as stack:
        url = (f"https://127.0.0.1:{free_port()}/webhooks/ses" if case == "down"
               else stack.enter_context(untrusted_endpoint(tmp_path)))
        pub = publisher(files, url, request_timeout=2)
        try:
            message_id = pub.subscribe()
            outcomes = settled(pub, 1)
        finally:
            pub.close()
    attempts = pub.attempts_for(message_id)
    assert outcomes[message_id].startswith("dropped: 3 retries failed")
    assert [(a.attempt, a.status) for a in attempts] == [(1, None), (2, None), (3, None), (4, None)]
    assert {a.error for a in attempts} == {"SSLError" if case != "down" else "ConnectionError"}
    assert all(gap >= RETRY_GAP for gap in gaps([a.at for a in attempts]))


def test_events_go_out_in_time_order_each_at_its_time(files, endpoint):
    recorder, url = endpoint
    rules = EventRules(delivery_after=EventRules().delivery_after * 2)
    pub = publisher(files, url, rules=rules, workers=1)
    try:
        confirm_directly(pub)
        started = time.monotonic()
        events = pub.publish(accepted("ooto@simulator.amazonses.com"))
        settled(pub, len(events))
    finally:
        pub.close()
    kinds = [json.loads(parse_envelope(r["body"])["Message"])["eventType"] for r in recorder.requests]
    assert kinds == ["Send", "Delivery", "Bounce"]
    offsets = [r["at"] - started for r in recorder.requests]
    expected = [(e.at - events[0].at).total_seconds() for e in events]
    assert all(offset >= due - 0.05 for offset, due in zip(offsets, expected, strict=True))
