"""One send task through the real send path (render + MIME + ledger + Redis limiter) against a local SES endpoint
(moto server in its own process) with added latency per call: does it hold the rate R?

    .venv/bin/python benchmarks/send_throughput.py [--rate 200] [--seconds 20] [--latency 0.05] [--rounds 3]

Target: achieved / R >= 0.95 from one task. Printed beside it, in the same run: the same task with one thread
(what a sender without a thread pool reaches at that latency). The latency is added in the SES client before each
request leaves (a botocore `before-send` hook), so the code under test is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import redis

from campaigns import db
from campaigns.config import get_settings
from campaigns.lifecycle import pipeline
from campaigns.sending.ledger import Attempt
from campaigns.sending.plan import SendTask
from campaigns.sending.ratelimit import RateLimiter, default_thread_count
from campaigns.sending.sender import SendBatch
from campaigns.sending.ses import SesTransport, client_config
from devstack.services import scratch_database
from devstack.settings import SETTINGS

HTML = "<html><body><h1>Hello {{ first_name }}</h1>" + "<p>News paragraph with some words.</p>" * 40 + (
    '<p><a href="https://example.com/a">A</a> <a href="https://example.com/b">B</a></p></body></html>')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fresh_ses():
    """A new moto server per measurement: moto keeps every message and counts them on each send, so it slows down
    as it fills; a fresh one makes rounds comparable."""
    server, endpoint = start_ses()
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait()


def start_ses() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, endpoint


def ses_client(endpoint: str, threads: int, latency: float):
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", config=client_config(threads))
    client.meta.events.register("before-send.sesv2.SendEmail", lambda **kwargs: time.sleep(latency))
    client.create_email_identity(EmailIdentity="example.com")
    return client


def prepare_campaign(dsn: str, recipients: int) -> dict:
    """A running campaign of `recipients` rows in one send task, built by the pipeline's own functions."""
    with db.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE campaign_recipients, campaigns, contacts, lists RESTART IDENTITY CASCADE")
        conn.execute("INSERT INTO lists (name) VALUES ('bench')")
        conn.execute("""INSERT INTO contacts (email, first_name) SELECT 'r' || g || '@example.org', 'Reader' || g
                        FROM generate_series(1, %s) g""", [recipients])
        conn.execute("INSERT INTO list_members (list_id, contact_id) SELECT 1, id FROM contacts")
    conf = {"campaign": {"key": f"bench-{uuid.uuid4().hex[:6]}", "subject": "Hi {{ first_name }}",
                         "from_email": "news@example.com", "html": HTML, "audience": {"lists": ["bench"]}},
            "batch_size": 500}
    campaign_id = pipeline.resolve_campaign(conf, "bench")
    pipeline.snapshot_recipients(campaign_id, conf)
    [task] = pipeline.plan_batches(campaign_id, conf, "bench", rate=1e9)  # one task carries everything
    with db.connect(dsn) as conn:
        campaign = conn.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    return {"task": SendTask.from_dict(task), "campaign": campaign}


def ses_capacity(threads: int, latency: float, seconds: float = 5.0) -> float:
    """What the local SES endpoint takes alone: `threads` bare SendEmail loops, no limiter, ledger or rendering."""
    with fresh_ses() as endpoint:
        return _bare_loops(ses_client(endpoint, threads, latency), threads, seconds)


def _bare_loops(client, threads: int, seconds: float) -> float:
    raw = b"From: news@example.com\r\nTo: cap@example.org\r\nSubject: capacity\r\n\r\nbody\r\n"
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.perf_counter() < deadline:
            client.send_email(FromEmailAddress="news@example.com", Destination={"ToAddresses": ["cap@example.org"]},
                              Content={"Raw": {"Data": raw}})
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def one_run(dsn: str, *, rate: float, seconds: float, latency: float, threads: int) -> dict:
    with fresh_ses() as endpoint:
        return _send(dsn, endpoint, rate=rate, seconds=seconds, latency=latency, threads=threads)


def _send(dsn: str, endpoint: str, *, rate: float, seconds: float, latency: float, threads: int) -> dict:
    prepared = prepare_campaign(dsn, int(rate * seconds))
    client = ses_client(endpoint, threads, latency)
    limiter_redis = redis.Redis.from_url(SETTINGS.redis_url(2))
    key = f"ses:rate:{{bench-{uuid.uuid4().hex[:6]}:us-east-1}}"
    batch = SendBatch(prepared["task"], attempt=Attempt("bench", 0, 1), from_email="news@example.com",
                      builder=pipeline.composer_for(prepared["campaign"], get_settings()),
                      transport=SesTransport(client), limiter=RateLimiter(limiter_redis, key, rate),
                      connect=lambda: db.connect(dsn, autocommit=True), threads=threads)
    started = time.perf_counter()
    report = batch.run()
    wall = time.perf_counter() - started
    with db.connect(dsn) as conn:
        span = conn.execute("""SELECT count(*) AS n, extract(epoch FROM max(sent_at) - min(sent_at)) AS s
                               FROM campaign_recipients WHERE status = 'sent'""").fetchone()
    limiter_redis.delete(key, key + ":penalty")
    sent = span["n"]
    achieved = (sent - 1) / float(span["s"]) if sent > 1 and span["s"] else 0.0
    return {"sent": sent, "wall": wall, "achieved": achieved, "error": report.error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with scratch_database(SETTINGS, "campaigns_bench_send") as dsn:
        os.environ["AIRFLOW_CONN_CAMPAIGN_DB"] = dsn  # the pipeline functions resolve campaign_db from here
        os.environ.setdefault("TRACKING_SECRET_KEYS", "benchmark-key")
        os.environ.setdefault("TRACKING_BASE_URL", "https://track.example.test")
        get_settings.cache_clear()
        threads = default_thread_count(args.rate)  # what a send task in Airflow uses (runtime.send_resources)
        results: dict[str, list[dict]] = {"pool": [], "single": []}
        capacities = []
        for round_no in range(1, args.rounds + 1):
            capacities.append(ses_capacity(threads, args.latency))
            print(f"round {round_no} local SES alone threads={threads:2}: {capacities[-1]:7.1f}/s", flush=True)
            for label, n in (("pool", threads), ("single", 1)):
                seconds = args.seconds if label == "pool" else min(args.seconds, 5)
                result = one_run(dsn, rate=args.rate, seconds=seconds, latency=args.latency, threads=n)
                results[label].append(result)
                print(f"round {round_no} {label:6} threads={n:2}: sent {result['sent']:5} in {result['wall']:5.1f} s,"
                      f" achieved {result['achieved']:7.1f}/s = {result['achieved'] / args.rate:.3f} R"
                      + (f"  error: {result['error']}" if result["error"] else ""), flush=True)
        capacity = statistics.median(capacities)
        pool = statistics.median(r["achieved"] for r in results["pool"])
        single = statistics.median(r["achieved"] for r in results["single"])
        print()
        print(f"R = {args.rate:g}/s, SES latency {args.latency * 1000:.0f} ms, {args.rounds} rounds (medians)")
        print(f"{'send task':32} {'threads':>7} {'achieved/s':>11} {'achieved/R':>11}")
        print(f"{'thread pool (default count)':32} {threads:7} {pool:11.1f} {pool / args.rate:11.3f}   "
              f"target >= 0.95: {'yes' if pool / args.rate >= 0.95 else 'NO'}")
        print(f"{'baseline: one thread':32} {1:7} {single:11.1f} {single / args.rate:11.3f}")
        print(f"{'local SES alone (bare SendEmail)':32} {threads:7} {capacity:11.1f} {capacity / args.rate:11.3f}")
        print(f"thread pool vs one thread: {pool / single:.1f}x; "
              f"achieved / min(R, local SES capacity) = {pool / min(args.rate, capacity):.3f}")


if __name__ == "__main__":
    main()
