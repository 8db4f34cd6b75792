"""The ledger: snapshot a campaign's audience, plan mapped send tasks, claim and settle rows.

Rules (DESIGN.md "Ledger state machine"): a row becomes `sending` with the attempt id immediately before its own
SES call; `sent` after it. A retried task turns stale `sending` rows into `unknown` and never resends them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from campaigns.audience.filters import Audience
from campaigns.errors import CampaignNotFound
from campaigns.queries import load
from campaigns.states import Row

Q = load("ledger")
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


def snapshot(conn: psycopg.Connection, campaign_id: int, audience: Audience, page_size: int) -> dict[str, Any]:
    """Freeze the audience into the ledger once; a rerun for the same campaign changes nothing and returns the
    same counts."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    with conn.transaction():
        campaign = conn.execute("SELECT snapshot FROM campaigns WHERE id = %s FOR UPDATE", [campaign_id]).fetchone()
        if campaign is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        if campaign["snapshot"] is not None:
            return campaign["snapshot"]
        query, params = audience_query("snapshot", audience)
        # Page numbering sorts the whole audience: keep that sort in memory for large lists.
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute(query, {**params, "campaign_id": campaign_id, "page_size": page_size})
        summary = summarize(status_counts(conn, campaign_id))
        summary["page_size"] = page_size
        conn.execute("UPDATE campaigns SET snapshot = %s, updated_at = now() WHERE id = %s",
                     [Jsonb(summary), campaign_id])
    return summary


def audience_query(name: str, audience: Audience) -> tuple[sql.Composed, dict[str, Any]]:
    """A named query that starts `WITH {audience}`, with the audience's filters composed in and bound."""
    filters, params = audience.filters()
    ctes = sql.SQL(Q["audience"]).format(filters=filters)
    return sql.SQL(Q[name]).format(audience=ctes), {**params, "lists": list(audience.lists)}


def preview(conn: psycopg.Connection, audience: Audience, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` sendable audience members (id, email, merge_data) and how many there are in all."""
    query, params = audience_query("audience-preview", audience)
    rows = conn.execute(query, {**params, "limit": limit}).fetchall()
    return rows, (rows[0]["sendable"] if rows else 0)


def status_counts(conn: psycopg.Connection, campaign_id: int) -> list[dict[str, Any]]:
    return conn.execute(Q["count-by-status"], {"campaign_id": campaign_id}).fetchall()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ledger counts: recipients, one number per status, and skipped rows by reason."""
    by_status: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for row in rows:
        by_status[row["status"]] += row["n"]
        if row["status"] == Row.SKIPPED:
            skipped[row["skip_reason"]] += row["n"]
    return {
        "recipients": sum(by_status.values()),
        **{status: by_status.get(status, 0) for status in Row.ALL},
        "skipped_by_reason": dict(sorted(skipped.items())),
    }


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
    pages = [row["page_no"] for row in conn.execute(Q["open-pages"], {"campaign_id": campaign_id})]
    if not pages:
        return []
    per_task = pages_per_task(len(pages), page_size, rate, task_seconds, parallel)
    groups = [pages[i:i + per_task] for i in range(0, len(pages), per_task)]
    return [SendTask(campaign_id, group[0], group[-1], index, len(groups))
            for index, group in enumerate(groups, start=1)]


def settle_stale(conn: psycopg.Connection, task: SendTask, attempt: str) -> int:
    """Rows of this task's pages left `sending` by another attempt become `unknown`; returns how many."""
    return conn.execute(Q["settle-stale-sending"], {
        "campaign_id": task.campaign_id, "first_page": task.first_page, "last_page": task.last_page,
        "attempt": attempt}).rowcount


def pending_rows(conn: psycopg.Connection, task: SendTask, *, chunk: int = 1000):
    """Yield this task's pending rows in page/id order, a chunk per round trip."""
    after_page, after_id = -1, 0
    while True:
        rows = conn.execute(Q["next-pending"], {
            "campaign_id": task.campaign_id, "first_page": task.first_page, "last_page": task.last_page,
            "after_page": after_page, "after_id": after_id, "limit": chunk}).fetchall()
        if not rows:
            return
        yield from rows
        after_page, after_id = rows[-1]["page_no"], rows[-1]["id"]


def merge_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row's merge data: the frozen attributes plus email and the names (missing names left out, so
    `| default(...)` applies and the preflight reports them)."""
    fields = dict(row["merge_data"] or {})
    for name in ("email", "first_name", "last_name"):
        if row.get(name) is not None:
            fields[name] = row[name]
    return fields


def claim(conn: psycopg.Connection, row_id: int, email: str, attempt: str) -> str | None:
    """Claim a pending row for this attempt: returns 'sending', 'skipped' (suppressed meanwhile), or None when
    the row is no longer pending."""
    result = conn.execute(Q["claim"], {"id": row_id, "email": email, "attempt": attempt}).fetchone()
    return None if result is None else result["status"]


def mark_sent(conn: psycopg.Connection, row_id: int, attempt: str, message_id: str) -> None:
    conn.execute(Q["mark-sent"], {"id": row_id, "attempt": attempt, "message_id": message_id})


def release(conn: psycopg.Connection, row_id: int, attempt: str, status: str, error: str | None) -> None:
    """Settle a claimed row without a MessageId: failed (rejected), pending (never reached SES) or unknown."""
    if status not in (Row.FAILED, Row.PENDING, Row.UNKNOWN):
        raise ValueError(f"cannot release a claimed row to {status!r}")
    conn.execute(Q["release-claim"], {"id": row_id, "attempt": attempt, "status": status,
                                      "error": (error or "")[:2000] or None})


def cancel_pending(conn: psycopg.Connection, campaign_id: int) -> int:
    return conn.execute(Q["cancel-pending"], {"campaign_id": campaign_id}).rowcount
