"""The local SES: moto behind a layer that records every accepted SendEmail with its receive time, tells listeners,
and shows the messages in a local inbox.

Most tests run `python -m devstack.local_ses` as `make up` does, on a free port, and talk to it with boto3 and
HTTP; the listener tests serve the app in a thread of the test process, where the listeners live. The inbox is
also opened in Debian's Chromium and clicked through as a developer would.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import io
import json
import logging
import re
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack.local_ses.message import AcceptedMessage
from devstack.local_ses.server import MessageStore, _ArrivalTimedSocket, create_app, serving
from devstack.processes import wait_until
from tests.browser import headless_chromium

HOSTILE_SUBJECT = '<script>alert("subject")</script> Spring sale'
UNSUBSCRIBE = "<https://track.example.test/u/tok123>, <mailto:unsubscribe@example.com?subject=unsubscribe>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _client(endpoint: str):
    client = boto3.client("sesv2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1},
                                                                         max_pool_connections=8))
    client.create_email_identity(EmailIdentity="example.com")
    return client


def _raw(to: str, subject: str = "Hello Ann", html: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Example News <news@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message["List-Unsubscribe"] = UNSUBSCRIBE
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("Hello Ann, the text part.\n")
    message.add_alternative(html or '<html><body><p id="greeting">Hello Ann, the HTML part.</p></body></html>',
                            subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def _send(client, to: str, *, sender: str = "news@example.com", tags: dict | None = None, raw: bytes | None = None,
          **raw_args) -> str:
    answer = client.send_email(
        FromEmailAddress=sender, Destination={"ToAddresses": [to]},
        Content={"Raw": {"Data": raw or _raw(to, **raw_args)}},
        EmailTags=[{"Name": name, "Value": value} for name, value in (tags or {}).items()],
        ConfigurationSetName="campaign-events")
    return answer["MessageId"]


def _listed(endpoint: str) -> dict[str, dict]:
    status, _, body = _get(f"{endpoint}/local-ses/messages")
    assert status == 200
    return {m["message_id"]: m for m in json.loads(body)["messages"]}


@pytest.fixture(scope="module")
def endpoint():
    """`python -m devstack.local_ses` on a free port, as the stack starts it; stopped after the module."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "devstack.local_ses", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/moto-api/data.json")[0] == 200, what="local SES", timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def ses(endpoint):
    """A sesv2 client on the local SES with example.com verified."""
    return _client(endpoint)


@pytest.fixture
def in_process():
    """The local SES app served in a thread of this process: (app, store, sesv2 client, endpoint)."""
    app, store = create_app()
    with serving(app) as url:
        yield app, store, _client(url), url


def _until_the_kernel_stamps(arrival: _ArrivalTimedSocket, client: socket.socket) -> None:
    """Linux turns receive timestamps on for the whole host a moment after the first socket asks (a deferred
    static key), so the first segments may come unstamped: exchange a byte until one is stamped."""
    for _ in range(200):
        arrival.expect_request()
        client.sendall(b"x")
        assert arrival.readinto(bytearray(1)) == 1
        if arrival.arrived_ns is not None:
            arrival.expect_request()
            return
        time.sleep(0.01)
    raise AssertionError("the kernel never stamped a received segment (SO_TIMESTAMPNS)")


def test_a_request_is_stamped_with_when_its_bytes_arrived_not_when_the_server_read_them():
    """A rate at SES's door is judged by the receive times: they are the kernel's stamp of a request's first bytes,
    so a server thread that gets to the request late (behind moto's work on others) does not move them."""
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        conn, _ = server.accept()
        with conn:
            arrival = _ArrivalTimedSocket(conn)
            _until_the_kernel_stamps(arrival, client)
            client.sendall(b"POST /v2/email/outbound-emails HTTP/1.1\r\n")
            select.select([conn], [], [], 30)  # the bytes are in the socket: a server reading now is late
            late_read = time.time_ns()
            line = io.BufferedReader(arrival).readline()
    assert line == b"POST /v2/email/outbound-emails HTTP/1.1\r\n"
    assert arrival.arrived_ns is not None
    assert arrival.arrived_ns <= late_read


def test_an_accepted_send_is_listed_with_its_receive_time_exact_tags_and_configuration_set(endpoint, ses):
    to = f"ann-{uuid.uuid4().hex[:8]}@example.org"
    before = dt.datetime.now(dt.UTC)
    message_id = _send(ses, to, tags={"campaign": "42", "recipient": "1007"})
    after = dt.datetime.now(dt.UTC)

    listed = _listed(endpoint)[message_id]
    received_at = dt.datetime.fromisoformat(listed["received_at"])
    assert before <= received_at <= after
    assert listed["received_at"] == received_at.isoformat(timespec="microseconds")
    assert listed["tags"] == {"campaign": "42", "recipient": "1007"}
    assert listed["configuration_set"] == "campaign-events"
    assert listed["destinations"] == [to]
    assert listed["source"] == "news@example.com"
    assert "raw" not in listed


def test_the_raw_route_returns_exactly_the_bytes_that_were_sent(endpoint, ses):
    raw = _raw(f"raw-{uuid.uuid4().hex[:8]}@example.org", subject="Grüße, Ann")
    message_id = _send(ses, "ann@example.org", raw=raw)

    status, headers, body = _get(f"{endpoint}/local-ses/messages/{message_id}/raw")
    assert status == 200
    assert headers["Content-Type"].startswith("message/rfc822")
    assert body == raw
    assert _get(f"{endpoint}/local-ses/messages/no-such-id/raw")[0] == 404


def test_a_send_from_an_unverified_sender_is_rejected_and_records_nothing(endpoint, ses):
    before = _listed(endpoint)
    with pytest.raises(ClientError) as rejected:
        _send(ses, "ann@example.org", sender="news@unverified.example")
    assert rejected.value.response["Error"]["Code"] == "MessageRejected"
    assert _listed(endpoint) == before


def test_moto_still_answers_every_call_and_lists_the_message_in_its_data_json(endpoint, ses):
    message_id = _send(ses, f"moto-{uuid.uuid4().hex[:8]}@example.org")

    status, _, body = _get(f"{endpoint}/moto-api/data.json")
    assert status == 200
    assert message_id in {m["id"] for m in json.loads(body)["ses"]["RawMessage"]}
    assert ses.get_email_identity(EmailIdentity="example.com")["IdentityType"] == "DOMAIN"
    name = f"events-{uuid.uuid4().hex[:8]}"
    ses.create_configuration_set(ConfigurationSetName=name)
    assert ses.get_configuration_set(ConfigurationSetName=name)["ConfigurationSetName"] == name


def test_concurrent_sends_are_all_recorded_once(endpoint, ses):
    prefix = f"many-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: _send(ses, f"{prefix}-{i}@example.org"), range(120)))

    listed = _listed(endpoint)
    assert len(set(ids)) == 120
    assert set(ids) <= set(listed)
    assert sorted(listed[i]["destinations"][0] for i in ids) == sorted(f"{prefix}-{i}@example.org" for i in range(120))


def test_listeners_are_called_once_per_accepted_message_and_never_for_a_rejected_one(in_process):
    app, store, client, _ = in_process
    seen: list[AcceptedMessage] = []
    app.add_listener(seen.append)

    first = _raw("listen-0@example.org")
    ids = [_send(client, f"listen-{i}@example.org", tags={"campaign": "9"}, raw=first if i == 0 else None)
           for i in range(3)]
    with pytest.raises(ClientError):
        _send(client, "listen-x@example.org", sender="news@unverified.example")

    assert [m.message_id for m in seen] == ids
    assert seen == store.all()
    assert seen[0].raw == first
    assert seen[0].tags == {"campaign": "9"}


def test_a_raising_listener_does_not_fail_the_send_and_is_logged(in_process, caplog):
    app, store, client, _ = in_process
    after: list[str] = []

    def broken(message: AcceptedMessage) -> None:
        raise RuntimeError("publisher is down")

    app.add_listener(broken)
    app.add_listener(lambda message: after.append(message.message_id))

    with caplog.at_level(logging.ERROR, logger="devstack.local_ses.server"):
        message_id = _send(client, "ann@example.org")

    assert store.get(message_id) is not None
    assert after == [message_id]  # the listeners after the broken one still ran
    failures = [r for r in caplog.records if message_id in r.getMessage()]
    assert len(failures) == 1
    assert "publisher is down" in failures[0].exc_text


def test_moto_api_reset_forgets_moto_state_and_the_recorded_messages(in_process):
    _, store, client, url = in_process
    _send(client, "ann@example.org")
    assert len(store) == 1

    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert len(store) == 0
    assert _listed(url) == {}
    assert client.list_email_identities()["EmailIdentities"] == []


def test_a_simple_send_is_recorded_as_a_mime_message_the_inbox_can_show(in_process):
    _, store, client, url = in_process
    message_id = client.send_email(
        FromEmailAddress="news@example.com", Destination={"ToAddresses": ["ann@example.org"]},
        Content={"Simple": {"Subject": {"Data": "Plain hello"}, "Body": {"Text": {"Data": "Just text"},
                                                                           "Html": {"Data": "<p>Just HTML</p>"}}}},
    )["MessageId"]

    recorded = email.message_from_bytes(store.get(message_id).raw, policy=email.policy.default)
    assert recorded["Subject"] == "Plain hello"
    assert recorded.get_body(("plain",)).get_content().strip() == "Just text"
    assert _get(f"{url}/inbox/{message_id}/html")[2].strip() == b"<p>Just HTML</p>"


def test_the_store_forgets_the_oldest_messages_past_its_bound_and_counts_them():
    store = MessageStore(max_messages=2)
    now = dt.datetime.now(dt.UTC)
    for i in range(3):
        store.add(AcceptedMessage(message_id=f"m{i}", received_at=now, source="a@example.com",
                                  destinations=("b@example.org",), raw=b""))

    assert [m.message_id for m in store.all()] == ["m1", "m2"]
    assert store.get("m0") is None
    assert store.evicted == 1


def test_the_inbox_lists_messages_newest_first_with_time_to_subject_and_campaign(endpoint, ses):
    stamp = uuid.uuid4().hex[:8]
    _send(ses, f"older-{stamp}@example.org", subject=f"Older {stamp}", tags={"campaign": "31"})
    _send(ses, f"newer-{stamp}@example.org", subject=f"Newer {stamp}", tags={"campaign": "32"})

    status, headers, body = _get(f"{endpoint}/inbox")
    page = body.decode()
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert page.index(f"Newer {stamp}") < page.index(f"Older {stamp}")
    row = page[page.index(f"newer-{stamp}@example.org") - 200:page.index(f"Newer {stamp}") + 200]
    assert "<td>32</td>" in row
    assert dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") in row


def test_the_message_page_shows_headers_text_and_the_html_in_a_sandboxed_frame(endpoint, ses):
    message_id = _send(ses, "ann@example.org", tags={"campaign": "42"})

    status, headers, body = _get(f"{endpoint}/inbox/{message_id}")
    page = body.decode()
    assert status == 200
    assert "script-src" not in headers["Content-Security-Policy"]  # our page runs no script either
    assert "List-Unsubscribe-Post" in page
    assert "&lt;https://track.example.test/u/tok123&gt;" in page
    assert "Hello Ann, the text part." in page
    assert f'<iframe title="HTML part" sandbox src="/inbox/{message_id}/html">' in page
    assert "Hello Ann, the HTML part." not in page  # the HTML only ever renders inside the frame
    assert _get(f"{endpoint}/inbox/no-such-id")[0] == 404


def test_a_hostile_subject_is_escaped_in_the_inbox_and_on_the_message_page(endpoint, ses):
    message_id = _send(ses, "mallory@example.org", subject=HOSTILE_SUBJECT)

    for url in (f"{endpoint}/inbox", f"{endpoint}/inbox/{message_id}"):
        page = _get(url)[2].decode()
        assert "<script>" not in page
        assert "&lt;script&gt;alert(&#34;subject&#34;)&lt;/script&gt; Spring sale" in page


def test_the_html_part_is_served_alone_under_a_strict_content_security_policy(endpoint, ses):
    message_id = _send(ses, "ann@example.org", html="<p>Hi</p><script>alert(1)</script>")

    status, headers, body = _get(f"{endpoint}/inbox/{message_id}/html")
    policy = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "sandbox" in policy  # scripts off and an opaque origin even when opened outside the frame
    assert "default-src 'none'" in policy
    assert "img-src data:" in policy  # no remote image: the open pixel would count an open
    assert "frame-ancestors 'self'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.strip() == b"<p>Hi</p><script>alert(1)</script>"  # served as sent; the policy, not editing, disarms it
    allowing = _get(f"{endpoint}/inbox/{message_id}/html?images=1")[1]["Content-Security-Policy"]
    assert "img-src data: http: https:" in allowing
    assert "script-src" not in allowing


def test_a_developer_opens_the_inbox_in_chromium_and_clicks_into_a_message(endpoint, ses, tmp_path):
    stamp = uuid.uuid4().hex[:8]
    subject = f"{HOSTILE_SUBJECT} {stamp}"
    html = ('<html><body><p id="greeting">Hello Ann, the HTML part.</p><p id="js">scripts stay off</p>'
            '<script>document.getElementById("js").textContent = "a script ran";'
            'try { parent.document.title = "pwned"; } catch (e) {}</script></body></html>')
    _send(ses, f"browser-{stamp}@example.org", subject=subject, html=html, tags={"campaign": "77"})
    dialogs: list[str] = []
    with headless_chromium() as browser:
        page = browser.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{endpoint}/inbox")
        page.get_by_role("link", name=subject).click()
        page.wait_for_url(f"{endpoint}/inbox/*")

        assert page.locator("h1").inner_text() == subject  # shown as text, not run
        assert "List-Unsubscribe" in page.locator("section", has_text="Headers").inner_text()
        assert "Hello Ann, the text part." in page.locator("pre").inner_text()
        frame = page.frame_locator("iframe[title='HTML part']")
        assert frame.locator("#greeting").inner_text() == "Hello Ann, the HTML part."
        assert frame.locator("#js").inner_text() == "scripts stay off"
        page.screenshot(path=str(tmp_path / "local-inbox-message.png"), full_page=True)
        assert page.title() != "pwned"
        page.get_by_role("link", name="all messages").click()
        page.wait_for_url(f"{endpoint}/inbox")
        assert page.get_by_role("link", name=subject).count() == 1
    assert dialogs == []


def test_the_message_store_is_safe_to_fill_from_many_threads():
    store = MessageStore(max_messages=1000)
    now = dt.datetime.now(dt.UTC)

    def fill(worker: int) -> None:
        for i in range(500):
            store.add(AcceptedMessage(message_id=f"w{worker}-{i}", received_at=now, source="a@example.com",
                                      destinations=("b@example.org",), raw=b""))

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store) == 1000
    assert store.evicted == 1000


def test_ses_adds_the_feedback_id_from_the_two_tags_and_its_own_date_and_message_id(in_process):
    _, store, client, url = in_process
    sent = _raw("ann@example.org")
    sent = b"Date: Mon, 01 Jan 2001 00:00:00 +0000\r\nMessage-ID: <mine@example.com>\r\n" + sent
    message_id = _send(client, "ann@example.org", raw=sent,
                       tags={"ses:feedback-id-a": "nov-news", "ses:feedback-id-b": "newsletter", "campaign": "7"})

    recorded = store.get(message_id)
    assert recorded.raw == sent  # what SendEmail carried stays as it was
    campaign, sender, internal, platform = recorded.feedback_id.split(":")
    assert (campaign, sender, platform) == ("nov-news", "newsletter", "AmazonSES")
    assert re.fullmatch(r"1\.us-east-1\.[A-Za-z0-9+/]{43}=", internal)
    assert _listed(url)[message_id]["feedback_id"] == recorded.feedback_id

    delivered = email.message_from_bytes(recorded.delivered(), policy=email.policy.default)
    assert delivered.get_all("Feedback-ID") == [recorded.feedback_id]
    # SES overwrites a Date and a Message-ID the sender wrote: one of each, SES's
    assert delivered.get_all("Message-ID") == [f"<{message_id}@email.amazonses.com>"]
    assert [d.datetime for d in delivered.get_all("Date")] == [recorded.received_at.replace(microsecond=0)]
    assert recorded.delivered().partition(b"\r\n\r\n")[2] == sent.partition(b"\r\n\r\n")[2]  # the body as sent
    assert delivered["List-Unsubscribe"] == UNSUBSCRIBE

    status, _, page = _get(f"{url}/inbox/{message_id}")
    assert status == 200
    assert recorded.feedback_id.encode() in page


def test_without_the_tags_the_feedback_id_has_only_ses_parts(in_process):
    _, store, client, _ = in_process
    message_id = _send(client, "ann@example.org", tags={"campaign": "7"})

    assert store.get(message_id).feedback_id.startswith("::1.us-east-1.")
    assert store.get(message_id).feedback_id.endswith("=:AmazonSES")
