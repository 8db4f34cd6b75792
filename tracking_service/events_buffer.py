"""Open and click events buffered in a Redis stream and drained in bulk into PostgreSQL (email_events).

Why: one INSERT per request ran at about 0.3x a hello-world route; an XADD costs about as much as the request
parsing itself. The tracking request answers after XADD returned, so from then on the event survives a crash of the
tracking service (Redis runs with AOF; with `appendfsync everysec` a crash of Redis itself may lose the last second).

Flow and guarantees:

    request --XADD--> stream `tracking:events` --XREADGROUP (group `drainers`)--> one multi-row INSERT, COMMIT
                                                                                   --> XACK + XDEL

- A drainer (a thread in every gunicorn worker, or `python -m tracking_service.drain`) reads a batch through the
  consumer group, inserts it in one statement, commits, and only then acknowledges and deletes the entries.
- Crash between XREADGROUP and COMMIT: the entries stay pending for that consumer; the same consumer re-reads them
  first on its next round, and any other drainer claims them with XAUTOCLAIM once they have been idle for
  `claim_idle_ms` (a dead worker's pid never comes back). Nothing is lost.
- Crash between COMMIT and XACK: the entries are delivered again. Idempotency without a schema change:
  email_events.sns_message_id (UNIQUE) stores 'stream:<entry id>' and the INSERT says ON CONFLICT DO NOTHING, so a
  redelivered entry is inserted once. (Entry ids are unique within the stream and grow with Redis time; the column
  name is historical: it is the dedupe key of every event source, SNS message ids for SES notifications.)
- An entry PostgreSQL refuses for its data (not for being down) is moved to `tracking:events:dead` with the error,
  so one bad entry cannot block the stream; a database outage just leaves everything pending until it is back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg
import redis

from campaigns import queries

log = logging.getLogger(__name__)

STREAM = "tracking:events"
GROUP = "drainers"
DEAD_LETTER = "tracking:events:dead"
SCANNER_SECONDS = 10.0  # a click this soon after the send is a link scanner, not a person
CLAIM_IDLE_MS = 60_000  # an entry pending this long belongs to a dead (or stuck) drainer: take it over
_MAX_UA = 512


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """One open or click as read back from the stream."""

    stream_id: str
    type: str
    campaign_id: int
    recipient_id: int
    link_id: int | None
    ip: str | None
    user_agent: str | None
    is_machine: bool
    reasons: str
    method: str
    occurred: float


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def buffer_event(client: redis.Redis | GroupCommitWriter, *, type: str, campaign_id: int, recipient_id: int,
                 link_id: int | None = None, ip: str | None = None, user_agent: str | None = None,
                 is_machine: bool = False, reasons: Iterable[str] = (), method: str = "GET",
                 occurred: float | None = None) -> str:
    """Append one open/click event to the stream; returns its entry id (the event's dedupe key)."""
    # one field holding a JSON array: a 1-field XADD costs a fraction of a 10-field one in the client (encoding,
    # packing), which is most of this request's own work. Order: _ENTRY_FIELDS.
    entry = json.dumps([type, campaign_id, recipient_id, link_id, ip or "", (user_agent or "")[:_MAX_UA],
                        1 if is_machine else 0, ",".join(reasons), method,
                        time.time() if occurred is None else occurred], separators=(",", ":"))
    return _text(client.xadd(STREAM, {"e": entry}))


class GroupCommitWriter:
    """XADDs from many request threads, sent to Redis together: one pipelined round trip per group, not per event.

    Leader/follower, no extra thread: the first thread to arrive while nobody is writing becomes the leader, takes
    everything queued (up to `max_batch`), sends it as one pipeline and wakes each waiting thread with its entry id;
    if more queued up meanwhile, the first of them leads the next group. Every caller still returns only after
    Redis answered for *its* entry, so an event whose request got a 2xx is in the stream exactly as with a plain
    XADD. Alone, a thread leads a group of one: the same single round trip as before.

    Why: under load, a tracking request spent most of its time in its own XADD round trip (send, wake Redis, an AOF
    write, receive); grouping shares that among the requests that arrive together.
    """

    __slots__ = ("_client", "_lock", "_max_batch", "_queue", "_writing")

    def __init__(self, client: redis.Redis, max_batch: int = 256) -> None:
        self._client = client
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_QueuedAdd] = []
        self._writing = False

    def xadd(self, name: str, fields: dict) -> bytes | str:
        """Like `redis.Redis.xadd(name, fields)`; raises what that raises (redis.RedisError) for this entry."""
        item = _QueuedAdd(name, fields)
        with self._lock:
            self._queue.append(item)
            lead = not self._writing
            if lead:
                self._writing = True
        if not lead:
            item.done.acquire()  # released by the leader that wrote this entry, or to make this thread lead
        if item.leads:
            self._write_group()
        if item.error is not None:
            raise item.error
        return item.result

    def _write_group(self) -> None:
        with self._lock:
            group, self._queue = self._queue[:self._max_batch], self._queue[self._max_batch:]
        for item, result in zip(group, self._send(group), strict=True):
            if isinstance(result, BaseException):
                item.error = result
            else:
                item.result = result
            item.leads = False
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._writing = False
            else:
                successor.leads = True
        for item in group:
            item.done.release()
        if successor is not None:
            successor.done.release()

    def _send(self, group: list[_QueuedAdd]) -> list:
        """One result per entry, in order: the entry id, or the exception that entry's caller raises."""
        try:
            if len(group) == 1:
                return [self._client.xadd(group[0].name, group[0].fields)]
            pipe = self._client.pipeline(transaction=False)
            for item in group:
                pipe.xadd(item.name, item.fields)
            results = pipe.execute(raise_on_error=False)
            if len(results) != len(group):
                raise redis.RedisError(f"pipeline answered {len(results)} replies for {len(group)} XADDs")
            return results
        except Exception as exc:  # noqa: BLE001 - every caller of the group raises it
            return [exc] * len(group)


class _QueuedAdd:
    __slots__ = ("done", "error", "fields", "leads", "name", "result")

    def __init__(self, name: str, fields: dict) -> None:
        self.name, self.fields = name, fields
        self.done = threading.Lock()
        self.done.acquire()  # a pre-acquired lock is the cheapest one-shot wake-up in CPython
        self.leads = True  # until queued behind a leader
        self.result: bytes | str = b""
        self.error: BaseException | None = None


def ensure_group(client: redis.Redis) -> None:
    """Create the stream and its consumer group once (from the start of the stream, so nothing is skipped)."""
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def default_consumer() -> str:
    """This process's consumer name in the group (host and pid: a restarted worker is a new consumer)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _parse(entry_id: bytes | str, fields: dict) -> BufferedEvent | None:
    raw = fields.get(b"e", fields.get("e"))
    try:
        type_, campaign_id, recipient_id, link_id, ip, ua, machine, reasons, method, occurred = json.loads(raw)
        return BufferedEvent(
            stream_id=_text(entry_id), type=str(type_), campaign_id=int(campaign_id), recipient_id=int(recipient_id),
            link_id=None if link_id is None else int(link_id), ip=ip or None, user_agent=ua or None,
            is_machine=machine == 1, reasons=str(reasons), method=str(method or "GET"), occurred=float(occurred),
        )
    except (TypeError, ValueError):  # no "e" field, not JSON, wrong arity or types
        return None


def _insert(conn: psycopg.Connection, events: list[BufferedEvent]) -> int:
    sql = queries.load("tracking")
    params = {
        "stream_ids": [e.stream_id for e in events],
        "types": [e.type for e in events],
        "campaign_ids": [e.campaign_id for e in events],
        "recipient_ids": [e.recipient_id for e in events],
        "link_ids": [e.link_id for e in events],
        "ips": [e.ip for e in events],
        "user_agents": [e.user_agent for e in events],
        "machine": [e.is_machine for e in events],
        "reasons": [e.reasons for e in events],
        "methods": [e.method for e in events],
        "occurred": [e.occurred for e in events],
        "scanner_seconds": SCANNER_SECONDS,
    }
    row = conn.execute(sql["insert-buffered-events"], params).fetchone()
    inserted = row["n"] if isinstance(row, dict) else row[0]
    click_ids = [f"stream:{e.stream_id}" for e in events if e.type == "click"]
    if click_ids:
        conn.execute(sql["insert-implied-opens"], {"click_ids": click_ids})
    return inserted


def _store(conn: psycopg.Connection, client: redis.Redis, events: list[BufferedEvent]) -> None:
    """Insert `events` durably; entries PostgreSQL refuses one by one go to the dead-letter stream."""
    try:
        with conn.transaction():
            _insert(conn, events)
    except (psycopg.DataError, psycopg.IntegrityError):
        # one bad entry poisons a multi-row statement: retry singly so only it is set aside
        for event in events:
            try:
                with conn.transaction():
                    _insert(conn, [event])
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                log.error("tracking event %s refused by PostgreSQL, moved to %s: %s", event.stream_id,
                          DEAD_LETTER, exc)
                client.xadd(DEAD_LETTER, {"id": event.stream_id, "error": str(exc)[:500]})
    if not conn.autocommit:
        # conn.transaction() inside a caller's open transaction is only a savepoint: commit before XACK
        conn.commit()


def drain_once(client: redis.Redis, conn: psycopg.Connection, batch: int = 1000, *, consumer: str | None = None,
               block_ms: int | None = None, claim_idle_ms: int | None = CLAIM_IDLE_MS) -> int:
    """Move up to `batch` stream entries into email_events; returns how many entries were settled (acked).

    Order: this consumer's own unacknowledged entries (a failed earlier round), then entries of consumers idle for
    `claim_idle_ms` (None: do not claim), then new entries (waiting up to `block_ms` for some when given).
    """
    consumer = consumer or default_consumer()
    ensure_group(client)
    entries: list = []
    own = client.xreadgroup(GROUP, consumer, {STREAM: "0"}, count=batch)
    if own:
        entries.extend(own[0][1])
    if claim_idle_ms is not None and len(entries) < batch:
        claimed = client.xautoclaim(STREAM, GROUP, consumer, min_idle_time=claim_idle_ms, start_id="0-0",
                                    count=batch - len(entries))
        entries.extend(claimed[1])
    if len(entries) < batch:
        fresh = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=batch - len(entries),
                                  block=block_ms if not entries else None)
        if fresh:
            entries.extend(fresh[0][1])
    # an entry deleted after it was delivered comes back with no fields: nothing to store, just settle it
    ids = [_text(entry_id) for entry_id, _ in entries]
    events: list[BufferedEvent] = []
    seen: set[str] = set()
    for entry_id, fields in entries:
        event = _parse(entry_id, fields) if fields else None
        if event is not None and event.stream_id not in seen:
            seen.add(event.stream_id)
            events.append(event)
        elif fields and event is None:
            log.error("malformed tracking stream entry %s moved to %s", _text(entry_id), DEAD_LETTER)
            client.xadd(DEAD_LETTER, {"id": _text(entry_id), "error": "malformed entry"})
    if not ids:
        return 0
    if events:
        _store(conn, client, events)
    pipe = client.pipeline(transaction=True)
    pipe.xack(STREAM, GROUP, *ids)
    # only one group reads the stream, so an acknowledged entry is done: delete it to keep the stream small
    pipe.xdel(STREAM, *ids)
    pipe.execute()
    return len(set(ids))


def backlog(client: redis.Redis) -> int:
    """Entries not yet settled: still in the stream (pending or not yet delivered)."""
    return int(client.xlen(STREAM))


class Drainer(threading.Thread):
    """A daemon thread that keeps draining the stream into PostgreSQL, reconnecting after failures."""

    def __init__(self, redis_factory: Callable[[], redis.Redis], connect: Callable[[], psycopg.Connection], *,
                 batch: int = 1000, block_ms: int = 1000, linger: float = 0.2,
                 claim_every: float = 30.0) -> None:
        super().__init__(name="tracking-drainer", daemon=True)
        self._redis_factory = redis_factory
        self._connect = connect
        self.batch = batch
        self.block_ms = block_ms
        # after a short batch, wait a little so the next one is bigger: fewer transactions for the same events
        self.linger = linger
        self.claim_every = claim_every
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Ask the thread to finish its current round and exit."""
        self._stopping.set()

    def run(self) -> None:
        client = self._redis_factory()
        conn: psycopg.Connection | None = None
        consumer = default_consumer()
        last_claim = 0.0
        failures = 0
        while not self._stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                claim = time.monotonic() - last_claim >= self.claim_every
                settled = drain_once(client, conn, self.batch, consumer=consumer, block_ms=self.block_ms,
                                     claim_idle_ms=CLAIM_IDLE_MS if claim else None)
                if claim:
                    last_claim = time.monotonic()
                failures = 0
                if settled < self.batch:
                    self._stopping.wait(self.linger)
            except Exception:  # the thread must survive outages; entries stay pending meanwhile
                failures += 1
                log.exception("tracking drainer round failed (%d in a row); retrying", failures)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
        if conn is not None:
            conn.close()
