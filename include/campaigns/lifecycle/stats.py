"""Campaign stats: incremental rollups of email_events and the ledger, event retention, and the read API.

    refresh(conn)                  one rollup run (the refresh_campaign_stats DAG calls it every 5 minutes)
    prune_events(conn, days)       retention: delete events older than `days` that a rollup has counted
    campaign_stats(conn, id)       one campaign's numbers and rates, from the rollup tables (no event scans)
    campaign_series(conn, id)      its time series: hourly for the first 7 days, daily after

Why the rollup cannot miss or double-count an event: email_events ids are assigned at INSERT, but transactions
commit in any order, so a "last id seen" watermark skips an event whose transaction commits after a run that
already saw higher ids. Each event instead carries its inserting transaction's id (email_events.txid); a run
counts the events visible in its own snapshot and not in the previous run's, and stores its snapshot in the same
transaction as the counts. An event is in exactly one such difference. Unique counts read and update per-recipient
firsts (campaign_recipient_activity), never a rescan. docs/analytics.md describes every table and column.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import pq, sql

from campaigns import queries
from campaigns.errors import CampaignNotFound
from campaigns.states import Row

log = logging.getLogger(__name__)

PRUNE_CHUNK = 10_000  # rows per DELETE: short locks, bounded WAL per statement

# Each rate: numerator / denominator, both columns of the campaign's stats, as stated in docs/analytics.md.
# Engagement is measured against the messages that did not bounce (SES Delivery notifications are optional, so
# "delivered" may stay 0 where they are not published); bounce and complaint rates against sent, as SES does.
RATES: dict[str, tuple[str, str]] = {
    "bounce": ("bounced", "sent"),
    "hard_bounce": ("bounced_hard", "sent"),
    "complaint": ("complained", "sent"),
    "open": ("unique_opens", "not_bounced"),
    "human_open": ("unique_human_opens", "not_bounced"),
    "click": ("unique_clicks", "not_bounced"),
    "human_click": ("unique_human_clicks", "not_bounced"),
    "click_to_open": ("unique_clicks", "unique_opens"),
    "unsubscribe": ("unsubscribes", "not_bounced"),
}
# Every count of a campaign's stats, in campaign_stats' column order (migration 0003; a test compares the two): the
# ledger's counts, recounted; bounced_soft, which the table computes; and the event metrics a rollup adds up.
COUNTS = ("recipients", "pending", "sending", "sent", "failed", "skipped", "cancelled", "unknown", "delivered",
          "bounced", "bounced_hard", "bounced_soft", "complained", "opens", "human_opens", "unique_opens",
          "unique_human_opens", "clicks", "human_clicks", "unique_clicks", "unique_human_clicks", "unsubscribes")
LEDGER_COUNTS = ("recipients", *Row.ALL)
GENERATED_COUNTS = ("bounced_soft",)  # bounced - bounced_hard
# The rollup's SQL is composed from this list (queries/stats.sql {metrics}); the time series has these plus sent.
EVENT_METRICS = tuple(name for name in COUNTS if name not in (*LEDGER_COUNTS, *GENERATED_COUNTS))
SERIES_METRICS = ("sent", *EVENT_METRICS)
LINK_METRICS = ("clicks", "human_clicks", "unique_clicks", "unique_human_clicks")
_METRIC_QUERIES = ("apply-campaign-deltas", "apply-series-deltas")


def _require_idle(conn: psycopg.Connection, what: str) -> None:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError(f"{what} runs its own transactions: pass a connection with no transaction open")


def refresh(conn: psycopg.Connection) -> dict[str, Any]:
    """Roll every event committed since the last run, and the ledgers of changed campaigns, into the stats tables.

    Returns {"events": counted now, "campaigns_recounted": ledgers counted, "first_run": bool}. Safe to call at
    any time and from several processes: runs are serialized by an advisory lock.
    """
    _require_idle(conn, "refresh")
    named = queries.load("stats")
    _outside_transaction(conn, named["lock-rollup"])
    try:
        with conn.transaction():
            conn.execute(named["repeatable-read"])
            conn.execute(named["ensure-rollup-state"])
            state = conn.execute(named["rollup-state"]).fetchone()
            first_run = state["previous"] is None
            params = {"current": state["current"], "previous": state["previous"]}
            which = sql.SQL(named["stage-all-events" if first_run else "stage-new-events"])
            conn.execute(sql.SQL(named["stage-events"]).format(which=which), params)
            events = conn.execute(named["count-batch"]).fetchone()["n"]
            if events:
                _roll_up_events(conn)
            campaign_ids = [row["id"] for row in conn.execute(named["campaigns-to-recount"])]
            if campaign_ids:
                conn.execute(named["recount-ledger"], {"campaign_ids": campaign_ids})
                conn.execute(named["reset-sent-series"], {"campaign_ids": campaign_ids})
                conn.execute(named["count-sent-series"], {"campaign_ids": campaign_ids})
            conn.execute(named["save-rollup-state"], {"current": state["current"], "events": events})
    finally:
        if not conn.broken:  # a lost connection released its session lock with it
            _outside_transaction(conn, named["unlock-rollup"])
    summary = {"events": events, "campaigns_recounted": len(campaign_ids), "first_run": first_run}
    log.info("stats rollup: %(events)s new events, %(campaigns_recounted)s campaign ledgers counted", summary)
    return summary


def _roll_up_events(conn: psycopg.Connection) -> None:
    # Order matters: the firsts are staged against the stored per-recipient state before it is updated.
    for name in ("count-events-by-hour", "stage-recipient-firsts", "stage-link-firsts", "stage-deltas",
                 "apply-campaign-deltas", "apply-series-deltas", "apply-link-deltas",
                 "save-recipient-firsts", "save-link-firsts"):
        conn.execute(with_metrics(name) if name in _METRIC_QUERIES else queries.load("stats")[name])


def with_metrics(name: str) -> sql.Composed:
    """A stats query with EVENT_METRICS composed in as {metrics}, {metric_sums} and {metric_increments}."""
    named = queries.load("stats")
    return sql.SQL(named[name]).format(
        metrics=sql.SQL(", ").join(map(sql.Identifier, EVENT_METRICS)),
        metric_sums=sql.SQL(",\n       ").join(
            sql.SQL(named["metric-sum"]).format(metric_name=sql.Literal(metric)) for metric in EVENT_METRICS),
        metric_increments=sql.SQL(",\n       ").join(
            sql.SQL(named["metric-increment"]).format(metric=sql.Identifier(metric)) for metric in EVENT_METRICS))


def _outside_transaction(conn: psycopg.Connection, query: str) -> None:
    conn.execute(query)
    if not conn.autocommit:
        conn.commit()  # a session-level advisory lock outlives this commit; the rollup must start a fresh snapshot


def prune_events(conn: psycopg.Connection, retention_days: int, *, max_rows: int | None = None,
                 chunk: int = PRUNE_CHUNK) -> int:
    """Delete events created more than `retention_days` ago that a rollup has counted; returns how many.

    0 days keeps every event. Each chunk commits on its own, so a long prune never holds locks for long.
    """
    if retention_days < 0:
        raise ValueError(f"retention_days must be 0 (keep everything) or more, got {retention_days}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if retention_days == 0:
        return 0
    _require_idle(conn, "prune_events")
    deleted = 0
    while max_rows is None or deleted < max_rows:
        limit = chunk if max_rows is None else min(chunk, max_rows - deleted)
        with conn.transaction():
            n = conn.execute(queries.load("stats")["prune-events"], {"days": retention_days, "limit": limit}).rowcount
        deleted += n
        if n < limit:
            break
    if deleted:
        log.info("pruned %s events older than %s days (already rolled up)", deleted, retention_days)
    return deleted


def campaign_stats(conn: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    """One campaign's stats from the rollup tables: counts, rates (with their numerator and denominator), links.

    A campaign no rollup has seen yet has zero counts and `ledger_counted_at` None. Raises CampaignNotFound.
    """
    row = conn.execute(queries.load("stats")["campaign-stats"], {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    stats: dict[str, Any] = dict(row)
    for name in COUNTS:
        stats[name] = int(stats[name] or 0)
    stats["skipped_by_reason"] = stats["skipped_by_reason"] or {}
    stats["not_bounced"] = max(stats["sent"] - stats["bounced"], 0)
    stats["rates"] = {name: _rate(stats, numerator, denominator) for name, (numerator, denominator) in RATES.items()}
    stats["links"] = [dict(link) for link in conn.execute(queries.load("stats")["campaign-link-stats"],
                                                          {"campaign_id": campaign_id})]
    return stats


def _rate(stats: dict[str, Any], numerator: str, denominator: str) -> dict[str, Any]:
    top, bottom = stats[numerator], stats[denominator]
    return {
        "value": round(top / bottom, 6) if bottom else None,  # None, not 0: nothing to measure against yet
        "numerator": top,
        "denominator": bottom,
        "formula": f"{numerator} / {'(sent - bounced)' if denominator == 'not_bounced' else denominator}",
    }


def campaign_series(conn: psycopg.Connection, campaign_id: int) -> list[dict[str, Any]]:
    """The campaign's buckets in time order: `granularity` 'hour' for its first 7 days, then 'day' (UTC)."""
    return [dict(row) for row in conn.execute(queries.load("stats")["campaign-series"], {"campaign_id": campaign_id})]
