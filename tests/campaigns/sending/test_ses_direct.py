"""The direct SendEmail path (sending/ses_direct.py) against botocore's own client, on the wire.

A small local server stands in for SES: it records every request's bytes as they arrive and answers as told. With
the signer's clock and the invocation id frozen, the client path (SesTransport(direct=False): client.send_email) and
the direct path must write the same bytes and raise the same errors after classify.
"""

from __future__ import annotations

import datetime
import json
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import botocore.auth
import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from campaigns.errors import SendError, SlotMissed
from campaigns.sending.ses import (
    ACCOUNT_STOPPED,
    NOT_PROCESSED,
    REJECTED,
    THROTTLING,
    SesTransport,
    client_config,
)
from campaigns.sending.ses_direct import DirectSendEmail

READ_TIMEOUT = 0.4
OK = b'{"MessageId":"0100018c-local-message-id"}'


@dataclass
class Arrival:
    at: float  # time.monotonic() when the request's last byte arrived
    raw: bytes


@dataclass
class FarEnd:
    """What the stand-in answers (raw HTTP response bytes; None: never answer; b"": close the connection)."""

    port: int
    answer: bytes | None = b""
    arrivals: list[Arrival] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def http_answer(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "x-amzn-RequestId: local-request-1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_request(stream) -> bytes | None:
    """One HTTP request's bytes from a connection (None when the client closed it)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        if not line:
            return None
        head += line
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + stream.read(length)


@pytest.fixture
def far_end() -> Iterator[FarEnd]:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while (raw := read_request(self.rfile)) is not None:
                end.arrivals.append(Arrival(time.monotonic(), raw))
                if end.answer is None:
                    end.released.wait(5)
                    return
                if not end.answer:
                    return
                self.wfile.write(end.answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    end = FarEnd(server.server_address[1], answer=http_answer(200, OK))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield end
    end.released.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def frozen(monkeypatch):
    """The two things that differ between two calls of the same message: the signing time, the invocation id."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime(2026, 12, 4, 9, 30, 0))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("00000000-0000-4000-8000-000000000019"))


def sending_client(endpoint_url: str):
    return boto3.client("sesv2", region_name="eu-west-1", endpoint_url=endpoint_url,
                        aws_access_key_id="AKIDLOCALTEST", aws_secret_access_key="local-secret",
                        aws_session_token="local-session-token",
                        config=client_config().merge(Config(read_timeout=READ_TIMEOUT, connect_timeout=0.5)))


@pytest.fixture
def transports(far_end):
    """(client path, direct path) over one client, as a send task shares one client between its threads."""
    client = sending_client(far_end.url)
    return SesTransport(client, direct=False), SesTransport(client)


UTF8_MESSAGE = ("From: =?utf-8?q?Zo=C3=AB?= <news@example.com>\r\nSubject: Grüße, café ☕\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour Zoë, ça va ?\r\n").encode()
MESSAGES = {
    "ascii, one tag, no configuration set": (
        dict(raw=b"Subject: hello\r\n\r\nhello\r\n", from_email="news@example.com", to="ann@example.org",
             tags={"campaign": "7"}), None),
    "utf-8 headers and addresses, many tags, configuration set": (
        dict(raw=UTF8_MESSAGE, from_email="Zoë <news@example.com>", to="zoë@exämple.org",
             tags={"ses:feedback-id-a": "nov-news", "ses:feedback-id-b": "newsletter", "campaign": "7",
                   "recipient": "123456"}), "campaign-events"),
    "4 KB body, configuration set": (
        dict(raw=b"Subject: big\r\n\r\n" + b"x" * 76 * 54, from_email="news@example.com", to="bo@example.org",
             tags={"campaign": "8", "recipient": "9"}), "campaign-events"),
}


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
def test_the_direct_path_writes_the_bytes_the_client_writes(far_end, frozen, message):
    fields, configuration_set = message
    client = sending_client(far_end.url)
    by_client = SesTransport(client, configuration_set=configuration_set, direct=False)
    direct = SesTransport(client, configuration_set=configuration_set)

    ids = [by_client.send(**fields), direct.send(**fields)]

    [through_client, through_direct] = [arrival.raw for arrival in far_end.arrivals]
    assert ids == ["0100018c-local-message-id"] * 2
    assert through_direct == through_client
    head = through_client.split(b"\r\n\r\n", 1)[0]
    assert b"Authorization: AWS4-HMAC-SHA256 Credential=AKIDLOCALTEST/20261204/eu-west-1/ses/" in head
    assert b"X-Amz-Security-Token: local-session-token" in head


def test_the_direct_path_answers_what_the_client_answers(far_end, frozen):
    client = sending_client(far_end.url)
    params = {"FromEmailAddress": "news@example.com", "Destination": {"ToAddresses": ["ann@example.org"]},
              "Content": {"Raw": {"Data": b"x"}}, "ConfigurationSetName": "campaign-events"}

    assert DirectSendEmail(client).call(params) == client.send_email(**params)


def test_credentials_are_fetched_through_the_chain_on_every_call(far_end):
    refreshed: list[int] = []

    def refresh() -> dict[str, str]:
        refreshed.append(len(refreshed) + 1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
        return {"access_key": f"AKIDROTATED{len(refreshed)}", "secret_key": "s", "token": "t",
                "expiry_time": expiry.isoformat()}

    session = botocore.session.get_session()
    session._credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test-chain")
    client = boto3.Session(botocore_session=session).client(
        "sesv2", region_name="eu-west-1", endpoint_url=far_end.url, config=client_config())
    direct = SesTransport(client)

    for _ in range(2):  # 5 minutes left is inside botocore's mandatory refresh window: each call refreshes
        direct.send(raw=b"x", from_email="news@example.com", to="ann@example.org", tags={})

    assert refreshed == [1, 2, 3]
    credentials = [arrival.raw.split(b"Credential=", 1)[1].split(b"/", 1)[0] for arrival in far_end.arrivals]
    assert credentials == [b"AKIDROTATED2", b"AKIDROTATED3"]


def error_answer(code: str, status: int = 400) -> bytes:
    return http_answer(status, json.dumps({"message": f"local {code}"}).encode(),
                       **{"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"})


ANSWERS = {
    **{code: error_answer(code, 429 if code in THROTTLING else 400)
       for code in sorted(THROTTLING | REJECTED | ACCOUNT_STOPPED)},
    **{code: error_answer(code, 503) for code in sorted(NOT_PROCESSED)},
    "unknown code": error_answer("BrandNewException"),
    "InternalFailure": error_answer("InternalFailure", 500),
    "5xx html": http_answer(502, b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    "non-JSON 400": http_answer(400, b"this is not json", "text/plain"),
    "connection closed without an answer": b"",
    "read timeout": None,
}


def outcome(transport: SesTransport) -> tuple:
    """What the sender sees from one send: the SendError's type, text and code, and what botocore raised."""
    with pytest.raises(SendError) as caught:
        transport.send(raw=b"Subject: x\r\n\r\nx\r\n", from_email="news@example.com", to="ann@example.org",
                       tags={"campaign": "7"})
    error, cause = caught.value, caught.value.__cause__
    answer = getattr(cause, "response", None)
    return type(error), str(error), getattr(error, "code", None), type(cause), str(cause), answer


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_every_error_answer_is_raised_as_the_client_raises_it(far_end, transports, answer):
    far_end.answer = answer
    by_client, direct = transports

    assert outcome(direct) == outcome(by_client)
    assert len(far_end.arrivals) == 2  # each path wrote its request once: botocore's retries stay off


def test_an_unreachable_endpoint_is_raised_as_the_client_raises_it():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = sending_client(f"http://127.0.0.1:{port}")

    direct = outcome(SesTransport(client))

    assert direct == outcome(SesTransport(client, direct=False))
    assert direct[0].__name__ == "NotSent"


SLOW_SIGNING = 0.25  # seconds a loaded signer takes in these tests
WRITE_BOUND = 0.1  # how late after its slot a request may still be written


@pytest.mark.parametrize("direct", [True, False], ids=["direct path", "client path"])
def test_a_send_is_signed_first_then_written_at_its_slot(far_end, transports, direct):
    transport = transports[1] if direct else transports[0]
    signed_at: list[float] = []

    def slow_signing(**kwargs) -> None:
        time.sleep(SLOW_SIGNING)
        signed_at.append(time.monotonic())

    transport.client.meta.events.register("before-sign.sesv2.SendEmail", slow_signing)
    slot = time.monotonic() + 2 * SLOW_SIGNING

    transport.send(raw=b"x", from_email="news@example.com", to="ann@example.org", tags={}, not_before=slot)

    [arrival] = far_end.arrivals
    assert signed_at[0] < slot  # the signing happened while waiting for the slot, not after it
    assert slot <= arrival.at < slot + WRITE_BOUND


@pytest.mark.parametrize("direct", [True, False], ids=["direct path", "client path"])
def test_a_slot_already_past_is_written_at_once(far_end, transports, direct):
    transport = transports[1] if direct else transports[0]
    started = time.monotonic()

    transport.send(raw=b"x", from_email="news@example.com", to="ann@example.org", tags={},
                   not_before=started - 1.0)

    [arrival] = far_end.arrivals
    assert arrival.at - started < WRITE_BOUND


@pytest.mark.parametrize("direct", [True, False], ids=["direct path", "client path"])
def test_a_request_ready_after_its_latest_instant_is_not_written(far_end, transports, direct):
    """Written late it would bunch with other workers' on-time sends at SES's door: it takes a new slot instead."""
    transport = transports[1] if direct else transports[0]
    now = time.monotonic()

    with pytest.raises(SlotMissed, match="after its slot"):
        transport.send(raw=b"x", from_email="news@example.com", to="ann@example.org", tags={},
                       not_before=now - 0.02, latest=now - 0.01)

    transport.send(raw=b"y", from_email="news@example.com", to="bo@example.org", tags={})
    [arrival] = far_end.arrivals  # the first was never written; the connection still serves the next
    assert b"bo@example.org" in arrival.raw
