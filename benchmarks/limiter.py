"""Benchmark the global SES limiter: K processes x T threads contending for rate R, next to a naive baseline.

For each R (14, 100, 1000/s by default) four scenarios run for `--seconds` (default 20) each, in two
phases (one campaign, then two), a limiter scenario side by side with its naive baseline:

- limiter, 1 campaign:  K processes x T threads share one limiter key; each thread reserves a slot, sleeps
  exactly until it, records (slot on the Redis clock, local wall clock after the sleep), then "sends"
  (sleeps --latency, a stand-in for the SES call).
- naive, 1 campaign:    K processes, each pacing itself: record a send, sleep 1/(R/K) (per-process pacing as in
  listmonk-style senders). Sends are handed off, so SES latency does not slow its pacing: the generous reading.
- limiter/naive, 2 campaigns: twice the processes, as when a second campaign's send tasks run at the same time;
  each naive process still believes it owns R/K.

Targets: achieved >= 0.98 R, and no 1-second sliding window holds more than R + burst sends (judged both on
the slots Redis handed out and on the local wall clock after the sleep). Same host: Redis TIME and the local
wall clock are one clock here, which is what makes the two columns comparable.

    .venv/bin/python benchmarks/limiter.py                 # the full run (about 2.5 minutes)
    .venv/bin/python benchmarks/limiter.py --quick         # a smoke run (3 s per phase)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

import redis

from campaigns.sending.ratelimit import RateLimiter, default_thread_count, limiter_key, penalty_key

START_LEAD_SECONDS = 0.5  # after every process is ready, so none starts late


@dataclass(frozen=True)
class Job:
    """One process of one scenario."""

    scenario: str
    kind: str  # "limiter" or "naive"
    rate: float
    burst: int
    threads: int
    latency: float
    processes_per_campaign: int
    key: str
    url: str
    seconds: float


def _limiter_process(job: Job, ready, go, start_at, results) -> None:
    client = redis.Redis.from_url(job.url)
    limiter = RateLimiter(client, job.key, job.rate, job.burst)
    # One connection per thread, opened before the start: a connect storm inside the run would be measured as
    # the limiter's fault.
    pool = client.connection_pool
    for connection in [pool.get_connection() for _ in range(job.threads)]:
        pool.release(connection)
    events: list[tuple[int, float]] = []
    lock = threading.Lock()

    def sender() -> None:
        mine: list[tuple[int, float]] = []
        go.wait()
        end = start_at.value + job.seconds
        time.sleep(max(0.0, start_at.value - time.time()))
        while True:
            slot = limiter.reserve_slot()
            if slot.slot >= end:  # past the run: this slot is reserved but never used
                break
            time.sleep(slot.wait)
            mine.append((slot.slot_us, time.time()))
            time.sleep(job.latency)  # the SES call
        with lock:
            events.extend(mine)

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(job.threads)]
    for thread in threads:
        thread.start()
    ready.put(job.scenario)
    for thread in threads:
        thread.join()
    client.close()
    results.put((job.scenario, events))


def _naive_process(job: Job, ready, go, start_at, results) -> None:
    interval = job.processes_per_campaign / job.rate  # 1 / (R / K)
    ready.put(job.scenario)
    go.wait()
    start = start_at.value
    end = start + job.seconds
    events: list[tuple[int | None, float]] = []
    time.sleep(max(0.0, start - time.time()))
    while (now := time.time()) < end:
        events.append((None, now))
        time.sleep(interval)
    results.put((job.scenario, events))


def _run_process(job: Job, ready, go, start_at, results) -> None:
    target = _limiter_process if job.kind == "limiter" else _naive_process
    target(job, ready, go, start_at, results)


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most events in any half-open window [t, t + width) (windows start at an event: that is the max)."""
    ordered = sorted(times)
    best = 0
    for i, first in enumerate(ordered):
        best = max(best, bisect_left(ordered, first + width, lo=i) - i)
    return best


@dataclass
class Outcome:
    """What one scenario achieved."""

    scenario: str
    procs: int
    threads: int
    sends: int
    achieved: float  # sends / seconds / R
    max_slot: int | None  # most slots in any 1 s window (None: the naive baseline has no slots)
    max_wall: int


def run_phase(rate: float, scenarios: list[tuple[str, str, int]], args: argparse.Namespace) -> list[Outcome]:
    """Run some scenarios for one rate side by side (one process per job, all started together) and measure them."""
    per_process_threads = args.threads or default_thread_count(rate, args.latency)
    keys = {name: limiter_key("benchmark", f"r{rate:g}-{campaigns}c") for name, _, campaigns in scenarios}
    jobs = [
        Job(
            scenario=name,
            kind=kind,
            rate=rate,
            burst=args.burst,
            threads=per_process_threads if kind == "limiter" else 1,
            latency=args.latency,
            processes_per_campaign=args.processes,
            key=keys[name],
            url=args.redis_url,
            seconds=args.seconds,
        )
        for name, kind, campaigns in scenarios
        for _ in range(args.processes * campaigns)
    ]
    client = redis.Redis.from_url(args.redis_url)
    bench_keys = [k for key in keys.values() for k in (key, penalty_key(key))]
    client.delete(*bench_keys)
    # fork: the children need nothing but the job, and spawning dozens of interpreters would take longer than a run.
    ctx = multiprocessing.get_context("fork")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    processes = [ctx.Process(target=_run_process, args=(job, ready, go, start_at, results)) for job in jobs]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        start_at.value = time.time() + START_LEAD_SECONDS
        go.set()
        collected: dict[str, list[tuple[int | None, float]]] = {name: [] for name, _, _ in scenarios}
        for _ in processes:
            name, events = results.get(timeout=args.seconds + 120)
            collected[name].extend(events)
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        client.delete(*bench_keys)
        client.close()

    outcomes = []
    for name, kind, campaigns in scenarios:
        events = collected[name]
        slots = [slot / 1_000_000 for slot, _ in events if slot is not None]
        walls = [wall for _, wall in events]
        outcomes.append(
            Outcome(
                scenario=name,
                procs=args.processes * campaigns,
                threads=per_process_threads if kind == "limiter" else 1,
                sends=len(events),
                achieved=len(events) / args.seconds / rate,
                max_slot=max_in_window(slots) if slots else None,
                max_wall=max_in_window(walls),
            )
        )
    return outcomes


def run_rate(rate: float, args: argparse.Namespace) -> list[Outcome]:
    """Both phases for one rate: one campaign (limiter next to naive), then two campaigns (the same)."""
    one = [("limiter, 1 campaign", "limiter", 1), ("naive, 1 campaign", "naive", 1)]
    two = [("limiter, 2 campaigns", "limiter", 2), ("naive, 2 campaigns", "naive", 2)]
    # The naive processes mostly sleep, so they share a phase with the limiter; the two limiter scenarios do not
    # share one, since on a small machine their threads would compete for the same CPUs.
    return run_phase(rate, one, args) + run_phase(rate, two, args)


def _verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def print_table(rate: float, outcomes: list[Outcome], args: argparse.Namespace) -> None:
    """One table per rate: achieved/R, the busiest 1-second window/R, and whether the targets hold."""
    limit = rate + args.burst
    print(f"\nR = {rate:g}/s   burst = {args.burst}   {args.seconds:g} s per phase   "
          f"simulated SES call {args.latency * 1000:g} ms   "
          f"targets: achieved >= 0.98 R, busiest 1 s window <= R + burst = {limit:g}")
    header = (f"{'scenario':<22} {'procs x thr':>11} {'sends':>7} {'achieved/R':>10} "
              f"{'max1s slot/R':>16} {'max1s wall/R':>16} {'>=0.98R':>8} {'<=R+b slot':>10} {'<=R+b wall':>10}")
    print(header)
    print("-" * len(header))
    for o in outcomes:
        slot = "-" if o.max_slot is None else f"{o.max_slot / rate:.3f} ({o.max_slot})"
        wall = f"{o.max_wall / rate:.3f} ({o.max_wall})"
        slot_ok = "-" if o.max_slot is None else _verdict(o.max_slot <= limit)
        print(f"{o.scenario:<22} {f'{o.procs} x {o.threads}':>11} {o.sends:>7} {o.achieved:>10.3f} "
              f"{slot:>16} {wall:>16} {_verdict(o.achieved >= 0.98):>8} {slot_ok:>10} "
              f"{_verdict(o.max_wall <= limit):>10}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table per rate."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:26379/2", help="Redis to contend on (db 2)")
    parser.add_argument("--rates", default="14,100,1000", help="comma-separated rates R to test")
    parser.add_argument("--processes", type=int, default=4, help="K, processes per campaign (default 4)")
    parser.add_argument("--threads", type=int, default=0, help="T per limiter process (default: from R)")
    parser.add_argument("--burst", type=int, default=1, help="limiter burst (default 1)")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated SES call, seconds (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="3-second runs, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 3.0)
    rates = [float(part) for part in args.rates.split(",") if part.strip()]

    print(f"K = {args.processes} processes per campaign; T = threads per limiter process "
          f"(default_thread_count(R, {args.latency:g}) unless --threads); Redis {args.redis_url}")
    all_ok = True
    for rate in rates:
        outcomes = run_rate(rate, args)
        print_table(rate, outcomes, args)
        for o in outcomes:
            if o.scenario.startswith("limiter"):
                all_ok &= o.achieved >= 0.98 and o.max_slot is not None and o.max_slot <= rate + args.burst
    print(f"\nlimiter targets (achieved >= 0.98 R, no slot window above R + burst) hold for every R: "
          f"{_verdict(all_ok)}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
