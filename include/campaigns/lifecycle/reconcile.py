"""Unknown sends reconciled: the `unknown` ledger rows that no SES event settled, reported and released.

A row is `unknown` when its SES call may or may not have happened (a send task crashed between claiming it and
SES's answer, or the answer timed out). SES Send/Delivery/Bounce events settle most of them within seconds
(campaigns.feedback.ses_events); the rest would stay unknown forever. The `reconcile_unknown` DAG reports them per
campaign once they are older than the window (UNKNOWN_SENDS_WINDOW_HOURS), and the Campaigns view shows them and
offers the analyst's explicit choice of at-least-once for those rows: release them to `pending` for one more send
(control.RELEASE_UNKNOWN, which also moves a sent campaign back to running and starts the send run).

Report and release share one SQL definition of "unsettled" (queries/reconcile.sql), so the view never offers a
row the release would not take, and the release re-checks it under the campaign's row lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from campaigns import queries
from campaigns.config import Settings

log = logging.getLogger(__name__)

SAMPLE_SIZE = 10  # rows shown per campaign in the log and on the campaign page


@dataclass(frozen=True)
class UnsettledCampaign:
    """One campaign's unknown rows that no SES event settled within the window: how many, since when, a sample."""

    campaign_id: int
    key: str
    status: str
    unknown: int
    oldest: datetime
    sample: tuple[dict[str, Any], ...]  # id, email, claimed_at, error of the first rows by id

    def as_xcom(self) -> dict[str, Any]:
        """JSON-safe and without addresses (the sample's ids only): the DAG run's XCom."""
        return {"campaign_id": self.campaign_id, "key": self.key, "status": self.status, "unknown": self.unknown,
                "oldest": self.oldest.isoformat(), "sample_ids": [row["id"] for row in self.sample]}


def window_for(settings: Settings) -> timedelta:
    """How old an unknown row must be before it is reported and may be released (UNKNOWN_SENDS_WINDOW_HOURS)."""
    return timedelta(hours=settings.unknown_window_hours)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def hours_text(window: timedelta) -> str:
    """A window as people read it in the log and on the page: "24 h", "0.5 h"."""
    return f"{window.total_seconds() / 3600:g} h"


def _query(name: str) -> sql.Composed:
    """A reconcile query with the shared "unsettled" conditions composed in (their parameters stay bound)."""
    area = queries.load("reconcile")
    return sql.SQL(area[name]).format(unsettled=sql.SQL(area["unsettled"]))


def unsettled(conn: psycopg.Connection, window: timedelta, *, campaign_id: int | None = None,
              sample: int = SAMPLE_SIZE) -> list[UnsettledCampaign]:
    """Every campaign's (or one campaign's) unknown rows older than `window` that no SES event settled."""
    rows = conn.execute(_query("unsettled-report"), {
        "campaign_id": campaign_id, "window_seconds": window.total_seconds(), "sample": sample}).fetchall()
    grouped: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["campaign_id"], []).append(row)
    return [UnsettledCampaign(
        campaign_id=first["campaign_id"], key=first["key"], status=first["status"], unknown=first["unknown"],
        oldest=first["oldest"], sample=tuple({name: row[name] for name in ("id", "email", "claimed_at", "error")}
                                             for row in group))
        for group in grouped.values() for first in group[:1]]


def unsettled_of(conn: psycopg.Connection, campaign_id: int, window: timedelta) -> UnsettledCampaign | None:
    """One campaign's unsettled unknown rows (None: there are none), for its page and the release action."""
    found = unsettled(conn, window, campaign_id=campaign_id)
    return found[0] if found else None


def release_unsettled(conn: psycopg.Connection, campaign_id: int, window: timedelta) -> list[int]:
    """Turn the campaign's unsettled unknown rows back to `pending` in one guarded statement; returns their ids.

    Call it inside the release action's transaction: the rows are pending only if the campaign's move commits.
    """
    rows = conn.execute(_query("release-unsettled"), {
        "campaign_id": campaign_id, "window_seconds": window.total_seconds()}).fetchall()
    return [row["id"] for row in rows]


def report(conn: psycopg.Connection, window: timedelta) -> list[dict[str, Any]]:
    """The reconcile_unknown DAG's report: one warning per campaign (count and a sample), the XCom summary."""
    found = unsettled(conn, window)
    for campaign in found:
        sample = ", ".join(f"{row['email']} (row {row['id']}"
                           + (f", claimed {utc_text(row['claimed_at'])})" if row["claimed_at"] else ")")
                           for row in campaign.sample)
        log.warning("campaign %s (%r, %s): %d recipient(s) unknown for more than %s with no SES event, the oldest "
                    "since %s; the Campaigns view can release them for one more send. Sample: %s",
                    campaign.campaign_id, campaign.key, campaign.status, campaign.unknown, hours_text(window),
                    utc_text(campaign.oldest), sample)
    if not found:
        log.info("no unknown recipients older than %s without an SES event", hours_text(window))
    return [campaign.as_xcom() for campaign in found]
