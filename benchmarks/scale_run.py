"""A 100,000-recipient campaign through the real scheduler (LocalExecutor) against the local SES.

    .venv/bin/python benchmarks/scale_run.py [--recipients 100000] [--rate 1000] [--batch-size 500]

R is 1000/s unless the local SES alone cannot take that: then R is what it takes alone, measured first in the same
run (20 threads of bare SendEmail calls for 10 s). The stack's Airflow is restarted with SES_SENDING_RATE = R (and
put back afterwards). Prints: wall time from trigger to success and its ratio to N/R (target <= 1.25 x N/R + 30 s),
the phases (start-up before the first send, sending, after the last send), Airflow's start-up overhead per mapped
task (scheduled -> running), the peak RSS of a send task, and duplicates in the local SES (must be 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks" / "faults"), str(ROOT), str(ROOT / "include")]

import boto3  # noqa: E402
import common  # noqa: E402
import psutil  # noqa: E402

from devstack import stack as devstack  # noqa: E402
from devstack.demo import Api  # noqa: E402
from devstack.settings import SETTINGS  # noqa: E402


def local_ses_capacity(seconds: float = 10.0, threads: int = 20) -> float:
    """Bare SendEmail calls per second the local SES takes alone (no render, no ledger, no limiter)."""
    raw = (b"From: news@example.com\r\nTo: capacity@example.org\r\nSubject: capacity\r\n"
           b"Content-Type: text/plain\r\n\r\nhello\r\n")
    done = Counter()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        client = boto3.client("sesv2", endpoint_url=SETTINGS.ses_endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        n = 0
        while time.monotonic() < stop_at:
            client.send_email(FromEmailAddress="news@example.com",
                              Destination={"ToAddresses": ["capacity@example.org"]}, Content={"Raw": {"Data": raw}})
            n += 1
        done[threading.get_ident()] = n

    started = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done.values()) / (time.monotonic() - started)


def restart_apps(rate: int, max_rate: int) -> None:
    devstack.stop_apps(SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SES_", "TRACKING_", "SNS_"))}
    env.update(STACK_SES_RATE=str(rate), STACK_SES_MAX_SEND_RATE=str(max_rate),
               PYTHONPATH=f"{ROOT}:{ROOT / 'include'}")
    subprocess.run([sys.executable, "-m", "devstack", "up"], check=True, cwd=ROOT, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="the target R, when the local SES can take it")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    common.ensure_stack()
    capacity = local_ses_capacity()
    rate = min(args.rate, int(capacity))
    print(f"local SES alone: {capacity:.0f} SendEmail/s (20 threads) -> R = {rate}/s", flush=True)
    restart_apps(rate, max(rate, SETTINGS.ses_local_max_send_rate))  # also a fresh, empty local SES
    try:
        api = Api(SETTINGS)
        api.wait_for_dag("send_campaign")
        list_name, prefix = common.seed_list(args.recipients)
        key = f"{list_name}-scale"
        triggered = time.monotonic()
        run_id = api.trigger("send_campaign", common.campaign_conf(key, list_name, batch_size=args.batch_size))
        peak_rss: dict[str, int] = {}
        state = "queued"
        while state not in ("success", "failed"):
            time.sleep(1)  # sampling interval of the RSS probe and the state poll
            state = api.state("send_campaign", run_id)
            running = {ti["id"] for ti in api.task_instances("send_campaign", run_id)
                       if ti["task_id"] == "send_batch" and ti["state"] == "running"}
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                for ti_id in running:
                    if ti_id in cmdline and "LocalExecutor" not in cmdline and proc.info["memory_info"]:
                        peak_rss[ti_id] = max(peak_rss.get(ti_id, 0), proc.info["memory_info"].rss)
        wall = time.monotonic() - triggered
        if state != "success":
            row = common.campaign(key)
            with common.connect() as conn:
                problems = conn.execute("SELECT preflight->'problems' AS p FROM campaigns WHERE key = %s",
                                        [key]).fetchone()["p"]
            print(f"FAIL: the run {state} after {wall:.0f} s; campaign {row and row['status']}: "
                  f"{row and row['status_reason']}; preflight problems: {problems}")
            return 1
        tis = [ti for ti in api.task_instances("send_campaign", run_id) if ti["task_id"] == "send_batch"]
        campaign = common.campaign(key)
        with common.connect() as conn:
            span = conn.execute("SELECT min(sent_at) AS first, max(sent_at) AS last, count(*) AS sent FROM "
                                "campaign_recipients WHERE campaign_id = %s AND status = 'sent'",
                                [campaign["id"]]).fetchone()
            run_row = conn.execute("SELECT started_at, finished_at FROM campaigns WHERE id = %s",
                                   [campaign["id"]]).fetchone()
        messages = common.local_ses_messages_to(prefix)
    finally:
        restart_apps(SETTINGS.ses_rate, SETTINGS.ses_local_max_send_rate)

    n = args.recipients
    ideal = n / rate
    sending = (span["last"] - span["first"]).total_seconds()
    overheads = [(_when(ti["start_date"]) - _when(ti["scheduled_when"])).total_seconds()
                 for ti in tis if ti.get("start_date") and ti.get("scheduled_when")]
    # queued -> running is the executor's start-up alone; scheduled -> running adds any wait for a `ses` pool slot
    startups = [(_when(ti["start_date"]) - _when(ti["queued_when"])).total_seconds()
                for ti in tis if ti.get("start_date") and ti.get("queued_when")]
    duplicates = sum(c - 1 for c in messages.values() if c > 1)
    print(f"\n{n:,} recipients, R = {rate}/s, batch size {args.batch_size}, {len(tis)} send task(s); run {state}")
    print(f"wall time trigger -> success    {wall:8.1f} s")
    print(f"N / R                           {ideal:8.1f} s   ratio {wall / ideal:.3f}   "
          f"target <= 1.25 x N/R + 30 s = {1.25 * ideal + 30:.1f} s: {'yes' if wall <= 1.25 * ideal + 30 else 'NO'}")
    print(f"sending (first -> last sent_at) {sending:8.1f} s   achieved {span['sent'] / max(sending, 1e-9):.1f}/s "
          f"= {span['sent'] / max(sending, 1e-9) / rate:.3f} R")
    print(f"campaign started -> finished    {(run_row['finished_at'] - run_row['started_at']).total_seconds():8.1f} s")
    if overheads:
        print(f"Airflow overhead per mapped task (scheduled -> running, pool-slot waits included): median "
              f"{statistics.median(overheads):.2f} s, max {max(overheads):.2f} s over {len(overheads)} task(s)")
    if startups:
        print(f"executor start-up per mapped task (queued -> running): median {statistics.median(startups):.2f} s, "
              f"max {max(startups):.2f} s")
    if peak_rss:
        print(f"peak RSS of a send task         {max(peak_rss.values()) / 2**20:8.1f} MiB")
    print(f"local SES: {sum(messages.values()):,} messages to {len(messages):,} addresses, {duplicates} duplicates")
    ok = state == "success" and duplicates == 0 and len(messages) == n and wall <= 1.25 * ideal + 30
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
