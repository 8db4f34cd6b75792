"""Plan a campaign's send: group the ledger pages that still have work into the mapped send tasks' descriptors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from campaigns import queries

MAX_SEND_TASKS = 1000  # stays under Airflow's [core] max_map_length (1024) for any audience size


@dataclass(frozen=True)
class SendTask:
    """What one mapped send_batch task works through: a contiguous range of pages (small: goes through XCom)."""

    campaign_id: int
    first_page: int
    last_page: int
    index: int
    total: int

    @property
    def label(self) -> str:
        return f"batch {self.index}/{self.total}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SendTask:
        return cls(**{k: raw[k] for k in ("campaign_id", "first_page", "last_page", "index", "total")})


def pages_per_task(open_pages: int, page_size: int, rate: float, task_seconds: float, parallel: int = 1) -> int:
    """Pages one send task carries: `task_seconds` of sending at its share of the rate when `parallel` tasks run
    side by side (the `ses` pool's slots), so a big campaign spreads over that many processes (and Celery workers)
    instead of one GIL-bound process, while each task still carries many seconds of sending (the scheduler adds
    seconds per task); never so few pages that the task count passes MAX_SEND_TASKS."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be a whole number of at least 1, got {parallel!r}")
    by_rate = max(1, math.floor(rate / parallel * task_seconds / page_size))
    by_cap = math.ceil(open_pages / MAX_SEND_TASKS)
    return max(by_rate, by_cap, 1)


def plan(conn: psycopg.Connection, campaign_id: int, *, page_size: int, rate: float,
         task_seconds: float, parallel: int = 1) -> list[SendTask]:
    """Group the pages that still have work into at most MAX_SEND_TASKS contiguous ranges."""
    pages = [row["page_no"] for row in conn.execute(queries.load("ledger")["open-pages"], {"campaign_id": campaign_id})]
    if not pages:
        return []
    per_task = pages_per_task(len(pages), page_size, rate, task_seconds, parallel)
    groups = [pages[i:i + per_task] for i in range(0, len(pages), per_task)]
    return [SendTask(campaign_id, group[0], group[-1], index, len(groups))
            for index, group in enumerate(groups, start=1)]
