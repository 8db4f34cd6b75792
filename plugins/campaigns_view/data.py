"""What the Campaigns view reads: the stats rollups (campaigns.lifecycle.stats), the campaign row and its action log.

Nothing here scans the ledger or email_events: a campaign page costs a handful of primary-key reads whatever the
campaign's size (benchmarks/analytics_view.py). The rollups lag the raw events by up to one
refresh_campaign_stats run (5 minutes); every page says when its numbers were counted.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from campaigns import queries, states
from campaigns.errors import CampaignNotFound
from campaigns.lifecycle.stats import COUNTS, LINK_METRICS, RATES, campaign_series, campaign_stats
from campaigns.sending import ledger

QUERIES = Path(__file__).with_name("queries")  # the plugin's own named SQL: queries.load("view", QUERIES)

CAMPAIGN_STATES = (states.DRAFT, states.SCHEDULED, states.HELD, states.RUNNING, states.PAUSED, states.SENT,
                   states.CANCELLED, states.FAILED)
LEDGER_STATES = states.Row.ALL
PAGE_SIZE = 50
ACTIONS_SHOWN = 200
TEST_SENDS_SHOWN = 20

# SES puts an account under review at these rates (bounce: 5%, complaint: 0.1%); the charts draw them as lines.
SES_REVIEW_BOUNCE_RATE = 0.05
SES_REVIEW_COMPLAINT_RATE = 0.001

__all__ = ["CampaignNotFound", "campaign_list", "campaign_page", "progress", "recent_test_sends", "stats_csv"]


class BadFilter(ValueError):
    """A list filter names something that does not exist (an unknown state, a negative cursor)."""


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def campaign_list(conn: psycopg.Connection, *, status: str | None = None, before: int | None = None,
                  limit: int = PAGE_SIZE) -> dict[str, Any]:
    """One page of campaigns, newest first, with progress and rates; `next_before` pages on (None: last page)."""
    if status is not None and status not in CAMPAIGN_STATES:
        raise BadFilter(f"unknown campaign state {status!r}; states are: {', '.join(CAMPAIGN_STATES)}")
    if before is not None and before < 1:
        raise BadFilter(f"`before` is a campaign id (1 or more), got {before}")
    sql = queries.load("view", QUERIES)
    rows = conn.execute(sql["campaign-list"], {"status": status, "before": before, "limit": limit + 1}).fetchall()
    campaigns = []
    for row in rows[:limit]:
        item = dict(row)
        not_bounced = max(item["sent"] - item["bounced"], 0)
        item["rates"] = {
            "bounce": _ratio(item["bounced"], item["sent"]),
            "complaint": _ratio(item["complained"], item["sent"]),
            "open": _ratio(item["unique_opens"], not_bounced),
            "click": _ratio(item["unique_clicks"], not_bounced),
        }
        item["progress"] = _ratio(item["sent"], item["recipients"])
        campaigns.append(item)
    counts = {row["status"]: row["n"] for row in conn.execute(sql["status-counts"])}
    return {
        "campaigns": campaigns,
        "status": status,
        "status_counts": {state: counts.get(state, 0) for state in CAMPAIGN_STATES},
        "next_before": campaigns[-1]["id"] if len(rows) > limit else None,
    }


def campaign_page(conn: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    """Everything the campaign page draws: stats and rates, series split into hours and days, actions, runs."""
    stats = campaign_stats(conn, campaign_id)  # raises CampaignNotFound
    sql = queries.load("view", QUERIES)
    campaign = dict(conn.execute(sql["campaign-row"], {"campaign_id": campaign_id}).fetchone())
    series = campaign_series(conn, campaign_id)
    actions = [dict(row) for row in conn.execute(sql["campaign-actions"],
                                                 {"campaign_id": campaign_id, "limit": ACTIONS_SHOWN})]
    return {
        "campaign": campaign,
        "stats": stats,
        "hourly": fill_hours([b for b in series if b["granularity"] == "hour"]),
        "daily": [b for b in series if b["granularity"] == "day"],
        "actions": actions,
        "guard_actions": [a for a in actions if a["actor"] in ("reputation_guard", "ses_account_guard")],
        "send_runs": send_runs(campaign, actions),
    }


def progress(conn: psycopg.Connection, campaign_id: int) -> dict[str, Any]:
    """The campaign's state and its ledger counted now (not the rollup): what a running campaign's page polls."""
    row = conn.execute(queries.load("view", QUERIES)["campaign-progress"], {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    counts = ledger.summarize(ledger.status_counts(conn, campaign_id))
    return {**{name: _json_value(value) for name, value in row.items()}, "counts": counts}


def recent_test_sends(conn: psycopg.Connection, campaign_id: int) -> list[dict[str, Any]]:
    """The campaign's latest test emails, newest first: address, sent/failed, when, SES's answer."""
    return conn.execute(queries.load("view", QUERIES)["test-sends"],
                        {"campaign_id": campaign_id, "limit": TEST_SENDS_SHOWN}).fetchall()


def fill_hours(buckets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hourly buckets with the empty hours between the first and the last one added as zeros.

    The rollup stores only hours that had activity; a chart that skipped the quiet hours would draw a night
    without opens as if nothing lay between the evening and the morning. At most 192 hours (the first week).
    """
    if not buckets:
        return []
    by_start = {b["bucket_start"]: b for b in buckets}
    zero = {metric: (0 if metric != "granularity" else "hour") for metric in buckets[0]}
    filled, at, last = [], buckets[0]["bucket_start"], buckets[-1]["bucket_start"]
    while at <= last:
        filled.append(by_start.get(at) or {**zero, "bucket_start": at})
        at += timedelta(hours=1)
    return filled


def send_runs(campaign: dict[str, Any], actions: list[dict[str, Any]]) -> list[str]:
    """The send_campaign run ids known for the campaign: its current run and those that actions started or left."""
    runs: list[str] = []
    candidates = [campaign["run_id"]]
    for action in actions:
        candidates += [action["trigger_run_id"], action["previous_run_id"]]
        if action["actor"] == "reputation_guard":
            candidates.append(action["run_id"])  # the guard runs inside the send run it paused
    for run_id in candidates:
        if run_id and run_id not in runs:
            runs.append(run_id)
    return runs


CSV_COLUMNS = ("section", "item", "metric", "value", "numerator", "denominator")


def stats_csv(conn: psycopg.Connection, campaign_id: int) -> str:
    """The campaign's stats as one long-format CSV: counts, rates, skip reasons, links and the time series.

    Long format (one number per line) so a spreadsheet pivot or pandas reads every section the same way.
    """
    stats = campaign_stats(conn, campaign_id)  # raises CampaignNotFound
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for field in ("key", "name", "status", "started_at", "finished_at", "ledger_counted_at", "rolled_up_at"):
        writer.writerow(("campaign", "", field, _csv_value(stats[field]), "", ""))
    for name in COUNTS:
        writer.writerow(("count", "", name, stats[name], "", ""))
    for name in RATES:
        rate = stats["rates"][name]
        writer.writerow(("rate", "", name, "" if rate["value"] is None else rate["value"], rate["numerator"],
                         rate["denominator"]))
    for reason, n in sorted(stats["skipped_by_reason"].items()):
        writer.writerow(("skipped_by_reason", reason, "skipped", n, "", ""))
    for link in stats["links"]:
        for metric in LINK_METRICS:
            writer.writerow(("link", link["url"] or f"link {link['link_id']}", metric, link[metric], "", ""))
    for bucket in campaign_series(conn, campaign_id):
        item = f"{bucket['granularity']} {_csv_value(bucket['bucket_start'])}"
        for metric, value in bucket.items():
            if metric not in ("bucket_start", "granularity"):
                writer.writerow(("series", item, metric, value, "", ""))
    return out.getvalue()


def _json_value(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _csv_value(value: Any) -> Any:
    return "" if value is None else _json_value(value)
