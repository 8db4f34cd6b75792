"""Plan a campaign's send: how many send tasks run side by side, and the ledger pages each mapped task carries.

Two numbers decide the shape of a send, both from the rate R:

- P, the send tasks of the campaign that run side by side: the fewest processes that hold R
  (`processes_for_rate`), never more than the campaign's share of the Airflow pool `ses` (`pool_share`: the pool's
  slots, SES_POOL_SLOTS, split between the campaigns sending at the same time). A task cannot read the pool in
  Airflow 3 (the Task SDK has no pool call, and the REST API needs a user's credentials a task does not have), so
  the pool's size is the setting the local stack and docker-compose create the pool from.
- T, the threads of one task (`threads_per_task`): Little's law on its share of the rate, R / P, and the typical
  SES call time.

The pages are then grouped (`task_sizes`) so that every task carries about SEND_TASK_SECONDS of sending at its
share, in whole waves of P equal tasks: Airflow starts a mapped task whenever a pool slot is free, so a task beyond
the last full wave would wait for a slot while the others send (the 100k scale run's fifth task waited 362 s).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from campaigns import queries
from campaigns.config import Settings
from campaigns.sending.ratelimit import check_positive, check_whole, default_thread_count

MAX_SEND_TASKS = 1000  # stays under Airflow's [core] max_map_length (1024) for any audience size
MAX_THREADS_PER_TASK = 32  # each send thread holds a campaign-database connection of its own
# Of the one core a send task can use (its threads share the GIL), the part the sending itself may take: the rest is
# for the garbage collector, the campaign watch and neighbours on a busy host (one task held R = 200/s on a quiet
# 2-core machine, 0.78-0.94 R on a busy one: docs/operators.md).
USABLE_CORE_SHARE = 0.7
# A campaign shorter than this at R stays one task: a mapped task costs about a second of scheduling, and a task
# that cannot hold R alone still ends a campaign this short within seconds.
SPLIT_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class SendTask:
    """What one mapped send_batch task works through: a contiguous range of pages (small: goes through XCom).

    `parallel`: how many of the campaign's send tasks run side by side; the task sizes its threads for its share
    of the rate, R / parallel.
    """

    campaign_id: int
    first_page: int
    last_page: int
    index: int
    total: int
    parallel: int = 1

    @property
    def label(self) -> str:
        return f"batch {self.index}/{self.total}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SendTask:
        return cls(**{k: raw[k] for k in ("campaign_id", "first_page", "last_page", "index", "total", "parallel")})


@dataclass(frozen=True)
class Parallelism:
    """How many send tasks of one campaign run side by side, with the figures that decided it (for the plan's log)."""

    tasks: int  # P: side by side
    by_cpu: int  # processes the CPU of sending R needs
    by_threads: int  # processes the threads of sending R need
    share: int  # the campaign's share of the `ses` pool
    pool_slots: int
    other_campaigns: int
    fixed: int | None = None  # SEND_TASK_PARALLELISM, when an operator set it

    @property
    def needed(self) -> int:
        """The fewest processes that hold R."""
        return max(self.by_cpu, self.by_threads)

    @property
    def long_campaign_share(self) -> int | None:
        """What a campaign longer than one wave of P tasks runs on (plan's `share`): its whole pool share, unless an
        operator fixed P."""
        return self.share if self.fixed is None else None

    def why(self) -> str:
        """One line for the plan task's log: the choice and what limited it."""
        pool = (f"pool `ses` {self.pool_slots} slot(s), {self.other_campaigns} other campaign(s) sending: "
                f"share {self.share}")
        if self.fixed is not None:
            return f"SEND_TASK_PARALLELISM = {self.fixed}; {pool}"
        need = f"R needs {self.needed} (CPU: {self.by_cpu}, threads: {self.by_threads})"
        if self.needed > self.share:
            return f"{need}, more than its share: R may not be reached (raise SES_POOL_SLOTS and the pool); {pool}"
        return f"{need}; {pool}"


def threads_per_task(rate: float, parallel: int, latency: float, cap: int = MAX_THREADS_PER_TASK) -> int:
    """Threads of one of `parallel` send tasks sharing `rate` when an SES call takes `latency` s: Little's law on
    its share (calls in flight = share x latency, with headroom), at most `cap`."""
    share = check_positive(rate, "rate") / check_whole(parallel, "parallel")
    return default_thread_count(share, typical_latency=latency, cap=cap)


def processes_for_rate(rate: float, *, cpu_per_email_us: float, latency: float,
                       threads_cap: int = MAX_THREADS_PER_TASK) -> tuple[int, int]:
    """The fewest send processes that hold `rate`, as (by CPU, by threads): each process sends on at most
    USABLE_CORE_SHARE of one core, and with at most `threads_cap` threads waiting `latency` per call."""
    rate = check_positive(rate, "rate")
    cpu_seconds = check_positive(cpu_per_email_us, "cpu_per_email_us") / 1_000_000
    by_cpu = math.ceil(rate * cpu_seconds / USABLE_CORE_SHARE)
    all_threads = default_thread_count(rate, typical_latency=check_positive(latency, "latency"), cap=sys.maxsize)
    return max(1, by_cpu), max(1, math.ceil(all_threads / check_whole(threads_cap, "threads_cap")))


def pool_share(pool_slots: int, other_campaigns: int) -> int:
    """A campaign's fair share of the `ses` pool while `other_campaigns` send beside it; at least one slot."""
    check_whole(pool_slots, "pool_slots")
    return max(1, pool_slots // (check_whole(other_campaigns, "other_campaigns", minimum=0) + 1))


def parallelism(rate: float, *, pool_slots: int, other_campaigns: int, cpu_per_email_us: float, latency: float,
                threads_cap: int = MAX_THREADS_PER_TASK, fixed: int | None = None) -> Parallelism:
    """P for one campaign: `fixed` (SEND_TASK_PARALLELISM) or the processes R needs, capped by its pool share."""
    by_cpu, by_threads = processes_for_rate(rate, cpu_per_email_us=cpu_per_email_us, latency=latency,
                                            threads_cap=threads_cap)
    share = pool_share(pool_slots, other_campaigns)
    wanted = max(by_cpu, by_threads) if fixed is None else check_whole(fixed, "fixed")
    return Parallelism(min(wanted, share), by_cpu, by_threads, share, pool_slots, other_campaigns, fixed)


def pages_per_task(open_pages: int, page_size: int, rate: float, task_seconds: float, parallel: int = 1) -> int:
    """Pages one send task carries: `task_seconds` of sending at its share of the rate when `parallel` tasks run
    side by side (P, within the `ses` pool's slots), so a big campaign spreads over that many processes (and
    Celery workers) instead of one GIL-bound process, while each task still carries many seconds of sending (the
    scheduler adds seconds per task); never so few pages that the task count passes MAX_SEND_TASKS."""
    check_whole(parallel, "parallel")
    by_rate = max(1, math.floor(rate / parallel * task_seconds / page_size))
    by_cap = math.ceil(open_pages / MAX_SEND_TASKS)
    return max(by_rate, by_cap, 1)


def task_sizes(open_pages: int, page_size: int, rate: float, task_seconds: float, parallel: int) -> list[int]:
    """Pages per send task, in whole waves of `parallel` tasks whose sizes differ by at most one page.

    A campaign shorter than SPLIT_AFTER_SECONDS at `rate` is one task; one that fits in a wave of `parallel` tasks
    of `task_seconds` each is exactly that wave (fewer tasks when it has fewer pages); a longer one is as many
    whole waves as its sending needs, at most MAX_SEND_TASKS tasks.
    """
    check_whole(open_pages, "open_pages", minimum=0)
    if open_pages == 0:
        return []
    per_task = pages_per_task(open_pages, page_size, rate, task_seconds, parallel)
    waves = math.ceil(math.ceil(open_pages / per_task) / parallel)
    if waves == 1 and open_pages * page_size / rate < SPLIT_AFTER_SECONDS:
        count = 1
    else:
        count = min(waves * parallel, max(parallel, MAX_SEND_TASKS // parallel * parallel), open_pages)
    base, extra = divmod(open_pages, count)
    return [base + 1] * extra + [base] * (count - extra)


def plan(conn: psycopg.Connection, campaign_id: int, *, page_size: int, rate: float,
         task_seconds: float, parallel: int = 1, share: int | None = None) -> list[SendTask]:
    """Group the pages that still have work into at most MAX_SEND_TASKS contiguous ranges.

    `share`: the campaign's share of the `ses` pool. A campaign longer than one wave of `parallel` tasks is planned
    for all of it: Airflow starts each of its tasks as soon as a slot is free, so that many run side by side, and
    their threads are sized for that.
    """
    pages = [row["page_no"] for row in conn.execute(queries.load("ledger")["open-pages"], {"campaign_id": campaign_id})]
    sizes = task_sizes(len(pages), page_size, rate, task_seconds, parallel)
    if share is not None and share > parallel and len(sizes) > parallel:
        parallel = share
        sizes = task_sizes(len(pages), page_size, rate, task_seconds, parallel)
    side_by_side = min(parallel, len(sizes))
    tasks, start = [], 0
    for index, size in enumerate(sizes, start=1):
        group = pages[start:start + size]
        tasks.append(SendTask(campaign_id, group[0], group[-1], index, len(sizes), side_by_side))
        start += size
    return tasks


def other_sending_campaigns(conn: psycopg.Connection, campaign_id: int) -> int:
    """How many other campaigns are sending now (running, with rows left to send): they share the `ses` pool."""
    return conn.execute(queries.load("plan")["other-sending-campaigns"], {"campaign_id": campaign_id}).fetchone()["n"]


def parallelism_for(conn: psycopg.Connection, campaign_id: int, rate: float, settings: Settings) -> Parallelism:
    """P for the campaign now: its share of the `ses` pool beside the campaigns sending at this moment, and the
    processes `rate` needs at the configured CPU per email and SES latency (or SEND_TASK_PARALLELISM)."""
    return parallelism(rate, pool_slots=settings.ses_pool_slots,
                       other_campaigns=other_sending_campaigns(conn, campaign_id),
                       cpu_per_email_us=settings.send_cpu_per_email_us, latency=settings.ses_latency_seconds,
                       threads_cap=settings.send_threads or MAX_THREADS_PER_TASK, fixed=settings.parallel_send_tasks)


def describe(tasks: list[SendTask], page_size: int, rate: float, shape: Parallelism, settings: Settings) -> str:
    """The plan in one line for the plan task's log: the tasks, how many run side by side and why, their threads."""
    if not tasks:
        return "nothing left to send"
    side_by_side = tasks[0].parallel
    threads = settings.send_threads or threads_per_task(rate, side_by_side, settings.ses_latency_seconds)
    pages = sum(task.last_page - task.first_page + 1 for task in tasks)
    waves = (f", in {math.ceil(len(tasks) / side_by_side)} wave(s) on the whole pool share (longer than one wave of "
             f"{shape.tasks})") if side_by_side > shape.tasks else ""
    return (f"{len(tasks)} send task(s) over {pages} page(s) of {page_size}, {side_by_side} side by side at "
            f"{rate / side_by_side:.4g}/s each with {threads} thread(s){waves} (R = {rate:.4g}/s; {shape.why()})")
