"""The ledger: snapshot a campaign's audience, claim and settle rows (plan.py groups its pages into send tasks).

Rules (DESIGN.md "Ledger state machine"): a row becomes `sending` with the attempt id immediately before its own
SES call; `sent` after it. A retried task turns stale `sending` rows into `unknown` and never resends them.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from campaigns import queries
from campaigns.audience.filters import Audience
from campaigns.errors import CampaignNotFound
from campaigns.states import Row

if TYPE_CHECKING:
    from campaigns.sending.plan import SendTask


@dataclass(frozen=True)
class Attempt:
    """One try of one mapped send task: its DAG run, its map index and Airflow's try number."""

    run_id: str
    map_index: int
    try_number: int

    def __str__(self) -> str:
        # The text the ledger's `attempt` column holds: rows written before this type existed read the same.
        return f"{self.run_id}/{self.map_index}/{self.try_number}"


def snapshot(conn: psycopg.Connection, campaign_id: int, audience: Audience, page_size: int) -> dict[str, Any]:
    """Freeze the audience into the ledger once; a rerun for the same campaign changes nothing and returns the
    same counts."""
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    with conn.transaction():
        campaign = conn.execute(queries.load("ledger")["lock-campaign-snapshot"],
                                {"campaign_id": campaign_id}).fetchone()
        if campaign is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        if campaign["snapshot"] is not None:
            return campaign["snapshot"]
        query, params = audience_query("snapshot", audience)
        conn.execute(queries.load("ledger")["snapshot-work-mem"])
        conn.execute(query, {**params, "campaign_id": campaign_id, "page_size": page_size})
        summary = summarize(status_counts(conn, campaign_id))
        summary["page_size"] = page_size
        conn.execute(queries.load("ledger")["save-snapshot"], {"snapshot": Jsonb(summary), "campaign_id": campaign_id})
    return summary


def audience_query(name: str, audience: Audience) -> tuple[sql.Composed, dict[str, Any]]:
    """A named query that starts `WITH {audience}`, with the audience's filters composed in and bound."""
    filters, params = audience.filters()
    ctes = sql.SQL(queries.load("ledger")["audience"]).format(filters=filters)
    return sql.SQL(queries.load("ledger")[name]).format(audience=ctes), {
        **params, "lists": list(audience.lists), "exclude_lists": list(audience.exclude_lists)}


def preview(conn: psycopg.Connection, audience: Audience, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` sendable audience members (id, email, merge_data) and how many there are in all."""
    query, params = audience_query("audience-preview", audience)
    rows = conn.execute(query, {**params, "limit": limit}).fetchall()
    return rows, (rows[0]["sendable"] if rows else 0)


def audience_counts(conn: psycopg.Connection, audience: Audience) -> dict[str, Any]:
    """What a snapshot of `audience` would hold now: recipients, how many are sendable, the rest by skip reason
    (the snapshot summary's `recipients`, `pending` and `skipped_by_reason`)."""
    query, params = audience_query("audience-counts", audience)
    counts = {row["skip_reason"]: row["n"] for row in conn.execute(query, params).fetchall()}
    sendable = counts.pop(None, 0)
    return {"recipients": sendable + sum(counts.values()), "sendable": sendable,
            "skipped_by_reason": dict(sorted(counts.items()))}


def missing_lists(conn: psycopg.Connection, audience: Audience) -> dict[str, list[str]]:
    """The audience's list names that name no list, by field ("lists", "exclude_lists"); empty when all exist."""
    names = [*audience.lists, *audience.exclude_lists]
    known = {row["name"] for row in conn.execute(queries.load("ledger")["known-lists"], {"names": names})}
    missing = {field: [name for name in getattr(audience, field) if name not in known]
               for field in ("lists", "exclude_lists")}
    return {field: names for field, names in missing.items() if names}


def status_counts(conn: psycopg.Connection, campaign_id: int) -> list[dict[str, Any]]:
    return conn.execute(queries.load("ledger")["count-by-status"], {"campaign_id": campaign_id}).fetchall()


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


def settle_stale(conn: psycopg.Connection, task: SendTask, attempt: Attempt) -> Counter[str]:
    """Rows of this task's pages left `sending` by another attempt: `sent` when SES already reported on them,
    otherwise `unknown` (never resent); returns how many became each."""
    rows = conn.execute(queries.load("ledger")["settle-stale-sending"], {
        "campaign_id": task.campaign_id, "first_page": task.first_page, "last_page": task.last_page,
        "attempt": str(attempt)}).fetchall()
    return Counter(row["status"] for row in rows)


def pending_rows(conn: psycopg.Connection, task: SendTask, *, chunk: int = 1000):
    """Yield this task's pending rows in page/id order, a chunk per round trip."""
    after_page, after_id = -1, 0
    while True:
        rows = conn.execute(queries.load("ledger")["next-pending"], {
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


@dataclass(frozen=True)
class Sent:
    """A row SES accepted: its MessageId and when SES answered (what `sent_at` records)."""

    row_id: int
    message_id: str
    at: dt.datetime

    @classmethod
    def now(cls, row_id: int, message_id: str) -> Sent:
        return cls(row_id, message_id, dt.datetime.now(dt.UTC))


_NOTHING_SENT = {"sent_id": None, "sent_message_id": None, "sent_at": None}


def _sent_params(sent: Sent | None) -> dict[str, Any]:
    if sent is None:
        return _NOTHING_SENT
    return {"sent_id": sent.row_id, "sent_message_id": sent.message_id, "sent_at": sent.at}


def claim(conn: psycopg.Connection, row_id: int, email: str, attempt: Attempt, *,
          settle: Sent | None = None) -> str | None:
    """Claim a pending row for this attempt: returns 'sending', 'skipped' (suppressed meanwhile), or None when
    the row is no longer pending. `settle`, the same attempt's previous row SES accepted, is recorded `sent` in the
    same statement (one round trip for both)."""
    result = conn.execute(queries.load("ledger")["claim"], {
        "id": row_id, "email": email, "attempt": str(attempt), **_sent_params(settle)}).fetchone()
    return None if result is None else result["status"]


def mark_sent(conn: psycopg.Connection, attempt: Attempt, sent: Sent) -> None:
    """Record `sent` on its own, when no claim follows soon: the claim statement with no row to claim."""
    conn.execute(queries.load("ledger")["claim"], {"id": None, "email": None, "attempt": str(attempt),
                                                   **_sent_params(sent)})


def release(conn: psycopg.Connection, row_id: int, attempt: Attempt, status: str, error: str | None) -> None:
    """Settle a claimed row without a MessageId: failed (rejected), pending (never reached SES) or unknown."""
    if status not in (Row.FAILED, Row.PENDING, Row.UNKNOWN):
        raise ValueError(f"cannot release a claimed row to {status!r}")
    conn.execute(queries.load("ledger")["release-claim"], {"id": row_id, "attempt": str(attempt), "status": status,
                                      "error": (error or "")[:2000] or None})


def cancel_pending(conn: psycopg.Connection, campaign_id: int) -> int:
    return conn.execute(queries.load("ledger")["cancel-pending"], {"campaign_id": campaign_id}).rowcount
