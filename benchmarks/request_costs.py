"""What one tracking request's parts cost, in one process, side by side: the figures behind the spool design.

Measures CPU time (and wall time) per call, median of `--rounds` rounds of `--calls` calls each:

- Flask handling a hello-world request (the WSGI app called directly: no gunicorn, no socket);
- the tracking service handling an open pixel the same way (token check, flags, one spool append);
- one Redis round trip (PING) from redis-py: what buffering in Redis added to every request;
- one spool append (a write(2) of one event line): what buffering on local disk adds.

    .venv/bin/python benchmarks/request_costs.py          # needs `make services` (Redis)

No database is touched: the pixel's event goes to a temporary spool that nothing drains.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "include"), str(ROOT / "benchmarks")]


def _environ(path: str) -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1",
            "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) bench", "wsgi.multithread": True,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}


def _wsgi_call(app, path: str) -> Callable[[], None]:
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def call() -> None:
        body = app(_environ(path), start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
        if not statuses.pop().startswith("200"):
            raise RuntimeError(f"{path} did not answer 200")

    return call


def _measure(call: Callable[[], None], calls: int, rounds: int) -> tuple[float, float]:
    """Median CPU and wall microseconds per call."""
    for _ in range(min(calls, 200)):
        call()
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call()
        cpu.append((time.process_time() - c0) / calls * 1e6)
        wall.append((time.perf_counter() - w0) / calls * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import redis
    from tracking_load import hello_app

    from campaigns.feedback.tokens import TokenCodec
    from devstack.settings import SETTINGS
    from tracking_service import create_app
    from tracking_service.spool import Spool
    from tracking_service.spool_format import encode_event

    spool_dir = Path(tempfile.mkdtemp(prefix="request-costs-"))
    os.environ.update(TRACKING_SECRET_KEYS="bench-key", TRACKING_DRAINER="0", TRACKING_SPOOL_DIR=str(spool_dir))
    tracking = create_app()
    token = TokenCodec(["bench-key"]).open_token(1, 12345)
    client = redis.Redis.from_url(SETTINGS.redis_url(0))
    spool = Spool(spool_dir / "direct")
    line = encode_event(type="open", campaign_id=1, recipient_id=12345, ip="127.0.0.1",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64) bench")
    rows = [
        ("Flask hello-world request (WSGI)", _wsgi_call(hello_app(), "/hello")),
        ("tracking open pixel (WSGI, spooled)", _wsgi_call(tracking, f"/o/{token}.gif")),
        ("Redis round trip (PING, redis-py)", client.ping),
        ("spool append (one event line)", lambda: spool.append(line)),
    ]
    try:
        print(f"{args.rounds} rounds x {args.calls} calls, medians, microseconds per call")
        print(f"{'':40} {'CPU':>8} {'wall':>8}")
        for name, call in rows:
            cpu, wall = _measure(call, args.calls, args.rounds)
            print(f"{name:40} {cpu:8.1f} {wall:8.1f}", flush=True)
    finally:
        spool.close()
        tracking.extensions["tracking_spool"].close()
        client.close()
        for path in sorted(spool_dir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        spool_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
