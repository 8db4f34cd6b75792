"""The tracking service under gunicorn, killed with SIGKILL in the middle of a load: every open that got a 200
is stored once the spool is drained, and nothing that was not requested is."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from campaigns.feedback.tokens import TokenCodec
from devstack.processes import poll
from tests.helpers import sent_ledger
from tracking_service.drainer import drain_once
from tracking_service.spool_format import segments

ROOT = Path(__file__).resolve().parents[2]
RECIPIENTS = 800


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture
def recipients(db):
    return sent_ledger(db, "crash", RECIPIENTS)


@pytest.fixture(params=["drainer threads", "no drainer"])
def service(request, tmp_path, settings):
    """gunicorn with 2 workers x 4 threads in its own session; its drainer threads race the requests and the kill,
    or are off (then everything is drained after the crash)."""
    port, spool_dir = _free_port(), tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}",
           "TRACKING_DRAINER": "1" if request.param == "drainer threads" else "0",
           "TRACKING_SPOOL_DIR": str(spool_dir)}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--worker-class", "gthread", "--threads", "4", "--log-level", "warning", "tracking_service:create_app()"],
        cwd=ROOT, env=env, start_new_session=True)
    try:
        poll(lambda: _healthy(port), what="gunicorn serving /healthz", timeout=30, interval=0.1)
        yield proc, port, spool_dir
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_every_open_answered_200_survives_a_sigkill_of_the_whole_service(service, recipients, settings, db):
    proc, port, spool_dir = service
    campaign_id, ids = recipients
    codec = TokenCodec(settings.tracking_secret_keys)
    answered: list[int] = []  # recipients whose pixel request got a 200
    attempted: list[int] = []
    refused: list[int] = []  # sent after the kill: the connection was refused, so the service never saw them
    lock = threading.Lock()
    half_answered = threading.Event()
    work = iter(ids)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            send_all(conn)
        finally:
            conn.close()

    def send_all(conn: http.client.HTTPConnection) -> None:
        while True:
            with lock:
                recipient_id = next(work, None)
                if recipient_id is None:
                    return
                attempted.append(recipient_id)
            try:
                conn.request("GET", f"/o/{codec.open_token(campaign_id, recipient_id)}.gif",
                             headers={"User-Agent": "Mozilla/5.0 crash-test"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:  # the service is gone: no (whole) answer
                conn.close()
                if isinstance(exc, ConnectionRefusedError):
                    with lock:
                        refused.append(recipient_id)
                continue
            if response.status == 200:
                with lock:
                    answered.append(recipient_id)
                    if len(answered) >= RECIPIENTS // 2:
                        half_answered.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert half_answered.wait(60), "the service never answered half of the requests"
    os.killpg(proc.pid, signal.SIGKILL)  # master and workers, mid-load: no shutdown, no flush, no close
    for thread in threads:
        thread.join(60)
    proc.wait(10)

    while drain_once(spool_dir, db):
        pass
    stored = [r["recipient_id"] for r in db.execute(
        "SELECT recipient_id FROM email_events WHERE type = 'open' ORDER BY recipient_id").fetchall()]
    assert len(answered) < len(attempted), "the kill came after the load ended: nothing was tested"
    assert not set(answered) - set(stored), "opens answered 200 were lost in the crash"
    assert len(stored) == len(set(stored)), "an open was stored twice"
    assert refused, "no request came after the kill"
    assert not set(stored) & set(refused), "an open nobody could have sent was stored"
    assert segments(spool_dir) == []  # the dead workers' segments were drained and removed
