"""The local stack's SNS: SES events of accepted messages as signed SNS HTTP(S) notifications to the tracking
service's /webhooks/ses, with SNS's subscription handshake and retry policy. Dev stack and tests only.

What it copies from SNS (AWS SNS Developer Guide):
- The subscription starts with a SubscriptionConfirmation; "Amazon SNS will not send notifications to the endpoint
  until you confirm the subscription" ("Make sure your endpoint is ready to process Amazon SNS messages"). The
  endpoint confirms by GETting the SubscribeURL; the local SES mounts `confirm_app` (or calls `handle_confirm`) at
  the path the tracking service's SNS_TEST_CONFIRM_URL points at, usually /sns/confirm.
- Retries ("Setting Amazon SNS delivery retry policies for HTTP/HTTPS endpoints"): the default HTTP/S policy is
  3 retries in the backoff phase, minimum and maximum delay 20 s (so 20 s apart), nothing in the other phases;
  then the message is dropped. A failed attempt is an HTTP status 100-101 or 500-599, a request timeout (15 s; the
  next retry comes its delay after the timeout) or any connection error (refused, unreachable, bad TLS
  certificate). "Amazon SNS considers HTTP status codes 400 to 499 to indicate permanent delivery failure": no
  retry, dropped. Every other status is a delivery. Retries apply to every message, the confirmation included,
  and carry the same MessageId (and body). `retry_delay_factor` scales the 20 s so tests do not wait.
- Messages: SignatureVersion 2 (RSA PKCS#1 v1.5 over SHA256 of the canonical string
  campaigns.feedback.sns.string_to_sign checks), SigningCertURL and UnsubscribeURL of SNS's shape, SNS's headers
  and its pretty-printed JSON body. SES's configuration-set events carry the Subject
  "Amazon SES Email Event Notification".

Nothing here must survive a restart: a restarted publisher subscribes again, as after a redeployed topic.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from campaigns.feedback.sns import NOTIFICATION, SUBSCRIPTION_CONFIRMATION, string_to_sign, topic_region
from devstack.local_ses.events import EventBuilder, EventRules, SesEvent, iso
from devstack.local_ses.message import AcceptedMessage

log = logging.getLogger(__name__)

SES_EVENT_SUBJECT = "Amazon SES Email Event Notification"
USER_AGENT = "Amazon Simple Notification Service Agent"
SNS_RETRIES = 3  # the default HTTP/S delivery policy: 3 retries ...
SNS_RETRY_DELAY = 20.0  # ... 20 s apart (minDelayTarget = maxDelayTarget = 20, linear backoff)
SNS_REQUEST_TIMEOUT = 15.0  # SNS gives up on an HTTP/S request after 15 s
CONFIRM_NS = "http://sns.amazonaws.com/doc/2010-03-31/"

DELIVERED, RETRY, PERMANENT_FAILURE = "delivered", "retry", "permanent failure"


def classify(status: int | None) -> str:
    """What SNS makes of an answer: None (timeout, connection or TLS error), 100-101 and 5xx are retried, 4xx is a
    permanent failure, anything else is a delivery."""
    if status is None or 100 <= status <= 101 or 500 <= status <= 599:
        return RETRY
    if 400 <= status <= 499:
        return PERMANENT_FAILURE
    return DELIVERED


@dataclass(frozen=True)
class PublisherConfig:
    """Where the notifications go and how they are signed; the dev stack fills it from its own files."""

    endpoint: str  # the tracking service's /webhooks/ses, https
    topic_arn: str
    signing_key: Path  # PEM private key (RSA): the dev stack's sns-test.key
    signing_cert: Path  # its certificate (sns-test.pem, what SNS_TEST_CERT_PEM names): names the SigningCertURL
    ca_file: Path | None = None  # the only certificate trusted for the endpoint (the stack's tracking.crt)
    retry_delay_factor: float = 1.0  # 0.01: 20 s becomes 0.2 s
    request_timeout: float = SNS_REQUEST_TIMEOUT
    workers: int = 4  # concurrent deliveries; each takes the earliest due one
    record_limit: int = 100_000  # attempts, outcomes and receive times kept for tests (the newest)
    rules: EventRules = field(default_factory=EventRules)


@dataclass(frozen=True)
class DeliveryAttempt:
    """One HTTP POST of one SNS message: its MessageId, when, and the answer (status None: no answer)."""

    message_id: str
    kind: str  # the SNS Type
    attempt: int  # 1 is the first delivery, 2.. the retries
    at: float  # time.monotonic() when the request was sent
    status: int | None
    error: str | None = None


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    envelope: dict[str, Any] | None = field(compare=False, default=None)  # a built SNS message being delivered
    event: SesEvent | None = field(compare=False, default=None)  # an event not published yet
    attempt: int = field(compare=False, default=1)


class SnsPublisher:
    """Publishes the SES events of every accepted message to one HTTPS subscription, as SNS would."""

    def __init__(self, config: PublisherConfig, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.region = topic_region(config.topic_arn)
        self.events = EventBuilder(config.rules)
        self._key = serialization.load_pem_private_key(config.signing_key.read_bytes(), password=None)
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise ValueError(f"{config.signing_key} is not an RSA key: SNS signs with RSA")
        cert = x509.load_pem_x509_certificate(config.signing_cert.read_bytes())
        # SNS names its certificates by a hex digest; this one's digest is the local certificate's fingerprint
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:32]
        self.signing_cert_url = f"https://sns.{self.region}.amazonaws.com/SimpleNotificationService-{digest}.pem"
        self.subscription_arn = f"{config.topic_arn}:{uuid.uuid4()}"
        self._token = secrets.token_hex(64)
        self._confirmed = threading.Event()
        self._session = session  # one given for all threads, else one per delivery thread
        self._sessions = threading.local()
        self._clock = clock
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._busy = 0  # jobs taken by a thread and not finished
        # what tests read, bounded so a long-running stack does not grow without end
        limit = max(config.record_limit, 1)
        self.attempts: deque[DeliveryAttempt] = deque(maxlen=limit)  # every POST
        self.outcomes: OrderedDict[str, str] = OrderedDict()  # SNS MessageId -> delivered | dropped: why
        self.unpublished: deque[SesEvent] = deque(maxlen=limit)  # events due while the subscription was unconfirmed
        self.accepted: deque[tuple[str, datetime]] = deque(maxlen=limit)  # (SES MessageId, received at)

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> SnsPublisher:
        """Start the delivery threads (idempotent)."""
        with self._lock:
            if self._threads:
                return self
            self._stop = False
            self._threads = [threading.Thread(target=self._run, name=f"sns-publisher-{i}", daemon=True)
                             for i in range(max(self.config.workers, 1))]
        for thread in self._threads:
            thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads; what is not delivered yet is dropped (SNS would keep it, but nothing here persists)."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def __enter__(self) -> SnsPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the subscription -----------------------------------------------------------------------------------

    @property
    def confirmed(self) -> bool:
        """Whether the endpoint confirmed the subscription (only then are notifications delivered)."""
        return self._confirmed.is_set()

    @property
    def subscribe_url(self) -> str:
        """The SubscribeURL, in SNS's shape; the endpoint sends its query to `handle_confirm`."""
        return (f"https://sns.{self.region}.amazonaws.com/?Action=ConfirmSubscription"
                f"&TopicArn={self.config.topic_arn}&Token={self._token}")

    def subscribe(self) -> str:
        """Send the SubscriptionConfirmation (with SNS's retries); returns its MessageId."""
        envelope = self._sign({
            "Type": SUBSCRIPTION_CONFIRMATION,
            "MessageId": str(uuid.uuid4()),
            "Token": self._token,
            "TopicArn": self.config.topic_arn,
            "Message": (f"You have chosen to subscribe to the topic {self.config.topic_arn}.\n"
                        "To confirm the subscription, visit the SubscribeURL included in this message."),
            "SubscribeURL": self.subscribe_url,
            "Timestamp": iso(datetime.now(UTC)),
        })
        self._schedule(_Job(self._clock(), next(self._seq), envelope=envelope))
        return envelope["MessageId"]

    def handle_confirm(self, query: str) -> tuple[int, str]:
        """SNS's ConfirmSubscription for the SubscribeURL's query: (HTTP status, XML body)."""
        params = {key: values[0] for key, values in parse_qs(query).items() if len(values) == 1}
        if (params.get("Action") != "ConfirmSubscription" or params.get("TopicArn") != self.config.topic_arn
                or not secrets.compare_digest(params.get("Token", ""), self._token)):
            log.warning("refused a ConfirmSubscription for topic %r: wrong action, topic or token",
                        params.get("TopicArn"))
            return 400, (f'<ErrorResponse xmlns="{CONFIRM_NS}"><Error><Type>Sender</Type>'
                         "<Code>InvalidParameter</Code><Message>Invalid token</Message></Error></ErrorResponse>")
        if not self._confirmed.is_set():
            log.info("SNS subscription %s confirmed", self.subscription_arn)
        self._confirmed.set()
        return 200, (f'<ConfirmSubscriptionResponse xmlns="{CONFIRM_NS}"><ConfirmSubscriptionResult>'
                     f"<SubscriptionArn>{self.subscription_arn}</SubscriptionArn></ConfirmSubscriptionResult>"
                     f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
                     "</ConfirmSubscriptionResponse>")

    def confirm_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI app of `handle_confirm` (GET with the SubscribeURL's query), for the local SES to mount."""
        status, body = self.handle_confirm(environ.get("QUERY_STRING", ""))
        payload = body.encode()
        start_response(f"{status} {'OK' if status == 200 else 'Bad Request'}",
                       [("Content-Type", "text/xml"), ("Content-Length", str(len(payload)))])
        return [payload]

    # --- publishing -----------------------------------------------------------------------------------------

    def publish(self, message: AcceptedMessage) -> list[SesEvent]:
        """Queue the events of an accepted message, each due at its own time (the local SES's listener)."""
        events = self.events_for(message)
        now_wall, now = datetime.now(UTC), self._clock()
        for event in events:
            due = now + max((event.at - now_wall).total_seconds(), 0.0)
            self._schedule(_Job(due, next(self._seq), event=event))
        return events

    def events_for(self, message: AcceptedMessage) -> list[SesEvent]:
        """The events of `message` (recording when the local SES received it)."""
        with self._lock:
            self.accepted.append((message.message_id, message.received_at))
            return self.events.events_for(message)

    def notification(self, event: SesEvent) -> dict[str, Any]:
        """The signed SNS Notification that carries `event`."""
        return self._sign({
            "Type": NOTIFICATION,
            "MessageId": str(uuid.uuid4()),
            "TopicArn": self.config.topic_arn,
            "Subject": SES_EVENT_SUBJECT,
            "Message": event.message(),
            "Timestamp": iso(datetime.now(UTC)),
        }, unsubscribe=True)

    def attempts_for(self, message_id: str) -> list[DeliveryAttempt]:
        """The recorded POSTs of one SNS message, in order."""
        with self._lock:
            return [a for a in self.attempts if a.message_id == message_id]

    def idle(self) -> bool:
        """True when nothing is queued or being delivered."""
        with self._lock:
            return not self._jobs and self._busy == 0

    # --- internals ------------------------------------------------------------------------------------------

    def _sign(self, message: dict[str, Any], *, unsubscribe: bool = False) -> dict[str, Any]:
        message = {**message, "SignatureVersion": "2"}
        signature = self._key.sign(string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
        message["Signature"] = base64.b64encode(signature).decode()
        message["SigningCertURL"] = self.signing_cert_url
        if unsubscribe:
            message["UnsubscribeURL"] = (f"https://sns.{self.region}.amazonaws.com/?Action=Unsubscribe"
                                         f"&SubscriptionArn={self.subscription_arn}")
        return message

    def _schedule(self, job: _Job) -> None:
        with self._wake:
            heapq.heappush(self._jobs, job)
            self._wake.notify()

    def _next_job(self) -> _Job | None:
        with self._wake:
            while not self._stop:
                if self._jobs:
                    wait = self._jobs[0].due - self._clock()
                    if wait <= 0:
                        self._busy += 1
                        return heapq.heappop(self._jobs)
                    self._wake.wait(min(wait, 1.0))
                else:
                    self._wake.wait(1.0)
            return None

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                self._work(job)
            except Exception:  # a bug must not kill the delivery thread; the job is lost like a dropped message
                log.exception("SNS publisher failed on a job")
            finally:
                with self._lock:
                    self._busy -= 1

    def _work(self, job: _Job) -> None:
        if job.event is not None:
            # SNS delivers what is published while the subscription is confirmed; before that, nothing
            if not self._confirmed.is_set():
                with self._lock:
                    self.unpublished.append(job.event)
                log.warning("SES %s event not delivered: the SNS subscription is not confirmed", job.event.event_type)
                return
            job = _Job(job.due, job.seq, envelope=self.notification(job.event))
        assert job.envelope is not None
        self._deliver(job.envelope, job.attempt)

    def _deliver(self, envelope: dict[str, Any], attempt: int) -> None:
        kind, message_id = envelope["Type"], envelope["MessageId"]
        headers = {
            "x-amz-sns-message-type": kind,
            "x-amz-sns-message-id": message_id,
            "x-amz-sns-topic-arn": envelope["TopicArn"],
            "Content-Type": "text/plain; charset=UTF-8",
            "User-Agent": USER_AGENT,
        }
        if kind != SUBSCRIPTION_CONFIRMATION:  # SNS sends the subscription ARN once there is a subscription
            headers["x-amz-sns-subscription-arn"] = self.subscription_arn
        body = json.dumps(envelope, indent=2, separators=(",", " : "), ensure_ascii=False).encode("utf-8")
        sent_at = self._clock()
        status: int | None
        error: str | None = None
        try:
            response = self._http().post(self.config.endpoint, data=body, headers=headers,
                                          timeout=self.config.request_timeout, allow_redirects=False,
                                          verify=str(self.config.ca_file) if self.config.ca_file else True)
            status = response.status_code
            response.close()
        except requests.RequestException as exc:
            status, error = None, type(exc).__name__
        verdict = classify(status)
        with self._lock:
            self.attempts.append(DeliveryAttempt(message_id, kind, attempt, sent_at, status, error))
        if verdict == DELIVERED:
            self._settle(message_id, DELIVERED)
        elif verdict == PERMANENT_FAILURE:
            self._settle(message_id, f"dropped: permanent failure (HTTP {status})")
        elif attempt > SNS_RETRIES:
            self._settle(message_id, f"dropped: {SNS_RETRIES} retries failed ({error or f'HTTP {status}'})")
        else:
            # the next retry comes its delay after this attempt ended (after a timeout, too)
            due = self._clock() + SNS_RETRY_DELAY * self.config.retry_delay_factor
            self._schedule(_Job(due, next(self._seq), envelope=envelope, attempt=attempt + 1))

    def _http(self) -> requests.Session:
        if self._session is not None:
            return self._session
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
            session.trust_env = False  # loopback only: never through a proxy from the environment
        return session

    def _settle(self, message_id: str, outcome: str) -> None:
        with self._lock:
            self.outcomes[message_id] = outcome
            while len(self.outcomes) > self.config.record_limit:
                self.outcomes.popitem(last=False)
        if outcome != DELIVERED:
            log.warning("SNS message %s %s", message_id, outcome)
