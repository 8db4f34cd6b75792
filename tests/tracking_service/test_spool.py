"""The event spool (tracking_service.spool, drainer): what a 2xx promises survives crashes of writers and drainers,
every line is stored exactly once, and what cannot be stored is kept with its reason. Real PostgreSQL; real
processes where a crash is the point."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from campaigns import db as campaign_db
from campaigns import queries
from devstack.processes import poll
from tests.helpers import sent_ledger
from tracking_service.drainer import SpoolDrainer, _is_sealed, _store, backlog, drain_once
from tracking_service.spool import Spool
from tracking_service.spool_format import BufferedEvent, encode_event, parse_line, segments

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture(autouse=True)
def _close_spools(monkeypatch):
    """Every Spool a test makes is closed afterwards, failed test or not (its flusher thread and flock go)."""
    made: list[Spool] = []
    real_init = Spool.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Spool, "__init__", init)
    yield
    for spool in made:
        spool.close()


@pytest.fixture
def ledger(db):
    """A campaign with 50 sent ledger rows: (campaign id, [recipient ids])."""
    return sent_ledger(db, "spool", 50)


def _open(campaign_id: int, recipient_id: int) -> bytes:
    return encode_event(type="open", campaign_id=campaign_id, recipient_id=recipient_id,
                        ip="192.0.2.1", user_agent="Mozilla/5.0 test")


def _opens(conn) -> list[int]:
    return [r["recipient_id"] for r in conn.execute(
        "SELECT recipient_id FROM email_events WHERE type = 'open' ORDER BY recipient_id").fetchall()]


def _segment_row(conn, segment: Path):
    return conn.execute("SELECT * FROM tracking_spool_segments WHERE segment = %s", [segment.name]).fetchone()


def test_a_line_is_in_the_file_when_append_returns(spool_dir, ledger):
    campaign_id, (first, *_) = ledger
    spool = Spool(spool_dir)
    line = _open(campaign_id, first)
    spool.append(line)
    # read through another descriptor: the whole line is with the kernel, nothing held in a user-space buffer
    [segment] = segments(spool_dir)
    assert segment.read_bytes() == line
    spool.close()


def test_a_live_writers_segment_is_drained_but_kept_and_a_sealed_one_is_deleted(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = Spool(spool_dir)
    for recipient_id in ids[:3]:
        spool.append(_open(campaign_id, recipient_id))
    assert drain_once(spool_dir, db) == 3
    [segment] = segments(spool_dir)  # the writer still holds it: drained, not deleted
    assert _segment_row(db, segment)["drained_bytes"] == segment.stat().st_size
    assert _segment_row(db, segment)["finished_at"] is None
    spool.append(_open(campaign_id, ids[3]))
    spool.close()
    assert drain_once(spool_dir, db) == 1
    assert segments(spool_dir) == []
    assert _segment_row(db, segment)["finished_at"] is not None
    assert _opens(db) == ids[:4]


def test_rotation_makes_new_segments_and_every_line_is_stored_once(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = Spool(spool_dir, segment_bytes=300)  # a few lines per segment
    for recipient_id in ids:
        spool.append(_open(campaign_id, recipient_id))
    assert len(segments(spool_dir)) > 5
    total = 0
    while settled := drain_once(spool_dir, db, batch=7):
        total += settled
    assert total == 50
    assert _opens(db) == ids
    assert len(segments(spool_dir)) == 1  # only the one still being written to
    spool.close()


def test_a_forked_worker_writes_its_own_segment_and_leaves_the_parents_alone(spool_dir, ledger, db):
    campaign_id, (first, second, *_) = ledger
    spool = Spool(spool_dir, fsync_seconds=0)
    spool.append(_open(campaign_id, first))
    [parents] = segments(spool_dir)
    pid = os.fork()  # what gunicorn does with --preload
    if pid == 0:
        try:
            spool.append(_open(campaign_id, second))
        finally:
            os._exit(0 if len(segments(spool_dir)) == 2 else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    while drain_once(spool_dir, db):
        pass
    assert _opens(db) == [first, second]
    assert segments(spool_dir) == [parents]  # the child's is sealed and gone; the parent's is live
    spool.append(_open(campaign_id, first))  # and still the parent's
    assert segments(spool_dir) == [parents]
    spool.close()


def test_a_forked_child_that_never_writes_does_not_keep_the_parents_segment_live(spool_dir, ledger):
    campaign_id, (first, *_) = ledger
    spool = Spool(spool_dir, fsync_seconds=0)
    spool.append(_open(campaign_id, first))
    [parents] = segments(spool_dir)
    done_r, done_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that never appends: it says it runs (fork hooks done), then waits for the parent
        os.close(done_w)
        os.write(ready_w, b"r")
        os.read(done_r, 1)
        os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"r"
        spool.close()  # the parent moves on: its segment must be sealed although the child still lives
        fd = os.open(parents, os.O_RDONLY)
        try:
            assert _is_sealed(fd)
        finally:
            os.close(fd)
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)
        for fd in (done_r, ready_r):
            os.close(fd)


def test_a_file_system_without_per_file_flock_is_refused_at_start(spool_dir, settings, monkeypatch):
    from campaigns.config import ConfigError
    from tracking_service import create_app

    # NFS and some FUSE mounts emulate flock(2) with POSIX locks, which never conflict within one process
    monkeypatch.setattr(fcntl, "flock", fcntl.lockf)
    with pytest.raises(ConfigError, match=r"TRACKING_SPOOL_DIR .* must be on local disk: .*not per open file"):
        create_app({"TESTING": True, "TRACKING_DRAINER": False, "TRACKING_SPOOL_DIR": spool_dir})


_WRITER = """
import os, sys
from tracking_service.spool import Spool
from tracking_service.spool_format import encode_event
spool = Spool(sys.argv[1])
for recipient_id in map(int, sys.argv[3:]):
    spool.append(encode_event(type="open", campaign_id=int(sys.argv[2]), recipient_id=recipient_id))
print("written", flush=True)
sys.stdin.read()  # alive, holding its segment, until killed
"""


def test_events_of_a_killed_worker_are_all_stored_and_its_segment_removed(spool_dir, ledger, db):
    campaign_id, ids = ledger
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}"}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(spool_dir), str(campaign_id), *map(str, ids)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"  # every append returned: these are the 2xx events
        assert drain_once(spool_dir, db, batch=20) == 20  # drained in part while it lives
        writer.send_signal(signal.SIGKILL)  # no close, no flush, no goodbye
        writer.wait(10)
    finally:
        writer.kill()
    while drain_once(spool_dir, db, batch=20):
        pass
    assert _opens(db) == ids
    assert segments(spool_dir) == []


def test_a_drainer_crash_before_commit_stores_nothing_and_the_next_round_stores_each_line_once(
        spool_dir, ledger, db, dsn, monkeypatch):
    campaign_id, ids = ledger
    spool = Spool(spool_dir)
    for recipient_id in ids[:5]:
        spool.append(_open(campaign_id, recipient_id))
    real_advance = queries.load("tracking")["spool-advance"]

    # the events are inserted, then the drainer dies before the position is written: the transaction is lost
    sql = dict(queries.load("tracking"))
    sql["spool-advance"] = "SELECT pg_terminate_backend(pg_backend_pid())"
    monkeypatch.setattr(queries, "load", lambda area: sql)
    with pytest.raises(psycopg.OperationalError):
        drain_once(spool_dir, db)
    monkeypatch.undo()
    assert queries.load("tracking")["spool-advance"] == real_advance
    with campaign_db.connect(dsn, autocommit=True) as fresh:
        assert _opens(fresh) == []
        assert drain_once(spool_dir, fresh) == 5
        assert _opens(fresh) == ids[:5]
        assert drain_once(spool_dir, fresh) == 0
        assert _opens(fresh) == ids[:5]
    spool.close()


def test_concurrent_drainers_and_rotating_writers_store_each_line_exactly_once(spool_dir, ledger, db, dsn):
    campaign_id, ids = ledger
    per_writer = [ids * 4, ids * 4, ids * 4]  # 3 writers x 200 events, a new segment every few lines
    total = sum(map(len, per_writer))
    writing = threading.Event()
    writing.set()
    settled: list[int] = []
    errors: list[BaseException] = []
    deadline = time.monotonic() + 60

    def write(recipients: list[int]) -> None:
        spool = Spool(spool_dir, segment_bytes=400)
        try:
            for recipient_id in recipients:
                spool.append(_open(campaign_id, recipient_id))
        finally:
            spool.close()

    def drain() -> None:
        try:
            with campaign_db.connect(dsn, autocommit=True) as conn:
                drainer, mine = SpoolDrainer(spool_dir, batch=3), 0
                while time.monotonic() < deadline:
                    n, _ = drainer.drain_once(conn)
                    mine += n
                    if not n and not writing.is_set() and not segments(spool_dir):
                        break
                settled.append(mine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    drainers = [threading.Thread(target=drain, daemon=True) for _ in range(4)]
    writers = [threading.Thread(target=write, args=(r,), daemon=True) for r in per_writer]
    for thread in drainers + writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    writing.clear()
    for thread in drainers:
        thread.join(60)
    assert errors == []
    assert sum(settled) == total, "a line was drained twice (or never)"
    assert _opens(db) == sorted(ids * 12)
    stored = db.execute("SELECT sum(drained_events) AS n, count(*) AS segments FROM tracking_spool_segments").fetchone()
    assert stored["n"] == total
    assert stored["segments"] > 3  # the writers really rotated while the drainers ran
    assert segments(spool_dir) == []


def test_a_nul_filled_segment_is_rejected_and_does_not_hold_up_the_next_one(spool_dir, ledger, db):
    campaign_id, (first, *_) = ledger
    spool_dir.mkdir()
    # what a machine crash can leave of a segment whose blocks were allocated but never written (ext4, XFS)
    (spool_dir / "vm.1.1.events").write_bytes(b"\0" * 300)
    healthy = Spool(spool_dir)
    healthy.append(_open(campaign_id, first))
    healthy.close()
    drain_once(spool_dir, db)  # one round: the damaged segment comes first and must not stop it
    assert _opens(db) == [first]
    [reject] = db.execute("SELECT line, error FROM tracking_spool_rejects").fetchall()
    assert reject["line"] == "\\x00" * 300  # kept, escaped: PostgreSQL text cannot hold NUL
    assert reject["error"] == "incomplete or oversized spool line"
    assert segments(spool_dir) == []


def test_a_segment_that_cannot_be_read_is_skipped_and_the_others_are_drained(spool_dir, ledger, db, monkeypatch,
                                                                           caplog):
    campaign_id, (first, second, *_) = ledger
    for recipient_id in (first, second):
        spool = Spool(spool_dir)
        spool.append(_open(campaign_id, recipient_id))
        spool.close()
    unreadable, _ = segments(spool_dir)
    real_open = os.open

    def deny(path, flags, *args):
        if Path(path) == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    drain_once(spool_dir, db)
    assert _opens(db) == [second]
    assert f"tracking spool segment {unreadable} could not be drained" in caplog.text
    assert segments(spool_dir) == [unreadable]


def test_a_live_segment_ending_in_a_partial_line_does_not_make_the_drainer_spin(spool_dir, ledger, db):
    campaign_id, (first, *_) = ledger
    spool = Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    os.write(spool._fd, b'["open",1,')  # a writer caught in the middle of a line
    drainer = SpoolDrainer(spool_dir)
    assert drainer.drain_once(db) == (1, False)
    assert drainer.drain_once(db) == (0, False)  # nothing to do right away: the drainer thread waits
    spool.close()


def test_a_pruned_segment_row_is_registered_again(spool_dir, ledger, db):
    campaign_id, (first, second, *_) = ledger
    spool = Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    drainer = SpoolDrainer(spool_dir)
    assert drainer.drain_once(db)[0] == 1
    db.execute("DELETE FROM tracking_spool_segments")
    spool.append(_open(campaign_id, second))
    assert drainer.drain_once(db)[0] == 0  # the row is gone: skipped this round, forgotten
    assert drainer.drain_once(db)[0] == 2  # registered again, read from the start
    assert _opens(db) == [first, second]  # the re-read first line is not stored twice (its key is unique)
    spool.close()


def test_drain_refuses_a_connection_that_is_not_autocommit(spool_dir, dsn):
    with campaign_db.connect(dsn) as conn, pytest.raises(ValueError, match="autocommit"):
        drain_once(spool_dir, conn)


def test_two_drainers_racing_on_one_recipients_clicks_record_one_implied_open(ledger, dsn, db):
    campaign_id, (first, *_) = ledger

    def click(key: str) -> BufferedEvent:
        return parse_line(key, encode_event(
            type="click", campaign_id=campaign_id, recipient_id=first, link_id=0))

    outcome: list[object] = []

    def store_as_b(conn) -> None:
        try:
            outcome.append(_store(conn, [click("spool:b:0")]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    with campaign_db.connect(dsn, autocommit=True) as a, campaign_db.connect(dsn, autocommit=True) as b:
        b_pid = b.info.backend_pid
        with a.transaction():
            _store(a, [click("spool:a:0")])
            # b stores the same recipient's other click while a has not committed: neither sees the other's open
            racer = threading.Thread(target=store_as_b, args=(b,), daemon=True)
            racer.start()
            poll(lambda: db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                                    [b_pid]).fetchone(), what="b waiting on a's uncommitted rows", timeout=30,
                 interval=0.02)
        racer.join(30)
    assert not racer.is_alive()
    assert outcome == [(1, [])]
    implied = db.execute("SELECT count(*) AS n FROM email_events WHERE subtype = 'implied_by_click'").fetchone()
    clicks = db.execute("SELECT count(*) AS n FROM email_events WHERE type = 'click'").fetchone()
    assert (clicks["n"], implied["n"]) == (2, 1)


def test_torn_and_malformed_lines_are_kept_as_rejects_not_dropped_and_do_not_block(spool_dir, ledger, db):
    campaign_id, (first, second, *_) = ledger
    spool = Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    spool.append(b'{"not": "an event"}\n')
    spool.append(_open(campaign_id, second))
    [segment] = segments(spool_dir)
    spool.close()
    with open(segment, "ab") as torn:  # a writer that died in the middle of a line
        torn.write(b'["open",1,')
    while drain_once(spool_dir, db):
        pass
    assert _opens(db) == [first, second]
    rejects = db.execute("SELECT line, error FROM tracking_spool_rejects ORDER BY byte_offset").fetchall()
    assert [(r["line"], r["error"]) for r in rejects] == [
        ('{"not": "an event"}', "malformed spool line"),
        ('["open",1,', "incomplete or oversized spool line"),
    ]
    row = _segment_row(db, segment)
    assert (row["drained_events"], row["rejected_lines"]) == (2, 2)
    assert segments(spool_dir) == []


def test_a_line_postgres_refuses_is_kept_with_the_error_and_the_rest_of_the_batch_is_stored(spool_dir, ledger,
                                                                                          db):
    campaign_id, (first, second, *_) = ledger
    spool = Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    spool.append(encode_event(type="open", campaign_id=campaign_id, recipient_id=second,
                              ip="not-an-address"))
    spool.close()
    assert drain_once(spool_dir, db) == 2
    assert _opens(db) == [first]
    [reject] = db.execute("SELECT line, error FROM tracking_spool_rejects").fetchall()
    assert '"not-an-address"' in reject["line"]
    assert "inet" in reject["error"]
    assert backlog(spool_dir, db) == 0


def test_backlog_counts_bytes_not_yet_stored(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = Spool(spool_dir)
    lines = [_open(campaign_id, recipient_id) for recipient_id in ids[:4]]
    for line in lines:
        spool.append(line)
    assert backlog(spool_dir, db) == sum(map(len, lines))
    drain_once(spool_dir, db, batch=3)
    assert backlog(spool_dir, db) == len(lines[3])
    spool.close()


def test_fsync_every_event_when_the_interval_is_zero(spool_dir, ledger, monkeypatch):
    campaign_id, ids = ledger
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    spool = Spool(spool_dir, fsync_seconds=0)
    for recipient_id in ids[:3]:
        spool.append(_open(campaign_id, recipient_id))
    assert synced.count(spool._fd) == 3  # (other spools' flushers in this process may sync their own files)
    spool.close()


def test_old_unlocked_temporaries_are_removed_but_a_held_or_recent_one_is_kept(spool_dir, db):
    spool_dir.mkdir()
    abandoned, held, recent = (spool_dir / f".vm.{n}.1.events.new" for n in (1, 2, 3))
    for path in (abandoned, held, recent):
        path.write_bytes(b"")
    for path in (abandoned, held):
        os.utime(path, (time.time() - 120, time.time() - 120))
    holder = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a writer between create and rename
        drain_once(spool_dir, db)
    finally:
        os.close(holder)
    assert sorted(p.name for p in spool_dir.iterdir()) == sorted([held.name, recent.name])


def test_bad_spool_settings_are_refused_with_their_names(spool_dir):
    with pytest.raises(ValueError, match="TRACKING_SPOOL_SEGMENT_BYTES"):
        Spool(spool_dir, segment_bytes=0)
    with pytest.raises(ValueError, match="TRACKING_SPOOL_FSYNC_SECONDS"):
        Spool(spool_dir, fsync_seconds=-1)
