"""The drainer: spooled opens and clicks moved in bulk into PostgreSQL (email_events), refused lines kept aside.

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

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

from campaigns import queries
from tracking_service.spool_format import (
    LOCK_PROBE_PREFIX,
    MAX_LINE,
    SEGMENT_SUFFIX,
    TEMPORARY_SUFFIX,
    BufferedEvent,
    parse_line,
    segments,
)

log = logging.getLogger(__name__)

SCANNER_SECONDS = 10.0  # a click this soon after the send is a link scanner, not a person
PRUNE_EVERY_SECONDS = 3600.0
FINISHED_ROWS_KEEP_DAYS = 7  # rows of deleted segments: kept a while for the operator, then pruned


def _is_sealed(fd: int) -> bool:
    """No writer holds the segment: its exclusive flock is gone, so the file will not grow any more."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
            want = min(size - offset, max(2 * MAX_LINE, self.batch * 600))
            data = os.pread(fd, want, offset) if want > 0 else b""
            lines, used = _complete_lines(data, offset, self.batch)
            rejects: list[tuple[int, bytes, str]] = []
            if not lines and data and (len(data) >= MAX_LINE or sealed):
                # no newline in a line's worth of bytes, or a torn last line of a segment nobody writes any more
                used = min(len(data), MAX_LINE)
                rejects.append((offset, data[:used], "incomplete or oversized spool line"))
            events, line_at = [], {}
            for line_offset, line in lines:
                event = parse_line(f"spool:{segment}:{line_offset}", line)
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
        if not (entry.name.endswith(SEGMENT_SUFFIX + TEMPORARY_SUFFIX) or entry.name.startswith(LOCK_PROBE_PREFIX)):
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
