"""The local SES: moto's own server app, unchanged for every AWS call, plus a record of what SendEmail accepted and a
local inbox to read it. Dev stack and tests only.

Every request goes to moto's `DomainDispatcherApplication` exactly as under `moto_server` (`/moto-api/data.json`,
`/moto-api/reset` included). A SESv2 SendEmail (`POST /v2/email/outbound-emails`) that moto answers 200 is also
recorded as an `AcceptedMessage` (its receive time: when the request's first bytes reached this host, the kernel's
receive timestamp, so the server's own load cannot shift it; see ArrivalTimedHandler) and handed to every listener
before the answer goes out; a rejected one (unverified sender, bad request) records nothing.

For the event publisher and tests:

    app, store = create_app(listeners=(publish,))   # app: a WSGI app; store: the MessageStore it records into
    app.add_listener(fn)                            # fn(message: AcceptedMessage) -> None, also after start
    with serving(app) as endpoint: ...              # a threaded server on a free loopback port, for tests

A listener runs in the request's thread, once per accepted message, after the message is in the store and before
SendEmail answers: it must only hand the message on (a queue, its own thread), since the send path pushes 100-200
sends/s at this server. An exception from a listener is logged and never changes the SendEmail answer.

Routes of our own (everything else is moto's):

    GET /local-ses/messages              JSON {"messages": [...], "evicted": n}, oldest first, without the raw bytes
                                         (each with `feedback_id`, the Feedback-ID header SES adds)
    GET /local-ses/messages/<id>/raw     the message as sent (message/rfc822)
    GET /inbox                           the accepted messages, newest first
    GET /inbox/<id>                      one message: its headers as delivered (AcceptedMessage.delivered: SES's
                                         Feedback-ID, Date, Message-ID), text part, HTML part in a sandboxed iframe
    GET /inbox/<id>/html                 the HTML part alone, for that iframe, under a strict Content-Security-Policy

The SES account-level suppression list, which moto does not have (5.2.5 answers 404 to all four calls), is served
by `AccountSuppressionList` on the REST paths of botocore's sesv2 model, with SES's answers and errors:

    GET    /v2/email/suppression/addresses           ListSuppressedDestinations (StartDate, EndDate, Reason,
                                                     PageSize, NextToken)
    PUT    /v2/email/suppression/addresses           PutSuppressedDestination (BadRequestException: bad reason)
    GET    /v2/email/suppression/addresses/<email>   GetSuppressedDestination (NotFoundException: not on it)
    DELETE /v2/email/suppression/addresses/<email>   DeleteSuppressedDestination (NotFoundException: not on it)

Tests seed it with a chosen LastUpdateTime: `app.suppressions.seed("ann@example.com", "BOUNCE", at)`.

Why a page of our own rather than a mail catcher: the messages arrive by the SES API, not SMTP. Debian packages
none of MailHog, Mailpit or MailDev; maildump (PyPI) and MailDev (npm) catch SMTP only, so they would need an SMTP
relay hop per message, another process (maildump also brings gevent into Airflow's pinned environment, MailDev a
Node runtime), and would not know what the inbox must show from the SES call: the MessageId, the EmailTags
(campaign) and the configuration set. aws-ses-v2-local (npm) speaks the SES v2 API but would replace moto, which
the stack needs for the identities, configuration sets and event destinations that preflight and ses-doctor read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.policy
import email.utils
import io
import json
import logging
import socket
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_input_stream

from devstack.local_ses.message import AcceptedMessage

SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; Python's socket module does not name it. SCM_TIMESTAMPNS is the same.
_TIMESTAMP_SPACE = socket.CMSG_SPACE(16)  # one struct timespec
ARRIVED_AT = "local_ses.arrived_at"  # the WSGI environ key of a request's kernel receive time (UTC datetime)

log = logging.getLogger(__name__)

Listener = Callable[[AcceptedMessage], None]
SEND_EMAIL_PATH = "/v2/email/outbound-emails"
SUPPRESSION_PATH = "/v2/email/suppression/addresses"
SUPPRESSION_REASONS = ("BOUNCE", "COMPLAINT")
SUPPRESSION_MAX_PAGE_SIZE = 1000  # SES's own maximum and its default
DEFAULT_MAX_MESSAGES = 100_000
INBOX_PAGE_SIZE = 200
# The HTML part runs with no scripts, no plugins, no forms and an opaque origin even when opened on its own (the
# CSP `sandbox` directive), may only be framed by the inbox, and loads nothing from the network: a remote image
# would be the tracking pixel, and loading it would record an open the reader never made.
HTML_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; "
            "form-action 'none'; base-uri 'none'; frame-ancestors 'self'")
HTML_CSP_REMOTE_IMAGES = HTML_CSP.replace("img-src data:", "img-src data: http: https:")
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'none'; base-uri 'none'"


class MessageStore:
    """Accepted messages in arrival order, in memory, thread-safe; past `max_messages` the oldest are evicted."""

    def __init__(self, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.max_messages = max_messages
        self.evicted = 0
        self._messages: OrderedDict[str, AcceptedMessage] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, message: AcceptedMessage) -> None:
        """Record one accepted message (evicting the oldest when full)."""
        with self._lock:
            self._messages[message.message_id] = message
            while len(self._messages) > self.max_messages:
                self._messages.popitem(last=False)
                self.evicted += 1

    def all(self) -> list[AcceptedMessage]:
        """Every recorded message, oldest first (a copy: the store keeps taking messages meanwhile)."""
        with self._lock:
            return list(self._messages.values())

    def get(self, message_id: str) -> AcceptedMessage | None:
        """The message with this MessageId, or None."""
        with self._lock:
            return self._messages.get(message_id)

    def clear(self) -> None:
        """Forget every message (moto's /moto-api/reset does this too)."""
        with self._lock:
            self._messages.clear()
            self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


def accepted_message(request: dict[str, Any], message_id: str, received_at: dt.datetime) -> AcceptedMessage:
    """The AcceptedMessage for a SESv2 SendEmail request body that SES answered with `message_id`."""
    content = request.get("Content") or {}
    if "Raw" in content:
        raw = base64.b64decode(content["Raw"]["Data"])
    else:
        raw = _simple_as_mime(request.get("FromEmailAddress", ""), request.get("Destination") or {},
                              content.get("Simple") or {})
    destination = request.get("Destination") or {}
    destinations = [address for kind in ("ToAddresses", "CcAddresses", "BccAddresses")
                    for address in destination.get(kind, [])]
    if not destinations:
        # SES takes a raw message's recipients from its headers when the request names none
        headers = BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
        destinations = [address for _, address in email.utils.getaddresses(
            [str(value) for name in ("To", "Cc") for value in headers.get_all(name, [])])]
    return AcceptedMessage(
        message_id=message_id,
        received_at=received_at,
        source=request.get("FromEmailAddress", ""),
        destinations=tuple(destinations),
        raw=raw,
        tags={tag["Name"]: tag["Value"] for tag in request.get("EmailTags") or []},
        configuration_set=request.get("ConfigurationSetName"),
    )


def _simple_as_mime(source: str, destination: dict, simple: dict) -> bytes:
    """A Simple SendEmail as the MIME message SES would build from it, so the inbox can show it like a raw one."""
    message = EmailMessage()
    message["From"] = source
    if destination.get("ToAddresses"):
        message["To"] = ", ".join(destination["ToAddresses"])
    message["Subject"] = (simple.get("Subject") or {}).get("Data", "")
    body = simple.get("Body") or {}
    message.set_content((body.get("Text") or {}).get("Data", ""))
    if "Html" in body:
        message.add_alternative(body["Html"]["Data"], subtype="html")
    return message.as_bytes(policy=email.policy.SMTP)


def message_summary(message: AcceptedMessage) -> dict[str, Any]:
    """What /local-ses/messages lists for one message: everything but the raw bytes."""
    return {
        "message_id": message.message_id,
        "received_at": message.received_at.isoformat(timespec="microseconds"),
        "source": message.source,
        "destinations": list(message.destinations),
        "tags": message.tags,
        "configuration_set": message.configuration_set,
        "feedback_id": message.feedback_id,  # the Feedback-ID header SES adds, from the ses:feedback-id-* tags
    }


class LocalSes:
    """The WSGI app: moto for every AWS call, SendEmail recorded, plus /local-ses/* and /inbox."""

    def __init__(self, store: MessageStore, listeners: Iterable[Listener] = (), moto_app: Any = None) -> None:
        if moto_app is None:
            from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

            moto_app = DomainDispatcherApplication(create_backend_app)
        self.moto = moto_app
        self.store = store
        self._listeners: tuple[Listener, ...] = tuple(listeners)
        self._listeners_lock = threading.Lock()
        self._pages = _Pages(store)
        self._mounts: dict[str, Callable] = {}
        self.suppressions = AccountSuppressionList()

    def mount(self, path: str, app: Callable) -> None:
        """Serve exactly `path` with the WSGI app `app` (the event publisher's /sns/* routes)."""
        self._mounts[path] = app

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(message)` for every message accepted from now on."""
        with self._listeners_lock:
            # a new tuple, so a send iterating the old one is never disturbed
            self._listeners = (*self._listeners, listener)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        received_at = environ.get(ARRIVED_AT) or dt.datetime.now(dt.UTC)
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path in self._mounts:
            return self._mounts[path](environ, start_response)
        if path.startswith("/local-ses/") or path == "/inbox" or path.startswith("/inbox/"):
            return self._pages(environ, start_response)
        if method == "POST" and path == SEND_EMAIL_PATH:
            return self._send_email(environ, start_response, received_at)
        if path == SUPPRESSION_PATH or path.startswith(SUPPRESSION_PATH + "/"):
            return self.suppressions(environ, start_response)
        if method == "POST" and path == "/moto-api/reset":
            self.store.clear()
            self.suppressions.clear()
        return self.moto(environ, start_response)

    def _send_email(self, environ: dict[str, Any], start_response: Callable,
                    received_at: dt.datetime) -> Iterable[bytes]:
        body = get_input_stream(environ).read()
        # moto reads the body again: give it the bytes we consumed, with their length
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        answer: dict[str, Any] = {}
        written: list[bytes] = []  # WSGI's legacy write(); Flask never calls it, but nothing may get lost

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            answer.update(status=status, headers=headers, exc_info=exc_info)
            return written.append

        chunks = self.moto(environ, capture)
        try:
            response = b"".join([*written, *chunks])
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if answer["status"].startswith("200 "):
            self._record(body, response, received_at)
        start_response(answer["status"], answer["headers"], answer["exc_info"])
        return [response]

    def _record(self, request_body: bytes, response_body: bytes, received_at: dt.datetime) -> None:
        try:
            message = accepted_message(json.loads(request_body), json.loads(response_body)["MessageId"],
                                       received_at)
        except (ValueError, KeyError, TypeError, binascii.Error):
            # moto accepted it, so SES would have: keep answering, but say that the record misses it
            log.exception("local SES: an accepted SendEmail could not be recorded")
            return
        self.store.add(message)
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:  # a listener never fails the SendEmail answer
                log.exception("local SES: listener %r failed for message %s", listener, message.message_id)


class SesApiError(Exception):
    """An SES error answer: its code (SES's exception name), HTTP status and message."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    def response(self) -> Response:
        """As SES v2 answers (rest-json): the code in x-amzn-ErrorType, the message in the body."""
        return Response(json.dumps({"message": str(self)}), status=self.status, mimetype="application/json",
                        headers={"x-amzn-ErrorType": self.code})


@dataclass(frozen=True)
class SuppressedDestination:
    """One address on the account list, as SES keeps it."""

    email: str
    reason: str
    last_update_time: dt.datetime
    message_id: str | None = None
    feedback_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def summary(self) -> dict[str, Any]:
        """A SuppressedDestinationSummary; LastUpdateTime in Unix seconds, as SES sends timestamps."""
        return {"EmailAddress": self.email, "Reason": self.reason,
                "LastUpdateTime": self.last_update_time.timestamp()}


class AccountSuppressionList:
    """The SES account-level suppression list (the four calls moto lacks), in memory and thread-safe.

    Listed oldest LastUpdateTime first; NextToken is the position after the last entry returned (not an offset), so
    entries added while a caller pages never shift a page. Addresses are matched case-insensitively, as SES does.
    """

    def __init__(self) -> None:
        self._entries: dict[str, SuppressedDestination] = {}
        self._lock = threading.Lock()
        self.urls = Map([
            Rule(SUPPRESSION_PATH, endpoint="collection", methods=["GET", "PUT"]),
            Rule(f"{SUPPRESSION_PATH}/<path:email>", endpoint="address", methods=["GET", "DELETE"]),
        ], strict_slashes=False)

    def seed(self, email: str, reason: str, last_update_time: dt.datetime | None = None,
             message_id: str | None = None) -> None:
        """Put an address on the list as SES would have (a test's way to say when SES added it)."""
        entry = SuppressedDestination(email, reason, last_update_time or dt.datetime.now(dt.UTC), message_id)
        with self._lock:
            self._entries[email.lower()] = entry

    def entries(self) -> list[SuppressedDestination]:
        """Every entry, in list order."""
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.last_update_time, e.email.lower()))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            try:
                endpoint, args = self.urls.bind_to_environ(environ).match(request.path, method=request.method)
            except HTTPException as exc:
                raise SesApiError("BadRequestException", 400, f"unsupported request: {exc.name}") from exc
            if endpoint == "collection":
                body = self._list(request) if request.method == "GET" else self._put(request)
            else:
                body = self._get(args["email"]) if request.method == "GET" else self._delete(args["email"])
            response = Response(json.dumps(body), mimetype="application/json")
        except SesApiError as exc:
            response = exc.response()
        return response(environ, start_response)

    def _list(self, request: Request) -> dict[str, Any]:
        args = request.args
        start, end = _query_time(args, "StartDate"), _query_time(args, "EndDate")
        reasons = args.getlist("Reason")
        for reason in reasons:
            _check_reason(reason)
        size = _page_size(args.get("PageSize"))
        after = _next_token_position(args.get("NextToken"))
        matching = [e for e in self.entries()
                    if (start is None or e.last_update_time >= start) and (end is None or e.last_update_time <= end)
                    and (not reasons or e.reason in reasons)
                    and (after is None or (e.last_update_time.timestamp(), e.email.lower()) > after)]
        page = matching[:size]
        body: dict[str, Any] = {"SuppressedDestinationSummaries": [e.summary() for e in page]}
        if len(matching) > size:
            last = page[-1]
            position = json.dumps([last.last_update_time.timestamp(), last.email.lower()])
            body["NextToken"] = base64.urlsafe_b64encode(position.encode()).decode()
        return body

    def _put(self, request: Request) -> dict[str, Any]:
        try:
            payload = json.loads(request.get_data() or b"{}")
        except ValueError as exc:
            raise SesApiError("BadRequestException", 400, "the request body is not JSON") from exc
        email, reason = payload.get("EmailAddress"), payload.get("Reason")
        if not isinstance(email, str) or "@" not in email:
            raise SesApiError("BadRequestException", 400, f"invalid EmailAddress: {email!r}")
        _check_reason(reason)
        self.seed(email, reason)
        return {}

    def _get(self, email: str) -> dict[str, Any]:
        entry = self._find(email)
        return {"SuppressedDestination": {**entry.summary(), "Attributes": {
            **({"MessageId": entry.message_id} if entry.message_id else {}), "FeedbackId": entry.feedback_id}}}

    def _delete(self, email: str) -> dict[str, Any]:
        self._find(email)
        with self._lock:
            self._entries.pop(email.lower(), None)
        return {}

    def _find(self, email: str) -> SuppressedDestination:
        with self._lock:
            entry = self._entries.get(email.lower())
        if entry is None:
            raise SesApiError("NotFoundException", 404, f"Email address {email} does not exist on your "
                              "suppression list.")
        return entry


def _check_reason(reason: Any) -> None:
    if reason not in SUPPRESSION_REASONS:
        raise SesApiError("BadRequestException", 400, f"Reason must be one of {', '.join(SUPPRESSION_REASONS)}, "
                          f"got {reason!r}")


def _query_time(args: Any, name: str) -> dt.datetime | None:
    """A timestamp from the query string: ISO 8601, as botocore serialises it there (Unix seconds accepted too)."""
    raw = args.get(name)
    if raw is None:
        return None
    try:
        value = (dt.datetime.fromtimestamp(float(raw), dt.UTC) if raw.replace(".", "", 1).isdigit()
                 else dt.datetime.fromisoformat(raw))
    except ValueError as exc:
        raise SesApiError("BadRequestException", 400, f"{name} is not a timestamp: {raw!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _page_size(raw: str | None) -> int:
    if raw is None:
        return SUPPRESSION_MAX_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= SUPPRESSION_MAX_PAGE_SIZE:
        raise SesApiError("BadRequestException", 400, f"PageSize must be 1 to {SUPPRESSION_MAX_PAGE_SIZE}, "
                          f"got {raw!r}")
    return int(raw)


def _next_token_position(token: str | None) -> tuple[float, str] | None:
    if token is None:
        return None
    try:
        stamp, email = json.loads(base64.urlsafe_b64decode(token.encode()))
        return float(stamp), str(email)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SesApiError("InvalidNextTokenException", 400, "The NextToken is not valid.") from exc


def create_app(listeners: Iterable[Listener] = (), *, max_messages: int = DEFAULT_MAX_MESSAGES,
               ) -> tuple[LocalSes, MessageStore]:
    """The local SES WSGI app and the store it records accepted messages into."""
    store = MessageStore(max_messages)
    return LocalSes(store, listeners), store


class _ArrivalTimedSocket(io.RawIOBase):
    """A connection's reads through recvmsg with SO_TIMESTAMPNS: each read also gives the kernel's receive time.

    `arrived_ns` keeps the first timestamp seen since the last `expect_request()`: the request's first bytes.
    (Linux merges segments that queue up unread and keeps the later stamp: a request line and headers that
    arrive before the server reads them are stamped by the later of the client's writes, microseconds apart.)
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock = sock
        self.arrived_ns: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.arrived_ns is None:
            # A read's stamp is that of the last segment it took: take one byte, so it is the first segment's.
            buffer = memoryview(buffer)[:1]
        size, ancillary, _flags, _address = self._sock.recvmsg_into([buffer], _TIMESTAMP_SPACE)
        for level, kind, data in ancillary:
            if self.arrived_ns is None and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                self.arrived_ns = seconds * 1_000_000_000 + nanoseconds
        return size

    def expect_request(self) -> None:
        self.arrived_ns = None


def _arrival_timed_handler() -> type:
    """moto's request handler (as `moto_server` runs), reading through _ArrivalTimedSocket.

    A request's receive time is what a rate at SES's door is measured by. Taken in the WSGI app, it would also
    hold how long this server's thread waited for the GIL behind moto's work on other requests, which moves under
    load by tens of milliseconds and bunches the times; the kernel stamps the bytes when they arrive. HTTP/1.1
    clients wait for each answer before the next request on a connection, so the request line is always read
    afresh from the socket and its stamp is the request's.
    """
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class ArrivalTimedHandler(MotoRequestHandler):
        def setup(self) -> None:
            super().setup()
            self._arrival = _ArrivalTimedSocket(self.connection)
            self.rfile = io.BufferedReader(self._arrival)

        def handle_one_request(self) -> None:
            self._arrival.expect_request()
            super().handle_one_request()

        def make_environ(self) -> dict[str, Any]:
            environ = super().make_environ()
            if self._arrival.arrived_ns is not None:
                environ[ARRIVED_AT] = dt.datetime.fromtimestamp(self._arrival.arrived_ns / 1e9, dt.UTC)
            return environ

    return ArrivalTimedHandler


def make_server(app: LocalSes, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A threaded werkzeug server for `app`, stamping each request with its arrival (_arrival_timed_handler)."""
    from werkzeug.serving import make_server as werkzeug_server

    server = werkzeug_server(host, port, app, threaded=True, request_handler=_arrival_timed_handler())
    # Linux enables receive timestamps host-wide a moment after the first socket asks: ask at start, so the
    # first requests are stamped too (an unstamped one falls back to the time the app sees it).
    server.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return server


@contextlib.contextmanager
def serving(app: LocalSes, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` in a background thread for the block; yields its endpoint URL (a free port unless given)."""
    server = make_server(app, host, port)
    thread = threading.Thread(target=server.serve_forever, name="local-ses", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class _Pages:
    """/local-ses/* (JSON and raw bytes for tests) and /inbox (HTML for people)."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.templates = Environment(loader=PackageLoader("devstack.local_ses", "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True))
        self.urls = Map([
            Rule("/local-ses/messages", endpoint="messages"),
            Rule("/local-ses/messages/<message_id>/raw", endpoint="raw"),
            Rule("/inbox", endpoint="inbox"),
            Rule("/inbox/<message_id>", endpoint="message"),
            Rule("/inbox/<message_id>/html", endpoint="html"),
        ], strict_slashes=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, args = self.urls.bind_to_environ(environ).match(request.path, method=request.method)
            response = getattr(self, endpoint)(request, **args)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    def _message(self, message_id: str) -> AcceptedMessage:
        message = self.store.get(message_id)
        if message is None:
            raise NotFound(f"The local SES has no message {message_id} (it keeps the last "
                           f"{self.store.max_messages} and forgets all on restart).")
        return message

    def _page(self, template: str, **context: Any) -> Response:
        response = Response(self.templates.get_template(template).render(**context), mimetype="text/html")
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def messages(self, request: Request) -> Response:
        messages = self.store.all()
        body = {"messages": [message_summary(m) for m in messages], "evicted": self.store.evicted}
        return Response(json.dumps(body), mimetype="application/json")

    def raw(self, request: Request, message_id: str) -> Response:
        return Response(self._message(message_id).raw, mimetype="message/rfc822")

    def inbox(self, request: Request) -> Response:
        messages = self.store.all()
        newest = messages[:-INBOX_PAGE_SIZE - 1:-1]
        rows = []
        for message in newest:
            headers = BytesHeaderParser(policy=email.policy.default).parsebytes(message.raw)
            rows.append({"message": message, "subject": str(headers.get("Subject", "")),
                         "to": ", ".join(message.destinations), "campaign": message.tags.get("campaign", "")})
        return self._page("inbox.html", rows=rows, total=len(messages), evicted=self.store.evicted)

    def message(self, request: Request, message_id: str) -> Response:
        message = self._message(message_id)
        # the headers as the recipient gets them: SES's Feedback-ID, Date and Message-ID included
        parsed = BytesParser(policy=email.policy.default).parsebytes(message.delivered())
        text = parsed.get_body(("plain",))
        html = parsed.get_body(("html",))
        remote_images = request.args.get("images") == "1"
        return self._page(
            "message.html", message=message, subject=str(parsed.get("Subject", "")),
            headers=[(name, str(value)) for name, value in parsed.items()],
            text=text.get_content() if text is not None else None, has_html=html is not None,
            remote_images=remote_images)

    def html(self, request: Request, message_id: str) -> Response:
        parsed = BytesParser(policy=email.policy.default).parsebytes(self._message(message_id).raw)
        part = parsed.get_body(("html",))
        if part is None:
            raise NotFound("This message has no HTML part.")
        response = Response(part.get_content(), mimetype="text/html")
        response.headers["Content-Security-Policy"] = (HTML_CSP_REMOTE_IMAGES if request.args.get("images") == "1"
                                                       else HTML_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
