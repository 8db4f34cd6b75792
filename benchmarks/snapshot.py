"""Snapshot + plan of a 1,000,000-contact list (target: <= 20 s), beside a row-by-row baseline, in one run.

    .venv/bin/python benchmarks/snapshot.py [--contacts 1000000] [--rounds 3] [--baseline-rows 20000]

Uses a scratch database on the project's PostgreSQL (created and dropped here). Prints medians of `--rounds`.
The baseline is what a naive sender does: read the audience into Python and INSERT the ledger row by row
(executemany), measured on `--baseline-rows` and scaled to the same audience size.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg

from campaigns import db
from campaigns.audience.filters import Audience
from campaigns.sending import ledger
from campaigns.sending import plan as send_plan
from devstack.services import scratch_database
from devstack.settings import SETTINGS


def seed(conn: psycopg.Connection, contacts: int) -> None:
    """A list of `contacts` subscribed members, 1% suppressed, 1% unsubscribed, a country attribute."""
    conn.execute("INSERT INTO lists (name) VALUES ('newsletter')")
    conn.execute(
        """INSERT INTO contacts (email, first_name, last_name, attributes)
           SELECT 'user' || g || '@example.org', 'First' || g, 'Last' || g,
                  jsonb_build_object('country', (ARRAY['DE', 'AT', 'FR', 'IT'])[1 + mod(g, 4)])
             FROM generate_series(1, %s) AS g""", [contacts])
    conn.execute(
        """INSERT INTO list_members (list_id, contact_id, status)
           SELECT l.id, c.id, CASE WHEN mod(c.id, 100) = 1 THEN 'unsubscribed' ELSE 'subscribed' END
             FROM contacts c CROSS JOIN lists l""")
    conn.execute(
        """INSERT INTO suppressions (email, reason, source)
           SELECT lower(email), 'hard_bounce', 'bench' FROM contacts WHERE mod(id, 100) = 2""")
    conn.execute("ANALYZE")


def new_campaign(conn: psycopg.Connection) -> int:
    return conn.execute(
        "INSERT INTO campaigns (key, name, subject, from_email, html, audience) VALUES "
        "(%s, 'bench', 's', 'news@example.com', '<p>x</p>', '{\"lists\": [\"newsletter\"]}') RETURNING id",
        [uuid.uuid4().hex]).fetchone()["id"]


def time_snapshot_and_plan(conn: psycopg.Connection) -> tuple[float, float, dict, int]:
    audience = Audience.parse({"lists": ["newsletter"]})
    campaign_id = new_campaign(conn)
    started = time.perf_counter()
    summary = ledger.snapshot(conn, campaign_id, audience, page_size=500)
    snapped = time.perf_counter()
    tasks = send_plan.plan(conn, campaign_id, page_size=500, rate=14, task_seconds=60)
    planned = time.perf_counter()
    conn.execute("DELETE FROM campaign_recipients WHERE campaign_id = %s", [campaign_id])
    return snapped - started, planned - snapped, summary, len(tasks)


def time_row_by_row(conn: psycopg.Connection, rows: int) -> float:
    """Naive baseline: fetch the audience, then one INSERT per recipient (executemany)."""
    campaign_id = new_campaign(conn)
    started = time.perf_counter()
    audience = conn.execute(
        """SELECT c.id, c.email, c.first_name, c.last_name FROM contacts c
             JOIN list_members lm ON lm.contact_id = c.id AND lm.status = 'subscribed'
            WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.email = lower(c.email))
            ORDER BY c.id LIMIT %s""", [rows]).fetchall()
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO campaign_recipients (campaign_id, contact_id, email, merge_data, page_no) "
            "VALUES (%s, %s, %s, jsonb_build_object('first_name', %s::text, 'last_name', %s::text), %s)",
            [(campaign_id, r["id"], r["email"], r["first_name"], r["last_name"], i // 500)
             for i, r in enumerate(audience)])
    elapsed = time.perf_counter() - started
    conn.execute("DELETE FROM campaign_recipients WHERE campaign_id = %s", [campaign_id])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    args = parser.parse_args()

    with scratch_database(SETTINGS, "campaigns_bench_snapshot") as dsn, db.connect(dsn, autocommit=True) as conn:
        print(f"seeding {args.contacts:,} contacts ...", flush=True)
        seed(conn, args.contacts)
        snaps, plans, baselines = [], [], []
        for round_no in range(1, args.rounds + 1):
            snap, plan, summary, tasks = time_snapshot_and_plan(conn)
            base = time_row_by_row(conn, args.baseline_rows)
            snaps.append(snap)
            plans.append(plan)
            baselines.append(base)
            print(f"round {round_no}: snapshot {snap:.2f} s, plan {plan:.2f} s ({tasks} send tasks); "
                  f"row-by-row {args.baseline_rows:,} rows {base:.2f} s", flush=True)
    snap, plan, base = statistics.median(snaps), statistics.median(plans), statistics.median(baselines)
    scaled = base * summary["pending"] / args.baseline_rows
    print()
    print(f"audience: {summary['recipients']:,} members -> {summary['pending']:,} pending, "
          f"skipped {summary['skipped_by_reason']}")
    print(f"{'path':44} {'median s':>10} {'rows/s':>12}")
    print(f"{'set-based snapshot (one INSERT ... SELECT)':44} {snap:10.2f} {summary['recipients'] / snap:12,.0f}")
    print(f"{'plan (open pages -> send tasks)':44} {plan:10.2f}")
    print(f"{'snapshot + plan':44} {snap + plan:10.2f}   target <= 20 s: {'yes' if snap + plan <= 20 else 'NO'}")
    print(f"{'baseline row-by-row, scaled to the audience':44} {scaled:10.2f} "
          f"{args.baseline_rows / base:12,.0f}")
    print(f"speed-up of the snapshot over the baseline: {scaled / snap:.1f}x")

if __name__ == "__main__":
    main()
