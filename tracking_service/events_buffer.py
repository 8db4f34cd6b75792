"""Open and click events, appended to a spool on local disk and drained in bulk into PostgreSQL (email_events).

Why a spool: an INSERT per request ran at about 0.3x a hello-world route, and a Redis XADD per request (even
grouped) still cost a network round trip: on this kind of host one round trip is more client CPU than Flask's
whole handling of a request. Appending a line to a file is one write(2) into the page cache. It also takes every
network dependency off the request path: opens and clicks keep being recorded while PostgreSQL or Redis are down.

Files, in the spool directory (TRACKING_SPOOL_DIR):

    <host>.<pid>.<start ns>.events    a segment: one JSON array per line, one line per event

- Every web worker process appends to its own active segment, opened with O_APPEND and held under an exclusive
  flock(2) for as long as the process writes to it. The request answers after write(2) returned, so from then on
  the event survives a crash of the tracking service (it is in the kernel's page cache); a flusher thread
  fdatasyncs the segment every TRACKING_SPOOL_FSYNC_SECONDS (1 s, as Redis' `appendfsync everysec`), or after
  every event when that is 0, so a crash of the machine loses at most that second.
- A segment is rotated at TRACKING_SPOOL_SEGMENT_BYTES; a new one is created under a temporary name, locked, then
  renamed into place, so a drainer never sees a segment that its writer does not hold yet.
- A segment whose flock can be taken has no writer any more (rotated, or the worker exited or was killed): it is
  sealed and will not grow.

Draining (a thread in every worker, or `python -m tracking_service.drain`): for each segment, one transaction
locks the segment's row in `tracking_spool_segments` (FOR UPDATE SKIP LOCKED, so drainers share the work), reads
the complete lines after `drained_bytes`, inserts them in one statement, advances `drained_bytes` and commits.
The events and the position commit together, so a crash of a drainer at any point neither loses nor repeats an
event; each event's key 'spool:<segment>:<byte offset>' is also UNIQUE in email_events, as a second guard. A
sealed segment drained to its end is deleted. A line that cannot be parsed, or that PostgreSQL refuses for its
data, goes to `tracking_spool_rejects` with the reason, so one bad line cannot block a segment and nothing is
dropped silently.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

from campaigns import queries

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".events"
SCANNER_SECONDS = 10.0  # a click this soon after the send is a link scanner, not a person
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_FSYNC_SECONDS = 1.0
_MAX_UA = 512
PRUNE_EVERY_SECONDS = 3600.0
FINISHED_ROWS_KEEP_DAYS = 7  # rows of deleted segments: kept a while for the operator, then pruned
_MAX_LINE = 16 * 1024  # far above any line buffer_event writes (a 512-character agent escaped is ~3 KB)
# one encoder: json.dumps(..., separators=...) builds a new JSONEncoder on every call
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64] or "host"


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """One open or click as read back from the spool."""

    key: str  # 'spool:<segment>:<byte offset>': unique per event, stored in email_events.sns_message_id
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


def encode_event(*, type: str, campaign_id: int, recipient_id: int, link_id: int | None = None,
                 ip: str | None = None, user_agent: str | None = None, is_machine: bool = False,
                 reasons: Iterable[str] = (), method: str = "GET", occurred: float | None = None) -> bytes:
    """One spool line: a compact JSON array (ASCII only, so never a raw newline inside) and a newline."""
    return _ENCODER.encode([type, campaign_id, recipient_id, link_id, ip or "", (user_agent or "")[:_MAX_UA],
                            1 if is_machine else 0, ",".join(reasons), method,
                            time.time() if occurred is None else occurred]).encode() + b"\n"


def buffer_event(spool: Spool, **event) -> None:
    """Append one open/click event (the keywords of `encode_event`); raises OSError when the disk refuses it."""
    spool.append(encode_event(**event))


class Spool:
    """This process's writer of spool segments; thread-safe, and safe across fork (each process writes its own).

    One write(2) per event, under a lock so that rotation never closes the descriptor under a writing thread.
    """

    def __init__(self, directory: str | os.PathLike, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 fsync_seconds: float = DEFAULT_FSYNC_SECONDS) -> None:
        if segment_bytes < 1:
            raise ValueError(f"TRACKING_SPOOL_SEGMENT_BYTES must be at least 1, got {segment_bytes}")
        if fsync_seconds < 0:
            raise ValueError(f"TRACKING_SPOOL_FSYNC_SECONDS must be 0 or more, got {fsync_seconds}")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync_seconds = fsync_seconds
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._flushing_fd: int | None = None
        self._pid = 0
        self._size = 0
        self._dirty = False
        self._closed = threading.Event()
        self.segment: Path | None = None
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (spool := this()) is not None and spool._after_fork())

    def _after_fork(self) -> None:
        # The child shares the parent's open segment (and its flock): keeping a descriptor of it would keep the
        # parent's segment looking live after the parent moved on. A lock held by another thread at fork time
        # would stay held in the child forever: start with a new one.
        self._lock = threading.Lock()
        for fd in (self._fd, self._flushing_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._flushing_fd = None
        self._dirty = False

    def append(self, line: bytes) -> None:
        """Write one complete line; returns once the kernel has it (it then survives a crash of this process)."""
        with self._lock:
            if self._fd is None or self._pid != os.getpid() or self._size >= self.segment_bytes:
                self._rotate()
            written = os.write(self._fd, line)
            self._size += written
            if written != len(line):
                # a short write (disk full): the torn line ends this segment, where the drainer rejects it, and the
                # next event starts a new one instead of being glued to it
                self._close_current()
                raise OSError(f"short write to tracking spool {self.segment}: {written} of {len(line)} bytes")
            if self.fsync_seconds == 0:
                os.fdatasync(self._fd)
            else:
                self._dirty = True

    def _rotate(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._closed.clear()
            if self.fsync_seconds > 0:
                threading.Thread(target=self._flush_loop, name="tracking-spool-flush", daemon=True).start()
        self._close_current()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{_HOST}.{os.getpid()}.{time.time_ns()}{SEGMENT_SUFFIX}"
        temporary = self.directory / f".{name}.new"
        fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, self.directory / name)  # appears already locked: never mistaken for sealed
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._fd, self._size, self.segment = fd, 0, self.directory / name

    def _close_current(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)  # releases the flock: the segment is sealed

    def _flush_loop(self) -> None:
        pid = os.getpid()
        while self._pid == pid and not self._closed.wait(self.fsync_seconds):
            try:
                self.flush()
            except Exception:  # the thread must outlive a failed sync: the next interval tries again
                log.exception("tracking spool: flushing %s failed", self.segment)

    def flush(self) -> None:
        """fdatasync what was appended since the last flush (the flusher thread calls this every interval)."""
        with self._lock:
            if not self._dirty or self._fd is None or self._pid != os.getpid():
                return
            # sync a duplicate outside the lock, so appends go on meanwhile
            fd = self._flushing_fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fdatasync(fd)
        finally:
            with self._lock:
                if self._flushing_fd == fd:
                    self._flushing_fd = None
                    os.close(fd)

    def close(self) -> None:
        """Seal the active segment (it is drained and deleted like any other) and stop the flusher."""
        self._closed.set()
        with self._lock:
            if self._pid == os.getpid():
                self._close_current()


def check_locking(directory: str | os.PathLike) -> None:
    """Refuse a file system whose flock(2) is not per open file (NFS, some FUSE/SMB mounts emulate it with POSIX
    locks, which never conflict within one process): there a drainer would take a live segment for a sealed one."""
    directory = Path(directory)
    probe = directory / f".lock-probe.{os.getpid()}.{time.time_ns()}"
    first = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        second = os.open(probe, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                fcntl.flock(second, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            raise OSError(errno.ENOLCK, "flock(2) locks here are not per open file (a network file system?)")
        finally:
            os.close(second)
    finally:
        os.close(first)
        probe.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segments(directory: str | os.PathLike) -> list[Path]:
    """The spool's segment files; by name, so each writer's segments come oldest first."""
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return []
    with entries:
        paths = [Path(e.path) for e in entries if e.name.endswith(SEGMENT_SUFFIX) and not e.name.startswith(".")]
    return sorted(paths)


def _is_sealed(fd: int) -> bool:
    """No writer holds the segment: its exclusive flock is gone, so the file will not grow any more."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _parse(key: str, line: bytes) -> BufferedEvent | None:
    try:
        type_, campaign_id, recipient_id, link_id, ip, ua, machine, reasons, method, occurred = json.loads(line)
        return BufferedEvent(
            key=key, type=str(type_), campaign_id=int(campaign_id), recipient_id=int(recipient_id),
            link_id=None if link_id is None else int(link_id), ip=ip or None, user_agent=ua or None,
            is_machine=machine == 1, reasons=str(reasons), method=str(method or "GET"), occurred=float(occurred),
        )
    except (TypeError, ValueError, RecursionError, OverflowError):  # not JSON, wrong arity or types, absurd nesting
        return None


def _rows(conn: psycopg.Connection, query: str, params: dict) -> list[tuple]:
    """The result as tuples, whatever row factory the caller's connection has."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        return cursor.execute(query, params).fetchall()


def _insert(conn: psycopg.Connection, events: list[BufferedEvent]) -> int:
    sql = queries.load("tracking")
    params = {
        "event_keys": [e.key for e in events],
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
    return _rows(conn, sql["insert-buffered-events"], params)[0][0]  # the implied opens of clicks too


def _store(conn: psycopg.Connection, events: list[BufferedEvent]) -> tuple[int, list[tuple[BufferedEvent, str]]]:
    """Insert `events` inside the caller's transaction: (events inserted, [(event PostgreSQL refused, why)])."""
    try:
        with conn.transaction():  # a savepoint: a refusal undoes only this statement
            return _insert(conn, events), []
    except (psycopg.DataError, psycopg.IntegrityError):
        pass
    inserted, refused = 0, []  # one bad event poisons a multi-row statement: retry singly so only it is set aside
    for event in events:
        try:
            with conn.transaction():
                inserted += _insert(conn, [event])
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            refused.append((event, str(exc)[:500]))
    return inserted, refused


def _complete_lines(data: bytes, base: int, batch: int) -> tuple[list[tuple[int, bytes]], int]:
    """Up to `batch` newline-terminated lines of `data` (read at file offset `base`) with their offsets, and how
    many bytes they span."""
    lines, pos = [], 0
    while len(lines) < batch:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        lines.append((base + pos, data[pos:end]))
        pos = end + 1
    return lines, pos


@dataclass(frozen=True, slots=True)
class _Round:
    """What one drain transaction did to one segment."""

    settled: int  # lines stored or rejected
    drained: int  # the segment's drain position afterwards
    finished: bool  # sealed and drained to its end: delete the file
    more: bool  # another batch is waiting right now
    skipped: bool = False  # another drainer held the segment (or its row is gone)


class SpoolDrainer:
    """Moves spool lines into email_events, one transaction per segment and batch (see the module docstring).

    Remembers where each segment stood after its own commits, so an idle segment costs a stat(2), not a query.
    Needs an autocommit connection: it commits once per segment and batch, and deletes files only after a commit.
    """

    def __init__(self, directory: str | os.PathLike, batch: int = 1000) -> None:
        if batch < 1:
            raise ValueError(f"the drain batch must be at least 1 line, got {batch}")
        self.directory = Path(directory)
        self.batch = batch
        self._known: dict[str, int] = {}
        self._pruned_at = 0.0

    def drain_once(self, conn: psycopg.Connection) -> tuple[int, bool]:
        """One batch from every segment: (lines settled, whether some segment has more right away).

        A segment that fails for its own reasons (say a file the drainer may not read) is logged and skipped, so it
        cannot hold up the others; a database that does not answer ends the round (the caller reconnects).
        """
        if not conn.autocommit:
            raise ValueError("drain needs an autocommit connection: it commits per segment and batch itself")
        settled, more = 0, False
        present = set()
        for path in segments(self.directory):
            present.add(path.name)
            try:
                n, has_more = self._drain_segment(conn, path)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception:
                log.exception("tracking spool segment %s could not be drained this round; the others go on", path)
                continue
            settled += n
            more |= has_more
        for gone in self._known.keys() - present:
            del self._known[gone]
        _remove_abandoned_temporaries(self.directory)
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
            conn.execute(queries.load("tracking")["spool-prune-finished"], {"days": FINISHED_ROWS_KEEP_DAYS})
            self._pruned_at = time.monotonic()
        return settled, more

    def _drain_segment(self, conn: psycopg.Connection, path: Path) -> tuple[int, bool]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0, False  # another drainer finished it and deleted it
        try:
            sealed = _is_sealed(fd)  # checked before reading: a segment sealed now has its final size
            size = os.fstat(fd).st_size
            if not sealed and self._known.get(path.name) == size:
                return 0, False
            done = self._drain_batch(conn, fd, path.name, size, sealed)
        finally:
            os.close(fd)
        if done.skipped:
            # held by another drainer, or its row is gone (pruned): forget it, so the next round registers it again
            self._known.pop(path.name, None)
            return 0, False
        self._known[path.name] = done.drained
        if done.finished:
            path.unlink(missing_ok=True)
            self._known.pop(path.name, None)
        return done.settled, done.more

    def _drain_batch(self, conn: psycopg.Connection, fd: int, segment: str, size: int, sealed: bool) -> _Round:
        sql = queries.load("tracking")
        if segment not in self._known:
            conn.execute(sql["spool-register-segment"], {"segment": segment})
        with conn.transaction():
            rows = _rows(conn, sql["spool-lock-segment"], {"segment": segment})
            if not rows:
                return _Round(0, 0, finished=False, more=False, skipped=True)
            [(offset,)] = rows
            if size < offset:
                # the file lost bytes that were already stored: only a machine crash before the data reached the disk
                # does that, and only to bytes written in the last TRACKING_SPOOL_FSYNC_SECONDS
                log.warning("tracking spool segment %s is %d bytes, shorter than the %d already stored", segment,
                            size, offset)
            want = min(size - offset, max(2 * _MAX_LINE, self.batch * 600))
            data = os.pread(fd, want, offset) if want > 0 else b""
            lines, used = _complete_lines(data, offset, self.batch)
            rejects: list[tuple[int, bytes, str]] = []
            if not lines and data and (len(data) >= _MAX_LINE or sealed):
                # no newline in a line's worth of bytes, or a torn last line of a segment nobody writes any more
                used = min(len(data), _MAX_LINE)
                rejects.append((offset, data[:used], "incomplete or oversized spool line"))
            events, line_at = [], {}
            for line_offset, line in lines:
                event = _parse(f"spool:{segment}:{line_offset}", line)
                if event is None:
                    rejects.append((line_offset, line, "malformed spool line"))
                else:
                    events.append(event)
                    line_at[event.key] = (line_offset, line)
            inserted, refused = _store(conn, events) if events else (0, [])
            if len(events) - len(refused) > inserted:
                # their campaign or ledger row was deleted meanwhile (its events went with it): nothing to attach to;
                # or, after a lost segment row, lines stored before and read again (their keys are taken)
                log.warning("tracking spool segment %s: %d events not inserted: their campaign or recipient no "
                            "longer exists, or they were stored before", segment, len(events) - len(refused) - inserted)
            rejects.extend((*line_at[event.key], error) for event, error in refused)
            for line_offset, line, error in rejects:
                log.error("tracking spool line %s:%d refused, kept in tracking_spool_rejects: %s", segment,
                          line_offset, error)
                conn.execute(sql["spool-reject"], {"segment": segment, "byte_offset": line_offset,
                                                   "line": _printable(line), "error": error})
            drained = offset + used
            finished = sealed and drained >= size
            if used or finished:
                conn.execute(sql["spool-advance"], {"segment": segment, "drained_bytes": drained,
                                                    "events": inserted, "rejected": len(rejects),
                                                    "finished": finished})
        # more right away: the batch limit cut the lines, or a sealed segment still has bytes (a torn tail)
        more = len(lines) == self.batch or (sealed and not finished)
        return _Round(len(lines) + (0 if lines else len(rejects)), drained, finished=finished, more=more)


def _printable(line: bytes) -> str:
    """The line as text PostgreSQL accepts (no NUL), every byte that is not UTF-8 kept as an escape."""
    return line.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def _remove_abandoned_temporaries(directory: Path, older_than: float = 60.0) -> None:
    """A writer killed between creating a segment and renaming it into place leaves an empty `.<name>.new` (and a
    start killed mid-probe a `.lock-probe.*`): remove those that are old and that nobody holds locked."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if not (entry.name.endswith(f"{SEGMENT_SUFFIX}.new") or entry.name.startswith(".lock-probe.")):
            continue
        try:
            if time.time() - entry.stat().st_mtime <= older_than:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer still creating it holds it: leave it alone
            os.unlink(entry.path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)


def drain_once(directory: str | os.PathLike, conn: psycopg.Connection, batch: int = 1000) -> int:
    """Move up to `batch` lines of every segment into email_events; returns how many lines were settled."""
    return SpoolDrainer(directory, batch).drain_once(conn)[0]


def backlog(directory: str | os.PathLike, conn: psycopg.Connection) -> int:
    """Bytes written to the spool and not yet drained into PostgreSQL (0: everything is stored)."""
    paths = segments(directory)
    if not paths:
        return 0
    drained = dict(_rows(conn, queries.load("tracking")["spool-drained-bytes"], {"segments": [p.name for p in paths]}))
    total = 0
    for path in paths:
        try:
            total += max(0, path.stat().st_size - drained.get(path.name, 0))
        except FileNotFoundError:
            continue  # drained and deleted meanwhile
    return total


class Drainer(threading.Thread):
    """A daemon thread that keeps draining the spool into PostgreSQL, reconnecting after failures."""

    def __init__(self, directory: str | os.PathLike, connect: Callable[[], psycopg.Connection], *,
                 batch: int = 1000, linger: float = 0.2) -> None:
        super().__init__(name="tracking-drainer", daemon=True)
        self._drainer = SpoolDrainer(directory, batch)
        self._connect = connect
        # when every segment is caught up, wait a little so the next batch is bigger: fewer transactions
        self.linger = linger
        self._stopping = threading.Event()
        self.settled = 0  # lines stored or rejected by this drainer

    def stop(self) -> None:
        """Ask the thread to finish its current round and exit."""
        self._stopping.set()

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                settled, more = self._drainer.drain_once(conn)
                self.settled += settled
                failures = 0
                if not more:
                    self._stopping.wait(self.linger)
            except Exception:  # the thread must survive outages; the lines stay in the spool meanwhile
                failures += 1
                log.exception("tracking drainer round failed (%d in a row); retrying", failures)
                if conn is not None:
                    conn.close()
                    conn = None
                self._stopping.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
        if conn is not None:
            conn.close()
