"""Contact import throughput: the bulk path (COPY + one set-based upsert) against row-by-row INSERT ... ON CONFLICT.

    .venv/bin/python benchmarks/import_contacts.py [--rows 100000] [--baseline-rows 20000] [--runs 3]

Needs the project-local PostgreSQL (`python -m devstack services`). Creates scratch databases next to the
project's (`campaigns_bench`, migrated once, then cloned as a template for every run so each first import starts
from an empty schema) and drops them afterwards. The CSV has ~1% invalid addresses and ~1% duplicates.

Figures are rows of the file per second of wall time, median of `--runs` runs:
- bulk, first import:  campaigns.audience.contacts.import_csv into a fresh database
- bulk, re-import:     the same file again into that database (nothing changes)
- baseline:            the same parsing and validation, then executemany of one INSERT ... ON CONFLICT per row into
                       contacts and one per row into list_members (psycopg 3 pipelines executemany), on
                       --baseline-rows rows, scaled to rows/s
- parse + validate:    the CSV reading and email-validator work alone, no database
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from campaigns.audience.contacts import ImportReport, import_csv, parse_contacts
from campaigns.db import connect
from campaigns.schema import upgrade
from devstack.settings import SETTINGS

BENCH_DB = "campaigns_bench"
RUN_DB = "campaigns_bench_run"
LIST = "benchmark"

BASELINE_UPSERT = """
INSERT INTO contacts AS c (email, first_name, last_name, attributes) VALUES (%s, %s, %s, %s::jsonb)
ON CONFLICT ((lower(email))) DO UPDATE
    SET first_name = COALESCE(EXCLUDED.first_name, c.first_name),
        last_name  = COALESCE(EXCLUDED.last_name, c.last_name),
        attributes = c.attributes || EXCLUDED.attributes,
        updated_at = now()
    WHERE (c.first_name, c.last_name, c.attributes) IS DISTINCT FROM
          (COALESCE(EXCLUDED.first_name, c.first_name), COALESCE(EXCLUDED.last_name, c.last_name),
           c.attributes || EXCLUDED.attributes)
"""
BASELINE_MEMBER = """
INSERT INTO list_members (list_id, contact_id)
SELECT %s, id FROM contacts WHERE lower(email) = lower(%s)
ON CONFLICT (list_id, contact_id) DO NOTHING
"""


def write_csv(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """A contacts file with ~1% invalid addresses and ~1% duplicates (other case); returns what it planted."""
    rng = random.Random(seed)
    domains = [f"mail{i}.example.com" for i in range(300)] + ["gmail.com", "yahoo.com", "outlook.com"]
    plans = ["free", "pro", "team", "enterprise"]
    planted = {"invalid": 0, "duplicates": 0}
    emails: list[str] = []
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["Email", "First Name", "Last Name", "Company", "Plan", "Signup Date"])
        for i in range(rows):
            if i % 100 == 37:
                email = f"user{i}.at.{rng.choice(domains)}"  # no @-sign
                planted["invalid"] += 1
            elif i % 100 == 73 and emails:
                email = rng.choice(emails).upper()
                planted["duplicates"] += 1
            else:
                email = f"first{i}.last@{rng.choice(domains)}"
                emails.append(email)
            company = f"Company {rng.randrange(5000)}, Inc." if i % 3 else ""
            out.writerow([email, f"First{i}", f"Last{i}", company, rng.choice(plans), f"2026-{i % 12 + 1:02d}-01"])
    return planted


def head(path: Path, rows: int, into: Path) -> None:
    with path.open(encoding="utf-8", newline="") as src, into.open("w", encoding="utf-8", newline="") as dst:
        for n, line in enumerate(src):
            if n > rows:
                break
            dst.write(line)


def admin() -> psycopg.Connection:
    return psycopg.connect(SETTINGS.pg_dsn(SETTINGS.campaign_db), autocommit=True)


def drop_db(name: str) -> None:
    with admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def fresh_db() -> Iterator[str]:
    """An empty, migrated campaign database cloned from the benchmark template; dropped on exit."""
    drop_db(RUN_DB)
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(RUN_DB), sql.Identifier(BENCH_DB)))
    try:
        yield SETTINGS.pg_dsn(RUN_DB)
    finally:
        drop_db(RUN_DB)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bulk_import(dsn: str, path: Path) -> ImportReport:
    with connect(dsn) as conn, path.open(encoding="utf-8-sig", newline="") as fh:
        return import_csv(conn, fh, LIST)


def baseline_import(dsn: str, path: Path) -> int:
    """Row-by-row: the same parse and validation, then one upsert and one membership insert per row."""
    report = ImportReport(list_name=LIST)
    with connect(dsn) as conn, path.open(encoding="utf-8-sig", newline="") as fh:
        rows = [
            (r.email, r.first_name, r.last_name, json.dumps(r.attributes, ensure_ascii=False))
            for r in parse_contacts(fh, report)
        ]
        list_id = conn.execute(
            "INSERT INTO lists (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            (LIST,),
        ).fetchone()["id"]
        with conn.cursor() as cur:
            cur.executemany(BASELINE_UPSERT, rows)
            cur.executemany(BASELINE_MEMBER, [(list_id, r[0]) for r in rows])
        conn.commit()
    return len(rows)


def parse_only(path: Path) -> int:
    report = ImportReport(list_name=LIST)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return sum(1 for _ in parse_contacts(fh, report))


def rate(rows: int, seconds: list[float]) -> tuple[float, float]:
    median = statistics.median(seconds)
    return rows / median, median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        full, small = Path(tmp) / "contacts.csv", Path(tmp) / "contacts-head.csv"
        planted = write_csv(full, args.rows)
        head(full, args.baseline_rows, small)

        load_before = f"{os.getloadavg()[0]:.1f}"
        drop_db(BENCH_DB)
        with admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
            server = conn.execute("SHOW server_version").fetchone()[0]
        try:
            upgrade(SETTINGS.pg_dsn(BENCH_DB))
            first, again, parse_full, report = measure(lambda dsn: bulk_import(dsn, full), full, args.runs)
            base_first, base_again, parse_small, _ = measure(lambda dsn: baseline_import(dsn, small), small, args.runs)
        finally:
            drop_db(RUN_DB)
            drop_db(BENCH_DB)

    print(f"contact import benchmark: {args.rows:,} CSV rows ({planted['invalid']:,} invalid, "
          f"{planted['duplicates']:,} duplicates planted), median of {args.runs} runs")
    print(f"PostgreSQL {server} on 127.0.0.1:{SETTINGS.pg_port}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average before/after {load_before} / {os.getloadavg()[0]:.1f}")
    print(f"bulk report: {json.dumps(report.counts())}")
    print()
    print(f"{'path':<58}{'rows':>9}{'seconds':>10}{'rows/s':>10}")
    lines = [
        ("bulk (COPY + set-based upsert), first import", args.rows, first),
        ("bulk (COPY + set-based upsert), re-import (no changes)", args.rows, again),
        ("baseline row-by-row executemany, first import", args.baseline_rows, base_first),
        ("baseline row-by-row executemany, re-import", args.baseline_rows, base_again),
        ("parse + validate only (no database)", args.rows, parse_full),
    ]
    for label, rows, seconds in lines:
        per_second, median = rate(rows, seconds)
        print(f"{label:<58}{rows:>9,}{median:>10.2f}{per_second:>10,.0f}")
    bulk_rate, base_rate = rate(args.rows, first)[0], rate(args.baseline_rows, base_first)[0]
    db_bulk = args.rows / max(statistics.median(t - p for t, p in zip(first, parse_full, strict=True)), 1e-9)
    db_base = args.baseline_rows / max(
        statistics.median(t - p for t, p in zip(base_first, parse_small, strict=True)), 1e-9
    )
    print()
    print(f"first import, bulk vs baseline: {bulk_rate / base_rate:.1f}x overall (both pay the same parse + validate)")
    print(f"database part alone (import minus parse + validate): bulk {db_bulk:,.0f} rows/s, "
          f"baseline {db_base:,.0f} rows/s ({db_bulk / db_base:.1f}x)")


def measure(
    run_import: Callable[[str], object], path: Path, runs: int
) -> tuple[list[float], list[float], list[float], object]:
    """`runs` first imports, each into a fresh database, then `runs` re-imports into the last one.

    Each first import is paired with a parse-only pass over the same file right before it, so the database share
    (import minus parse) compares like with like even while the load of a shared machine drifts.
    """
    first: list[float] = []
    again: list[float] = []
    parse: list[float] = []
    result: object = None
    for run in range(runs):
        parse.append(timed(lambda: parse_only(path))[0])
        with fresh_db() as dsn:
            seconds, result = timed(lambda dsn=dsn: run_import(dsn))
            first.append(seconds)
            if run == runs - 1:
                for _ in range(runs):
                    seconds, repeated = timed(lambda dsn=dsn: run_import(dsn))
                    if isinstance(repeated, ImportReport):
                        assert repeated.inserted == repeated.updated == 0, repeated.counts()
                    again.append(seconds)
    return first, again, parse, result


if __name__ == "__main__":
    sys.exit(main())
