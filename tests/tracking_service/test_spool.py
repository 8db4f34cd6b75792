"""The event spool (tracking_service.events_buffer): what a 2xx promises survives crashes of writers and drainers,
every line is stored exactly once, and what cannot be stored is kept with its reason. Real PostgreSQL; real
processes where a crash is the point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from campaigns import db as campaign_db
from tracking_service import events_buffer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spool_dir(tmp_path):
    return tmp_path / "spool"


@pytest.fixture
def ledger(db):
    """A campaign with 50 sent ledger rows: (campaign id, [recipient ids])."""
    campaign_id = db.execute(
        """INSERT INTO campaigns (key, name, subject, from_email, html, audience, status)
           VALUES ('spool', 'spool', 'Hi', 'news@example.com', '<p>x</p>', %s, 'running') RETURNING id""",
        [Jsonb({"lists": []})]).fetchone()["id"]
    ids = [r["id"] for r in db.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)
           SELECT %s, 'r' || g || '@example.com', 'sent', 'ses-' || g, now() - interval '1 hour'
             FROM generate_series(1, 50) g
           RETURNING id""", [campaign_id]).fetchall()]
    return campaign_id, ids


def _open(campaign_id: int, recipient_id: int) -> bytes:
    return events_buffer.encode_event(type="open", campaign_id=campaign_id, recipient_id=recipient_id,
                                      ip="192.0.2.1", user_agent="Mozilla/5.0 test")


def _opens(conn) -> list[int]:
    return [r["recipient_id"] for r in conn.execute(
        "SELECT recipient_id FROM email_events WHERE type = 'open' ORDER BY recipient_id").fetchall()]


def _segment_row(conn, segment: Path):
    return conn.execute("SELECT * FROM tracking_spool_segments WHERE segment = %s", [segment.name]).fetchone()


def test_a_line_is_in_the_file_when_append_returns(spool_dir, ledger):
    campaign_id, (first, *_) = ledger
    spool = events_buffer.Spool(spool_dir)
    line = _open(campaign_id, first)
    spool.append(line)
    # read through another descriptor: the whole line is with the kernel, nothing held in a user-space buffer
    [segment] = events_buffer.segments(spool_dir)
    assert segment.read_bytes() == line
    spool.close()


def test_a_live_writers_segment_is_drained_but_kept_and_a_sealed_one_is_deleted(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = events_buffer.Spool(spool_dir)
    for recipient_id in ids[:3]:
        spool.append(_open(campaign_id, recipient_id))
    assert events_buffer.drain_once(spool_dir, db) == 3
    [segment] = events_buffer.segments(spool_dir)  # the writer still holds it: drained, not deleted
    assert _segment_row(db, segment)["drained_bytes"] == segment.stat().st_size
    assert _segment_row(db, segment)["finished_at"] is None
    spool.append(_open(campaign_id, ids[3]))
    spool.close()
    assert events_buffer.drain_once(spool_dir, db) == 1
    assert events_buffer.segments(spool_dir) == []
    assert _segment_row(db, segment)["finished_at"] is not None
    assert _opens(db) == ids[:4]


def test_rotation_makes_new_segments_and_every_line_is_stored_once(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = events_buffer.Spool(spool_dir, segment_bytes=300)  # a few lines per segment
    for recipient_id in ids:
        spool.append(_open(campaign_id, recipient_id))
    assert len(events_buffer.segments(spool_dir)) > 5
    total = 0
    while settled := events_buffer.drain_once(spool_dir, db, batch=7):
        total += settled
    assert total == 50
    assert _opens(db) == ids
    assert len(events_buffer.segments(spool_dir)) == 1  # only the one still being written to
    spool.close()


def test_a_forked_worker_writes_its_own_segment_and_leaves_the_parents_alone(spool_dir, ledger, db):
    campaign_id, (first, second, *_) = ledger
    spool = events_buffer.Spool(spool_dir, fsync_seconds=0)
    spool.append(_open(campaign_id, first))
    [parents] = events_buffer.segments(spool_dir)
    pid = os.fork()  # what gunicorn does with --preload
    if pid == 0:
        try:
            spool.append(_open(campaign_id, second))
        finally:
            os._exit(0 if len(events_buffer.segments(spool_dir)) == 2 else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    while events_buffer.drain_once(spool_dir, db):
        pass
    assert _opens(db) == [first, second]
    assert events_buffer.segments(spool_dir) == [parents]  # the child's is sealed and gone; the parent's is live
    spool.append(_open(campaign_id, first))  # and still the parent's
    assert events_buffer.segments(spool_dir) == [parents]
    spool.close()


_WRITER = """
import os, sys
from tracking_service import events_buffer
spool = events_buffer.Spool(sys.argv[1])
for recipient_id in map(int, sys.argv[3:]):
    spool.append(events_buffer.encode_event(type="open", campaign_id=int(sys.argv[2]), recipient_id=recipient_id))
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
        assert events_buffer.drain_once(spool_dir, db, batch=20) == 20  # drained in part while it lives
        writer.send_signal(signal.SIGKILL)  # no close, no flush, no goodbye
        writer.wait(10)
    finally:
        writer.kill()
    while events_buffer.drain_once(spool_dir, db, batch=20):
        pass
    assert _opens(db) == ids
    assert events_buffer.segments(spool_dir) == []


def test_a_drainer_crash_before_commit_stores_nothing_and_the_next_round_stores_each_line_once(
        spool_dir, ledger, db, dsn, monkeypatch):
    campaign_id, ids = ledger
    spool = events_buffer.Spool(spool_dir)
    for recipient_id in ids[:5]:
        spool.append(_open(campaign_id, recipient_id))
    real_advance = events_buffer.queries.load("tracking")["spool-advance"]

    # the events are inserted, then the drainer dies before the position is written: the transaction is lost
    sql = dict(events_buffer.queries.load("tracking"))
    sql["spool-advance"] = "SELECT pg_terminate_backend(pg_backend_pid())"
    monkeypatch.setattr(events_buffer.queries, "load", lambda area: sql)
    with pytest.raises(psycopg.OperationalError):
        events_buffer.drain_once(spool_dir, db)
    monkeypatch.undo()
    assert events_buffer.queries.load("tracking")["spool-advance"] == real_advance
    with campaign_db.connect(dsn, autocommit=True) as fresh:
        assert _opens(fresh) == []
        assert events_buffer.drain_once(spool_dir, fresh) == 5
        assert _opens(fresh) == ids[:5]
        assert events_buffer.drain_once(spool_dir, fresh) == 0
        assert _opens(fresh) == ids[:5]
    spool.close()


def test_concurrent_drainers_share_segments_and_store_each_line_once(spool_dir, ledger, db, dsn):
    campaign_id, ids = ledger
    spools = [events_buffer.Spool(spool_dir, segment_bytes=400) for _ in range(3)]
    for i, recipient_id in enumerate(ids * 4):
        spools[i % 3].append(_open(campaign_id, recipient_id))
    for spool in spools:
        spool.close()
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            with campaign_db.connect(dsn, autocommit=True) as conn:
                drainer = events_buffer.SpoolDrainer(spool_dir, batch=3)
                while drainer.drain_once(conn)[0] or events_buffer.segments(spool_dir):
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert _opens(db) == sorted(ids * 4)
    assert events_buffer.segments(spool_dir) == []


def test_torn_and_malformed_lines_are_kept_as_rejects_not_dropped_and_do_not_block(spool_dir, ledger, db):
    campaign_id, (first, second, *_) = ledger
    spool = events_buffer.Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    spool.append(b'{"not": "an event"}\n')
    spool.append(_open(campaign_id, second))
    [segment] = events_buffer.segments(spool_dir)
    spool.close()
    with open(segment, "ab") as torn:  # a writer that died in the middle of a line
        torn.write(b'["open",1,')
    while events_buffer.drain_once(spool_dir, db):
        pass
    assert _opens(db) == [first, second]
    rejects = db.execute("SELECT line, error FROM tracking_spool_rejects ORDER BY byte_offset").fetchall()
    assert [(r["line"], r["error"]) for r in rejects] == [
        ('{"not": "an event"}', "malformed spool line"),
        ('["open",1,', "incomplete or oversized spool line"),
    ]
    row = _segment_row(db, segment)
    assert (row["drained_events"], row["rejected_lines"]) == (2, 2)
    assert events_buffer.segments(spool_dir) == []


def test_a_line_postgres_refuses_is_kept_with_the_error_and_the_rest_of_the_batch_is_stored(spool_dir, ledger,
                                                                                          db):
    campaign_id, (first, second, *_) = ledger
    spool = events_buffer.Spool(spool_dir)
    spool.append(_open(campaign_id, first))
    spool.append(events_buffer.encode_event(type="open", campaign_id=campaign_id, recipient_id=second,
                                            ip="not-an-address"))
    spool.close()
    assert events_buffer.drain_once(spool_dir, db) == 2
    assert _opens(db) == [first]
    [reject] = db.execute("SELECT line, error FROM tracking_spool_rejects").fetchall()
    assert '"not-an-address"' in reject["line"]
    assert "inet" in reject["error"]
    assert events_buffer.backlog(spool_dir, db) == 0


def test_backlog_counts_bytes_not_yet_stored(spool_dir, ledger, db):
    campaign_id, ids = ledger
    spool = events_buffer.Spool(spool_dir)
    lines = [_open(campaign_id, recipient_id) for recipient_id in ids[:4]]
    for line in lines:
        spool.append(line)
    assert events_buffer.backlog(spool_dir, db) == sum(map(len, lines))
    events_buffer.drain_once(spool_dir, db, batch=3)
    assert events_buffer.backlog(spool_dir, db) == len(lines[3])
    spool.close()


def test_fsync_every_event_when_the_interval_is_zero(spool_dir, ledger, monkeypatch):
    campaign_id, ids = ledger
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    spool = events_buffer.Spool(spool_dir, fsync_seconds=0)
    for recipient_id in ids[:3]:
        spool.append(_open(campaign_id, recipient_id))
    assert len(synced) == 3
    spool.close()


def test_bad_spool_settings_are_refused_with_their_names(spool_dir):
    with pytest.raises(ValueError, match="TRACKING_SPOOL_SEGMENT_BYTES"):
        events_buffer.Spool(spool_dir, segment_bytes=0)
    with pytest.raises(ValueError, match="TRACKING_SPOOL_FSYNC_SECONDS"):
        events_buffer.Spool(spool_dir, fsync_seconds=-1)
