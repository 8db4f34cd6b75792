"""The send loop of one mapped send task: pending rows -> limiter slot -> claim -> compose -> SES -> ledger.

A small thread pool lets one task reach hundreds of sends per second; every thread takes its slots from the same
(global) limiter and has its own database connection. A thread reserves its slot first, claims and composes
shortly before it (SEND_PREPARE_SECONDS) and hands the transport the slot's instant: the request is built and
signed, then held until the slot, so it leaves when the limiter said, however long the work before it took. The
thread's `sent` row is recorded by the statement that claims its next row (one round trip per email).

The campaign's state is re-read at most every `watch_interval` seconds, so a pause or cancel stops the task within
about a second. Before each send the loop also runs the reputation step: at the guard's own, slower cadence
(REPUTATION_CHECK_SECONDS) the guard it was given counts the campaign's bounces and complaints and pauses it when a
rate is over its threshold (campaigns.lifecycle.reputation builds that guard; this part only knows the
ReputationCheck protocol).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from campaigns import queries, states
from campaigns.config import Settings
from campaigns.errors import (
    AccountStopped,
    ComposeError,
    LimiterUnavailable,
    NotSent,
    OutcomeUnknown,
    RecipientRejected,
    SendError,
    SlotMissed,
    Throttled,
)
from campaigns.sending import ledger
from campaigns.sending.ledger import Attempt
from campaigns.sending.plan import SendTask
from campaigns.sending.ratelimit import check_whole
from campaigns.states import Row

log = logging.getLogger(__name__)
MAX_THROTTLE_RETRIES = 20
# How long before its slot a thread claims and composes its row. Enough for the claim's round trip, the render and
# the SES request's signing on a loaded machine; the suppression check is at most this much older than the send.
SEND_PREPARE_SECONDS = 0.05
# A thread whose next slot is further off than this records its last `sent` row at once instead of with its next
# claim, so the ledger never trails SES by more than about this.
SETTLE_ALONE_AFTER_SECONDS = 0.1
MAX_SLOT_MISSES = 3  # a send whose request missed this many slots in a row goes out with the next one, however late


class Limiter(Protocol):
    def reserve(self, count: int = 1) -> list[float]: ...
    def throttled(self, factor: float = 0.5, seconds: float = 30.0) -> None: ...


class Transport(Protocol):
    def send(self, *, raw: bytes, from_email: str, to: str, tags: dict[str, str],
             not_before: float | None = None, latest: float | None = None) -> str: ...


class MessageBuilder(Protocol):
    """The campaign's Composer as the send loop uses it."""

    feedback_tags: dict[str, str]  # SES tags on every message: SES writes the Feedback-ID header from them

    def compose(self, recipient_id: int, to_email: str, merge_data: dict[str, Any]) -> bytes: ...


class ReputationCheck(Protocol):
    """The reputation guard as the send loop uses it (lifecycle.reputation.ReputationGuard is the real one)."""

    paused_reason: str | None

    def due(self) -> bool: ...
    def check(self, conn: psycopg.Connection) -> str | None: ...


@dataclass
class SendReport:
    """What one send task did; `stop_reason` says why it stopped early, if it did."""

    counts: Counter = field(default_factory=Counter)
    stop_reason: str | None = None
    account_stopped: str | None = None
    error: BaseException | None = None
    settled_unknown: int = 0
    settled_sent: int = 0  # left `sending` by an earlier attempt, and SES had already reported on them

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "stop_reason": self.stop_reason,
                "account_stopped": self.account_stopped, "settled_unknown": self.settled_unknown,
                "settled_sent": self.settled_sent,
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}


class CampaignWatch:
    """Re-reads the campaign's status at most every `interval` seconds (shared by the send threads).

    With a `guard`, check_reputation() judges a running campaign's rates at the guard's own (slower) cadence; when
    that pauses the campaign, the very next status() answers paused, so no thread starts another send.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection], campaign_id: int, interval: float = 0.5,
                 guard: ReputationCheck | None = None, run_id: str | None = None) -> None:
        self._connect = connect
        self._campaign_id = campaign_id
        self._run_id = run_id
        self._interval = interval
        self.guard = guard
        self._lock = threading.Lock()
        self._checked = 0.0
        self._status = states.RUNNING
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def status(self) -> str:
        """The campaign's status as last read (re-read when older than the interval); changes nothing."""
        with self._lock:
            if time.monotonic() - self._checked >= self._interval:
                row = self._connection().execute(queries.load("sender")["campaign-watch"],
                                                 {"campaign_id": self._campaign_id}).fetchone()
                self._status = row["status"] if row else states.CANCELLED
                if row and self._run_id and row["run_id"] not in (None, self._run_id):
                    # resumed by another run while this task still sends: two runs never send one campaign
                    self._status = f"{row['status']} under run {row['run_id']}"
                self._checked = time.monotonic()
            return self._status

    def check_reputation(self) -> str | None:
        """When the guard is due and the campaign runs, judge its rates: the reason when this step paused it."""
        # Runs before every send: most calls are not due, and answer without taking the lock status() also takes.
        if self.guard is None or not self.guard.due():
            return None
        # Under the lock on purpose: the other threads wait for the verdict instead of sending past it.
        with self._lock:
            if self._status != states.RUNNING or not self.guard.due():
                return None
            reason = self.guard.check(self._connection())
            if reason is not None:
                self._status = states.PAUSED
            return reason

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class SlotQueue:
    """The task's send slots, reserved `batch` at a time from the global limiter and handed to its threads in order.

    One Redis round trip serves `batch` sends (the pipeline asks for more than one only when the rate is high, so
    the slots are a few milliseconds long in all). A queued slot already more than `lateness` past when a thread
    asks is dropped, never used: sent late, it would bunch with other workers' on-time slots at SES's door.
    """

    def __init__(self, limiter: Limiter, batch: int = 1, lateness: float = 0.0) -> None:
        self._limiter = limiter
        self._batch = check_whole(batch, "slot batch")
        self._lateness = lateness
        self._slots: deque[float] = deque()
        self._lock = threading.Lock()

    def next(self) -> float:
        """The next slot's time.monotonic() instant (raises LimiterUnavailable when Redis does not answer)."""
        with self._lock:
            too_late = time.monotonic() - self._lateness
            while self._slots and self._slots[0] < too_late:
                self._slots.popleft()
            if not self._slots:
                self._slots.extend(self._limiter.reserve(self._batch))
            return self._slots.popleft()


class ThreadLedger:
    """One send thread's view of the ledger: its connection, and the row SES accepted that the ledger will show
    as `sent` with the thread's next claim (or its flush). A thread holds at most one `sending` row."""

    def __init__(self, connect: Callable[[], psycopg.Connection], attempt: Attempt) -> None:
        self._connect = connect
        self.attempt = attempt
        self._conn: psycopg.Connection | None = None
        self._sent: ledger.Sent | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def claim(self, row: dict[str, Any]) -> str | None:
        status = ledger.claim(self.conn, row["id"], row["email"], self.attempt, settle=self._sent)
        self._sent = None
        return status

    def sent(self, row_id: int, message_id: str) -> None:
        self._sent = ledger.Sent.now(row_id, message_id)

    def release(self, row_id: int, status: str, error: str | None) -> None:
        ledger.release(self.conn, row_id, self.attempt, status, error)

    def flush(self) -> None:
        """Record the accepted row now."""
        if self._sent is not None:
            ledger.mark_sent(self.conn, self.attempt, self._sent)
            self._sent = None

    def close(self) -> None:
        try:
            self.flush()
        except psycopg.Error as exc:
            # The row stays `sending`; the task's retry settles it from SES's events, never resending it.
            log.error("could not record row %s as sent (%s: %s)", self._sent.row_id if self._sent else "?",
                      type(exc).__name__, exc)
        finally:
            if self._conn is not None:
                self._conn.close()


class SendBatch:
    """Works through one SendTask's pending rows with `threads` senders.

    Without a `guard` the campaign's rates are not judged (the pipeline always passes one).
    """

    def __init__(self, task: SendTask, *, attempt: Attempt, from_email: str, builder: MessageBuilder,
                 transport: Transport, limiter: Limiter, connect: Callable[[], psycopg.Connection],
                 threads: int = 4, watch_interval: float = 0.5, guard: ReputationCheck | None = None,
                 limiter_outage_seconds: float = Settings.limiter_outage_seconds, slot_batch: int = 1,
                 slot_lateness: float = Settings.send_timing_allowance / 2) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.task = task
        self.attempt = attempt
        self.from_email = from_email
        self.builder = builder
        # the tags every message of this task carries; per recipient only its own id is added
        self._tags = {**builder.feedback_tags, "campaign": str(task.campaign_id)}
        self.transport = transport
        self.limiter = limiter
        # How late after its slot a request may leave (the rest of the timing allowance covers the write itself)
        self.slot_lateness = slot_lateness
        self._slots = SlotQueue(limiter, slot_batch, slot_lateness)
        self.connect = connect
        self.threads = threads
        self.watch = CampaignWatch(connect, task.campaign_id, watch_interval, guard=guard, run_id=attempt.run_id)
        # A Redis restart should not cost a task retry (and its scheduler overhead): wait it out, sending nothing.
        self.limiter_outage_seconds = limiter_outage_seconds
        self._outage_logged = False
        self.report = SendReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=threads * 4)

    def run(self) -> SendReport:
        """Send every pending row of the task; returns the report (raises nothing the pipeline must not see)."""
        with self.connect() as conn:
            settled = ledger.settle_stale(conn, self.task, self.attempt)
            self.report.settled_unknown, self.report.settled_sent = settled["unknown"], settled["sent"]
            if settled:
                log.warning("%s: %d rows were left `sending` by an earlier attempt; not resent: %d sent (SES "
                            "reported on them), %d unknown", self.task.label, sum(settled.values()),
                            settled["sent"], settled["unknown"])
            workers = [threading.Thread(target=self._worker, name=f"send-{i}", daemon=True)
                       for i in range(self.threads)]
            for worker in workers:
                worker.start()
            try:
                for row in ledger.pending_rows(conn, self.task):
                    if not self._put(row):
                        break
            finally:
                for _ in workers:
                    self._queue.put(None)
                for worker in workers:
                    worker.join()
                self.watch.close()
        return self.report

    def _put(self, row: dict[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(row, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _halt(self, *, reason: str, account: str | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self.report.stop_reason is None:
                self.report.stop_reason = reason
                self.report.account_stopped = account
                self.report.error = error
        self._stop.set()

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.report.counts[outcome] += 1

    def _still_running(self) -> bool:
        """The step before every send: the campaign's status, then the reputation check when due; halts if stopped.

        The check is the one step that may pause the campaign; status() only reads.
        """
        status = self.watch.status()
        if status == states.RUNNING and self.watch.check_reputation() is None:
            return True
        paused_by_guard = self.watch.guard and self.watch.guard.paused_reason
        self._halt(reason=f"reputation guard paused the campaign: {paused_by_guard}"
                   if paused_by_guard else f"campaign is {status}")
        return False

    def _worker(self) -> None:
        """Take rows until the sentinel; after a stop, keep draining (without sending) so the producer never blocks."""
        thread = ThreadLedger(self.connect, self.attempt)
        try:
            while True:
                row = self._queue.get()
                if row is None:
                    return
                if self._stop.is_set():
                    continue  # rows we do not touch stay pending
                try:
                    if not self._still_running():
                        continue
                    self._send_one(thread, row)
                except Exception as exc:  # noqa: BLE001 - the task fails with it and Airflow retries the task
                    log.error("%s: sending stopped: %s: %s", self.task.label, type(exc).__name__, exc)
                    self._halt(reason=f"{type(exc).__name__}: {exc}", error=exc)
        finally:
            thread.close()

    def _reserve(self) -> float | None:
        """This thread's next send slot; None when the task is stopping or the campaign is no longer running.

        While the limiter is unreachable (Redis down or restarting) nothing is sent: the thread retries with
        backoff for up to `limiter_outage_seconds`, still obeying pause and cancel, then raises LimiterUnavailable
        so the task fails with the reason and Airflow retries it.
        """
        gave_up_at = None
        delay = 0.25
        while True:
            try:
                slot = self._slots.next()
                return None if self._stop.is_set() else slot
            except LimiterUnavailable:
                now = time.monotonic()
                if gave_up_at is None:
                    gave_up_at = now + self.limiter_outage_seconds
                    with self._lock:
                        first, self._outage_logged = not self._outage_logged, True
                    if first:
                        log.warning("%s: the rate limiter (Redis) is unreachable; nothing is sent until it answers "
                                    "(waiting up to %.0f s)", self.task.label, self.limiter_outage_seconds)
                if now >= gave_up_at:
                    raise
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, 2.0)
            if not self._still_running():
                return None

    def _send_one(self, thread: ThreadLedger, row: dict[str, Any]) -> None:
        # The slot comes first: if Redis is down nothing is claimed, the row stays pending (fail closed).
        slot = self._reserve()
        if slot is None:
            return
        ahead = slot - time.monotonic()
        if ahead > SETTLE_ALONE_AFTER_SECONDS:
            thread.flush()
        if self._stop.wait(max(0.0, slot - SEND_PREPARE_SECONDS - time.monotonic())):
            return  # stopped while waiting: the slot stays spent, the row pending
        claimed = thread.claim(row)
        if claimed != Row.SENDING:
            self._count(Row.SKIPPED if claimed == Row.SKIPPED else "already_claimed")
            return
        try:
            raw = self.builder.compose(row["id"], row["email"], ledger.merge_fields(row))
        except ComposeError as exc:  # TemplateProblem / AddressProblem: this recipient can never be sent as is
            thread.release(row["id"], Row.FAILED, f"compose: {exc}")
            self._count(Row.FAILED)
            return
        self._deliver(thread, row, raw, slot, bound=ahead > 0)

    def _deliver(self, thread: ThreadLedger, row: dict[str, Any], raw: bytes, slot: float, *, bound: bool) -> None:
        """The claimed row's SES call at `slot` (again at new slots after throttling), then its ledger outcome.

        `bound`: the slot was still ahead when the thread got it, so the rate binds and the request must leave
        within `slot_lateness` of it, or take another (SlotMissed); a slot already due is used at once.
        """
        tags = {**self._tags, "recipient": str(row["id"])}
        throttles = misses = 0
        while True:
            latest = slot + self.slot_lateness if bound and misses < MAX_SLOT_MISSES else None
            try:
                message_id = self.transport.send(raw=raw, from_email=self.from_email, to=row["email"], tags=tags,
                                                 not_before=slot, latest=latest)
            except SlotMissed:
                misses += 1
                self._count("slot_missed")
            except Throttled as exc:
                self.limiter.throttled()
                if throttles == MAX_THROTTLE_RETRIES or self._stop.is_set():
                    thread.release(row["id"], Row.PENDING, str(exc))
                    self._halt(reason=f"still throttled after {throttles} retries", error=exc)
                    return
                time.sleep(min(5.0, 0.05 * 2 ** throttles) * (0.5 + random.random()))  # noqa: S311 - jitter only
                throttles += 1
            except RecipientRejected as exc:
                thread.release(row["id"], Row.FAILED, str(exc))
                self._count(Row.FAILED)
                return
            except AccountStopped as exc:
                thread.release(row["id"], Row.PENDING, str(exc))
                self._halt(reason=f"SES stopped sending: {exc}", account=str(exc))
                return
            except NotSent as exc:
                thread.release(row["id"], Row.PENDING, str(exc))
                self._halt(reason=str(exc), error=exc)
                return
            except (OutcomeUnknown, SendError) as exc:
                thread.release(row["id"], Row.UNKNOWN, str(exc))
                self._count(Row.UNKNOWN)
                return
            else:
                thread.sent(row["id"], message_id)
                self._count(Row.SENT)
                return
            slot = self._reserve()
            if slot is None:
                thread.release(row["id"], Row.PENDING, "stopped before a new slot")
                return
            bound = slot > time.monotonic()
