"""Load-test the tracking service under gunicorn: open pixel and click redirect (events persisted) vs hello world.

Starts two gunicorns with the same settings on free loopback ports: the real app (`tracking_service:create_app()`,
drainer threads on) and a one-route Flask app. A scratch database (`campaigns_bench`, migrated here, dropped at the
end) holds a campaign with ledger rows and links; the event spool is a temporary folder. Each round sends a fixed
number of requests over `--connections` keep-alive connections from an asyncio client, then waits until the
drainers have stored the whole spool and counts the stored events: they must equal the 2xx/3xx responses. The
CPU table at the end says where the time went, per request, by process (the client shares the same cores).
Throughput counts successful responses only; any failed request (4xx/5xx, reset) fails the run.

    .venv/bin/python benchmarks/tracking_load.py                      # 3 rounds x 20000 requests per scenario
    .venv/bin/python benchmarks/tracking_load.py --requests 3000 --rounds 1   # smoke run

Targets: pixel and click >= 0.5x the hello-world rate, p99 <= 50 ms at 32 connections, stored events == responses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from flask import Flask

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "campaigns_bench"
SECRET = "bench-signing-key"


def hello_app() -> Flask:
    """The baseline: one route, no I/O (gunicorn: `tracking_load:hello_app()` from benchmarks/)."""
    app = Flask("hello")

    @app.get("/hello")
    def hello():
        return "Hello, World!"

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_database(admin_dsn: str, dsn: str, recipients: int) -> tuple[int, list[int]]:
    from campaigns import schema
    from campaigns.feedback.links import register_links

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")  # fixed name, not input
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    schema.upgrade(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        campaign_id = conn.execute(
            """INSERT INTO campaigns (key, name, subject, from_email, html, audience, status)
               VALUES ('bench', 'bench', 'Hi', 'news@example.com', '<p>x</p>', '{"lists": []}', 'running')
               RETURNING id""").fetchone()[0]
        ids = [r[0] for r in conn.execute(
            """INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)
               SELECT %s, 'r' || g || '@example.com', 'sent', 'ses-' || g, now() - interval '1 hour'
                 FROM generate_series(1, %s) g RETURNING id""", [campaign_id, recipients]).fetchall()]
        register_links(conn, campaign_id, [f"https://example.com/page/{i}" for i in range(5)])
    return campaign_id, ids


def _start_gunicorn(app: str, port: int, ready_path: str, args: argparse.Namespace, env: dict[str, str],
                    chdir: Path, procs: list[subprocess.Popen]) -> None:
    """Start gunicorn in its own session (added to `procs` at once, so it is stopped whatever happens next) and
    return when a worker answers `ready_path` (a bound port alone only says the master is up)."""
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers",
           str(args.workers), "--worker-class", args.worker_class, "--threads", str(args.threads),
           "--keep-alive", "30", "--backlog", "2048", "--log-level", "warning", "--chdir", str(chdir), app]
    procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", ready_path)
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn for {app} did not answer {ready_path} within 30 s")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, SIGKILL what is still there after 10 s."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _connection(port: int, requests: list[bytes], counter: list[int], total: int, out: dict) -> None:
    reader = writer = None
    while True:
        i = counter[0]
        if i >= total:
            break
        counter[0] = i + 1
        req = requests[i % len(requests)]
        for attempt in range(2):
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            start = time.perf_counter()
            try:
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()
                reader = writer = None
                if attempt:
                    out["errors"] += 1
                continue
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                await reader.readexactly(length)
            out["latencies"].append(time.perf_counter() - start)
            out["ok" if 200 <= status < 400 else "bad"] += 1
            if close:
                writer.close()
                reader = writer = None
            break
    if writer is not None:
        writer.close()


async def _load(port: int, paths: list[str], total: int, connections: int) -> dict:
    requests = [f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) bench\r\n\r\n"
                .encode() for p in paths]
    out = {"latencies": [], "ok": 0, "bad": 0, "errors": 0}
    counter = [0]
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, requests, counter, total, out) for _ in range(connections)))
    out["seconds"] = time.perf_counter() - start
    return out


def _summary(out: dict) -> dict:
    """Throughput counts successful responses only; a round with any failure fails the benchmark (see main)."""
    lat = sorted(out["latencies"])
    return {"rps": out["ok"] / out["seconds"], "p50": lat[len(lat) // 2] * 1000,
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, "ok": out["ok"], "bad": out["bad"],
            "errors": out["errors"]}


def _wait_drained(dsn: str, spool_dir: Path, timeout: float = 60) -> float:
    """Seconds until every byte written to the spool is stored in PostgreSQL."""
    from tracking_service.drainer import backlog

    start = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() - start < timeout:
            if backlog(spool_dir, conn) == 0:
                return time.monotonic() - start
            time.sleep(0.05)
    raise RuntimeError("drainers did not empty the spool in time")


def _cpu_seconds() -> dict[int, tuple[str, int, float]]:
    """user+system CPU seconds of every process: pid -> (command line, session id, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(pid)] = (cmd, int(fields[3]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _cpu_by_part(before: dict, after: dict, sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent between two `_cpu_seconds` snapshots, by part of the system."""
    parts: dict[str, float] = {}
    me = os.getpid()
    for pid, (cmd, sid, seconds) in after.items():
        spent = seconds - before.get(pid, (cmd, sid, 0.0))[2]
        if spent <= 0:
            continue
        if pid == me:
            part = "load client"
        elif sid in sessions:
            part = sessions[sid]
        elif "redis-server" in cmd:
            part = "redis"
        elif cmd.startswith("postgres"):
            part = "postgres"
        else:
            part = "other"
        parts[part] = parts.get(part, 0.0) + spent
    return parts


def _count(dsn: str, type_: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM email_events WHERE type = %s AND subtype IS NULL",
                            [type_]).fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round and scenario")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--recipients", type=int, default=5000)
    parser.add_argument("--drainer", choices=("thread", "process"), default="thread",
                        help="drain in a thread of each web worker (default) or in one `python -m "
                             "tracking_service.drain --follow` process beside them (TRACKING_DRAINER=0)")
    args = parser.parse_args()

    from campaigns.feedback.tokens import TokenCodec
    from devstack.settings import SETTINGS

    admin_dsn, dsn = SETTINGS.pg_dsn("postgres"), SETTINGS.pg_dsn(BENCH_DB)
    spool_dir = Path(tempfile.mkdtemp(prefix="tracking-spool-"))
    procs: list[subprocess.Popen] = []
    results: dict[str, list[dict]] = {"hello": [], "pixel": [], "click": []}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in results}
    try:
        campaign_id, recipient_ids = _prepare_database(admin_dsn, dsn, args.recipients)
        codec = TokenCodec([SECRET])
        pixel_paths = [f"/o/{codec.open_token(campaign_id, r)}.gif" for r in recipient_ids]
        click_paths = [f"/c/{codec.click_token(campaign_id, r, r % 5)}" for r in recipient_ids]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}", "TRACKING_SECRET_KEYS": SECRET,
               "AIRFLOW_CONN_CAMPAIGN_DB": json.dumps({"conn_type": "postgres", "host": "127.0.0.1",
                                                       "port": SETTINGS.pg_port, "login": SETTINGS.pg_user,
                                                       "password": SETTINGS.pg_password, "schema": BENCH_DB}),
               "TRACKING_SPOOL_DIR": str(spool_dir)}
        tracking_port, hello_port = _free_port(), _free_port()
        tracking_env = {**env, "TRACKING_DRAINER": "0"} if args.drainer == "process" else env
        _start_gunicorn("tracking_service:create_app()", tracking_port, "/livez", args, tracking_env, ROOT, procs)
        _start_gunicorn("tracking_load:hello_app()", hello_port, "/hello", args, env, ROOT / "benchmarks", procs)
        sessions = {procs[0].pid: "tracking app", procs[1].pid: "hello app"}
        if args.drainer == "process":
            procs.append(subprocess.Popen([sys.executable, "-m", "tracking_service.drain", "--follow"],
                                          env=tracking_env, cwd=ROOT, start_new_session=True,
                                          stdout=subprocess.DEVNULL))
            sessions[procs[2].pid] = "drainer process"
        # warm-up: imports, connections, the link cache of every worker
        for port, paths in ((hello_port, ["/hello"]), (tracking_port, pixel_paths), (tracking_port, click_paths)):
            asyncio.run(_load(port, paths, 2000, args.connections))
        _wait_drained(dsn, spool_dir)
        for round_no in range(1, args.rounds + 1):
            for name, port, paths, type_ in (("hello", hello_port, ["/hello"], None),
                                             ("pixel", tracking_port, pixel_paths, "open"),
                                             ("click", tracking_port, click_paths, "click")):
                before = _count(dsn, type_) if type_ else 0
                cpu_before = _cpu_seconds()
                summary = _summary(asyncio.run(_load(port, paths, args.requests, args.connections)))
                summary["drain_s"] = _wait_drained(dsn, spool_dir) if type_ else 0.0
                cpu[name].append(_cpu_by_part(cpu_before, _cpu_seconds(), sessions))
                if type_:
                    summary["stored"] = _count(dsn, type_) - before
                results[name].append(summary)
                print(f"round {round_no} {name:5}: {summary['rps']:8.0f} req/s  p50 {summary['p50']:5.1f} ms  "
                      f"p99 {summary['p99']:5.1f} ms  ok {summary['ok']}  failed {summary['bad'] + summary['errors']}"
                      f"  stored {summary.get('stored', '-')}  drained {summary['drain_s']:.2f} s after the load",
                      flush=True)
    finally:
        _stop(procs)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        shutil.rmtree(spool_dir, ignore_errors=True)

    med = {name: {k: statistics.median(r[k] for r in rows) for k in ("rps", "p50", "p99")}
           for name, rows in results.items()}
    print(f"\ngunicorn -w {args.workers} -k {args.worker_class} --threads {args.threads}, {args.connections} "
          f"connections, {args.requests} requests x {args.rounds} rounds (medians), drainer: {args.drainer}")
    print(f"{'scenario':10} {'req/s':>9} {'x hello':>8} {'p50 ms':>8} {'p99 ms':>8} {'2xx/3xx':>9} {'failed':>7} "
          f"{'stored':>9} {'drain s':>8}  ok?")
    all_ok = True
    for name, rows in results.items():
        m = med[name]
        ratio = m["rps"] / med["hello"]["rps"]
        ok_total = sum(r["ok"] for r in rows)
        failed = sum(r["bad"] + r["errors"] for r in rows)
        stored = sum(r.get("stored", 0) for r in rows) if name != "hello" else None
        drain_s = statistics.median(r["drain_s"] for r in rows)
        good = m["p99"] <= 50 and failed == 0 and (name == "hello" or (ratio >= 0.5 and stored == ok_total))
        all_ok &= good
        print(f"{name:10} {m['rps']:9.0f} {ratio:8.2f} {m['p50']:8.1f} {m['p99']:8.1f} {ok_total:9d} {failed:7d} "
              f"{'-' if stored is None else stored:>9} {drain_s:8.2f}  {'yes' if good else 'NO'}")
    # where the CPU went: per request, load through drain, median over rounds (the 2 cores are shared by all)
    part_names = sorted({part for rounds in cpu.values() for r in rounds for part in r})
    print("\nCPU per request, microseconds (median of rounds; the load generator runs on the same cores)")
    print(f"{'scenario':10} " + " ".join(f"{part:>15}" for part in part_names) + f" {'total':>9}")
    for name, rounds in cpu.items():
        per = {part: statistics.median(r.get(part, 0.0) for r in rounds) / args.requests * 1e6
               for part in part_names}
        print(f"{name:10} " + " ".join(f"{per[part]:15.0f}" for part in part_names) + f" {sum(per.values()):9.0f}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
