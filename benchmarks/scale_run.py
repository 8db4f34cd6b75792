"""A 100,000-recipient campaign through the real scheduler against the local SES, on the LocalExecutor, the
CeleryExecutor (the stack's Celery workers) or both, side by side in one run.

    .venv/bin/python benchmarks/scale_run.py [--executor local|celery|both] [--recipients 100000] [--rate 1000]
                                             [--batch-size 500]

R is 1000/s unless the local SES alone cannot take that: then R is the local SES's own ceiling, measured first in
the same run (20 threads of bare SendEmail calls for 10 s), the same R for every executor. For each executor the
stack's Airflow is restarted on it with SES_SENDING_RATE = R (and put back as it was afterwards: the settings of the
stack the environment names, STACK_INSTANCE included). Prints per executor: wall time from trigger to success and
its ratio to N/R (target <= 1.15 x N/R + 30 s), the sending phase, the delay from scheduled to running and from
queued to running per mapped task (median, p95), the CPU seconds of each worker (a Celery worker's process tree, and
the scheduler's beside them; on LocalExecutor the scheduler's, whose children are its workers) per email it sent,
the peak RSS of a send task and duplicates in the local SES (must be 0); then the figures side by side.

Run it on a stack instance of its own, so that the user's stack and its data stay as they are:

    STACK_INSTANCE=celery STACK_SEND_TASK_SECONDS=300 STACK_TASK_HEARTBEAT_TIMEOUT=300 \
        .venv/bin/python benchmarks/scale_run.py --executor both
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
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

TARGET_RATIO = 1.15  # trigger -> success within 1.15 x N/R + 30 s (issue #19)
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks" / "faults"), str(ROOT), str(ROOT / "include")]

import boto3  # noqa: E402
import common  # noqa: E402
import psutil  # noqa: E402

from devstack import stack as devstack  # noqa: E402
from devstack.demo import Api  # noqa: E402
from devstack.processes import descendants, read_pid  # noqa: E402
from devstack.settings import EXECUTORS, SETTINGS  # noqa: E402

LOCAL_WORKERS = "scheduler + LocalExecutor workers"


@dataclass
class Outcome:
    """What one executor's run measured."""

    executor: str
    state: str
    wall: float = 0.0
    sent: int = 0
    sending: float = 0.0
    send_tasks: int = 0
    scheduled_to_running: list[float] = field(default_factory=list)
    queued_to_running: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # worker -> CPU seconds during the run
    emails: Counter = field(default_factory=Counter)  # worker -> emails its send tasks sent
    peak_rss: int = 0
    messages: int = 0
    addresses: int = 0
    duplicates: int = 0


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


def restart_apps(rate: int, max_rate: int, executor: str) -> None:
    devstack.stop_apps(SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SES_", "TRACKING_", "SNS_"))}
    env.update(STACK_SES_RATE=str(rate), STACK_SES_MAX_SEND_RATE=str(max_rate), STACK_EXECUTOR=executor,
               PYTHONPATH=f"{ROOT}:{ROOT / 'include'}")
    subprocess.run([sys.executable, "-m", "devstack", "up"], check=True, cwd=ROOT, env=env, timeout=600,
                   stdout=subprocess.DEVNULL)


def worker_pids(executor: str) -> dict[str, int]:
    """The process at the top of each worker: every Celery worker, or the scheduler whose children are the
    LocalExecutor's workers."""
    s = replace(SETTINGS, executor=executor)
    scheduler = read_pid(s.run_dir / "airflow-scheduler.pid")
    if executor == "celery":
        # the scheduler too, so that the total compares with LocalExecutor's, whose workers are its children
        return {"scheduler": scheduler} | {
            name: pid for name in s.celery_worker_names if (pid := devstack.celery_worker_pid(s, name))}
    return {LOCAL_WORKERS: scheduler}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of `pid`, of its children it has reaped and of every live process under it."""
    total = 0.0
    for member in (pid, *descendants(pid)):
        try:
            t = psutil.Process(member).cpu_times()
        except psutil.NoSuchProcess:
            continue  # gone between the listing and now: its parent reaps it, and its time, later
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def _sample_rss(tis: list[dict], peak: list[int]) -> None:
    """The largest RSS of a process running one of `tis` (its id is in the task process's command line)."""
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["memory_info"] and any(ti["id"] in cmdline for ti in tis):
            peak[0] = max(peak[0], proc.info["memory_info"].rss)


def emails_by_worker(api: Api, run_id: str, campaign_id: int, executor: str) -> Counter:
    """Emails sent per worker: each sent row's attempt (run/map index/try) -> the hostname that try ran on."""
    if executor == "local":
        with common.connect() as conn:
            sent = conn.execute("SELECT count(*) AS n FROM campaign_recipients WHERE campaign_id = %s "
                                "AND status = 'sent'", [campaign_id]).fetchone()["n"]
        return Counter({LOCAL_WORKERS: sent})
    hosts = {f"{run_id}/{ti['map_index']}/{ti['try_number']}": ti["hostname"]
             for ti in api.task_instances("send_campaign", run_id) if ti["task_id"] == "send_batch"}
    with common.connect() as conn:
        rows = conn.execute("SELECT attempt, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s "
                            "AND status = 'sent' GROUP BY attempt", [campaign_id]).fetchall()
    emails: Counter = Counter()
    for row in rows:  # a worker ran several tasks: add up their rows
        emails[hosts.get(row["attempt"], "another try")] += row["n"]
    return emails


def run_once(executor: str, rate: int, args: argparse.Namespace) -> Outcome:
    """Restart the stack's Airflow on `executor` at rate R, send the campaign, measure it."""
    restart_apps(rate, max(rate, SETTINGS.ses_local_max_send_rate), executor)  # also a fresh, empty local SES
    api = Api(SETTINGS)
    api.wait_for_dag("send_campaign")
    list_name, prefix = common.seed_list(args.recipients)
    key = f"{list_name}-scale-{executor}"
    pids = worker_pids(executor)
    cpu_before = {name: tree_cpu(pid) for name, pid in pids.items()}
    triggered = time.monotonic()
    run_id = api.trigger("send_campaign", common.campaign_conf(key, list_name, batch_size=args.batch_size))
    peak = [0]
    state = "queued"
    while state not in ("success", "failed"):
        time.sleep(1)  # sampling interval of the RSS probe and the state poll
        state = api.state("send_campaign", run_id)
        _sample_rss([ti for ti in api.task_instances("send_campaign", run_id)
                     if ti["task_id"] == "send_batch" and ti["state"] == "running"], peak)
    outcome = Outcome(executor, state, wall=time.monotonic() - triggered, peak_rss=peak[0])
    outcome.cpu = {name: tree_cpu(pid) - cpu_before[name] for name, pid in pids.items()}
    campaign = common.campaign(key)
    if state != "success":
        with common.connect() as conn:
            problems = conn.execute("SELECT preflight->'problems' AS p FROM campaigns WHERE key = %s",
                                    [key]).fetchone()["p"]
        print(f"FAIL ({executor}): the run {state} after {outcome.wall:.0f} s; campaign "
              f"{campaign and campaign['status']}: {campaign and campaign['status_reason']}; preflight problems: "
              f"{problems}", flush=True)
        return outcome
    tis = [ti for ti in api.task_instances("send_campaign", run_id) if ti["task_id"] == "send_batch"]
    with common.connect() as conn:
        span = conn.execute("SELECT min(sent_at) AS first, max(sent_at) AS last, count(*) AS sent FROM "
                            "campaign_recipients WHERE campaign_id = %s AND status = 'sent'",
                            [campaign["id"]]).fetchone()
    outcome.sent, outcome.send_tasks = span["sent"], len(tis)
    outcome.sending = (span["last"] - span["first"]).total_seconds()
    # scheduled -> running includes any wait for a `ses` pool slot; queued -> running is the executor's start-up
    outcome.scheduled_to_running = [(_when(ti["start_date"]) - _when(ti["scheduled_when"])).total_seconds()
                                    for ti in tis if ti.get("start_date") and ti.get("scheduled_when")]
    outcome.queued_to_running = [(_when(ti["start_date"]) - _when(ti["queued_when"])).total_seconds()
                                 for ti in tis if ti.get("start_date") and ti.get("queued_when")]
    outcome.emails = emails_by_worker(api, run_id, campaign["id"], executor)
    messages = common.local_ses_messages_to(prefix)
    outcome.messages, outcome.addresses = sum(messages.values()), len(messages)
    outcome.duplicates = sum(c - 1 for c in messages.values() if c > 1)
    return outcome


def passed(o: Outcome, n: int, rate: int) -> bool:
    return (o.state == "success" and o.duplicates == 0 and o.addresses == n
            and o.wall <= TARGET_RATIO * n / rate + 30)


def print_outcome(o: Outcome, n: int, rate: int, batch_size: int) -> None:
    ideal = n / rate
    print(f"\n== {EXECUTORS[o.executor]}: {n:,} recipients, R = {rate}/s, batch size {batch_size}, "
          f"{o.send_tasks} send task(s); run {o.state}")
    if o.state != "success":
        return
    print(f"wall time trigger -> success    {o.wall:8.1f} s")
    print(f"N / R                           {ideal:8.1f} s   ratio {o.wall / ideal:.3f}   "
          f"target <= {TARGET_RATIO} x N/R + 30 s = {TARGET_RATIO * ideal + 30:.1f} s: "
          f"{'yes' if passed(o, n, rate) else 'NO'}")
    print(f"sending (first -> last sent_at) {o.sending:8.1f} s   achieved {o.sent / max(o.sending, 1e-9):.1f}/s "
          f"= {o.sent / max(o.sending, 1e-9) / rate:.3f} R")
    for label, values in (("scheduled -> running (pool-slot waits included)", o.scheduled_to_running),
                          ("queued -> running (the executor's start-up)", o.queued_to_running)):
        if values:
            print(f"{label}: median {statistics.median(values):.2f} s, p95 {_p95(values):.2f} s, "
                  f"max {max(values):.2f} s over {len(values)} task(s)")
    for worker, seconds in sorted(o.cpu.items()):
        emails = o.emails.get(worker, 0)
        per_email = f"{seconds / emails * 1000:.2f} ms/email" if emails else "no emails"
        print(f"CPU {worker:32} {seconds:7.1f} s for {emails:,} emails: {per_email}")
    if o.peak_rss:
        print(f"peak RSS of a send task         {o.peak_rss / 2**20:8.1f} MiB")
    print(f"local SES: {o.messages:,} messages to {o.addresses:,} addresses, {o.duplicates} duplicates")


def print_side_by_side(outcomes: list[Outcome], n: int, rate: int) -> None:
    """One column per executor, the figures a reader compares."""
    def cpu_per_email(o: Outcome) -> str:
        sent = sum(o.emails.values())
        return f"{sum(o.cpu.values()) / sent * 1000:.2f}" if sent else "-"

    def stat(values: list[float], how) -> str:
        return f"{how(values):.2f}" if values else "-"

    rows = [
        ("run", lambda o: o.state),
        ("send tasks", lambda o: str(o.send_tasks)),
        ("trigger -> success (s)", lambda o: f"{o.wall:.1f}"),
        ("ratio to N/R", lambda o: f"{o.wall / (n / rate):.3f}"),
        ("achieved rate / R", lambda o: f"{o.sent / max(o.sending, 1e-9) / rate:.3f}"),
        ("scheduled -> running median (s)", lambda o: stat(o.scheduled_to_running, statistics.median)),
        ("scheduled -> running p95 (s)", lambda o: stat(o.scheduled_to_running, _p95)),
        ("queued -> running median (s)", lambda o: stat(o.queued_to_running, statistics.median)),
        ("queued -> running p95 (s)", lambda o: stat(o.queued_to_running, _p95)),
        ("workers", lambda o: str(len(o.cpu))),
        ("CPU per email, workers + scheduler (ms)", cpu_per_email),
        ("duplicates in the local SES", lambda o: str(o.duplicates)),
        ("verdict", lambda o: "PASS" if passed(o, n, rate) else "FAIL"),
    ]
    print(f"\n== side by side: {n:,} recipients at R = {rate}/s (N/R = {n / rate:.1f} s)")
    print(f"{'':40}" + "".join(f"{EXECUTORS[o.executor]:>18}" for o in outcomes))
    for label, value in rows:
        print(f"{label:40}" + "".join(f"{value(o):>18}" for o in outcomes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executor", choices=("local", "celery", "both"), default="both")
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="the target R, when the local SES can take it")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    executors = ["local", "celery"] if args.executor == "both" else [args.executor]
    common.ensure_stack()
    capacity = local_ses_capacity()
    rate = min(args.rate, int(capacity))
    print(f"local SES alone: {capacity:.0f} SendEmail/s (20 threads) -> R = {rate}/s", flush=True)
    try:
        outcomes = [run_once(executor, rate, args) for executor in executors]
    finally:
        restart_apps(SETTINGS.ses_rate, SETTINGS.ses_local_max_send_rate, SETTINGS.executor)
    for outcome in outcomes:
        print_outcome(outcome, args.recipients, rate, args.batch_size)
    print_side_by_side(outcomes, args.recipients, rate)
    ok = all(passed(o, args.recipients, rate) for o in outcomes)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
