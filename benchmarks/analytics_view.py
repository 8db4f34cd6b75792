"""Server time of the Campaigns view's campaign page for a big campaign (target: <= 300 ms).

    .venv/bin/python benchmarks/analytics_view.py [--recipients 1000000] [--events 5000000] [--requests 30]

A scratch database on the project's PostgreSQL (created and dropped here) gets one campaign with `--recipients`
ledger rows, 5 tracked links and `--events` email_events over 10 days (opens, clicks, deliveries, bounces,
complaints, unsubscribes; a share of them machine events), plus 200 small campaigns for the list page. One
stats rollup (campaigns.lifecycle.stats.refresh, as the refresh_campaign_stats DAG runs it) counts them. Then the
view's own app (plugins/campaigns_view, with Airflow's real authorization and a JWT from the simple auth manager)
serves the campaign page, the list page and the CSV `--requests` times each; printed: the app's Server-Timing figure
(routing, auth, queries, template and SVG rendering) and the client round trip, median / p95 / max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from devstack.settings import SETTINGS
from devstack.testenv import prepare, test_airflow_env

# Airflow's auth manager and metadata DB: the test AIRFLOW_HOME (SQLite), set before Airflow is imported
os.environ.update(test_airflow_env(SETTINGS))
sys.path.append(str(SETTINGS.root / "plugins"))

import psycopg

from campaigns import db
from campaigns.lifecycle import stats
from devstack.services import scratch_database

TARGET_MS = 300.0


def seed(conn: psycopg.Connection, recipients: int, events: int) -> int:
    """The big campaign (its id is returned) and 200 small ones."""
    campaign_id = conn.execute(
        """INSERT INTO campaigns (key, name, subject, from_email, html, audience, status, started_at, finished_at,
                                  run_id)
           VALUES ('big', 'A big campaign', 's', 'news@example.com', '<p>x</p>', '{}', 'sent',
                   now() - interval '10 days', now() - interval '9 days', 'manual__bench')
           RETURNING id""").fetchone()["id"]
    # 96% sent, 1% failed, 2% skipped (two reasons), 1% unknown
    conn.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, status, skip_reason, ses_message_id, sent_at, error)
           SELECT %(id)s, 'user' || g || '@example.org', s.status,
                  CASE WHEN s.status = 'skipped' THEN (ARRAY['suppressed:hard_bounce', 'invalid_address'])[1 + g %% 2]
                  END,
                  CASE WHEN s.status = 'sent' THEN 'msg-' || g END,
                  CASE WHEN s.status = 'sent' THEN now() - interval '10 days' + (g %% 7200) * interval '1 second'
                  END,
                  CASE WHEN s.status = 'failed' THEN 'MessageRejected' END
             FROM generate_series(1, %(n)s) AS g,
                  LATERAL (SELECT CASE WHEN g %% 100 = 0 THEN 'failed' WHEN g %% 100 IN (1, 2) THEN 'skipped'
                                       WHEN g %% 100 = 3 THEN 'unknown' ELSE 'sent' END AS status) AS s""",
        {"id": campaign_id, "n": recipients})
    first_id = conn.execute("SELECT min(id) AS id FROM campaign_recipients WHERE campaign_id = %s",
                            [campaign_id]).fetchone()["id"]
    conn.execute("""INSERT INTO campaign_links (campaign_id, link_id, url)
                    SELECT %s, g, 'https://example.com/article-' || g FROM generate_series(0, 4) AS g""",
                 [campaign_id])
    # Events: opens 70%, clicks 15%, deliveries 13%, bounces 1%, complaints 0.1%, unsubscribes 0.9%; time spread
    # over 10 days with most activity early; 20% of opens and clicks machine-made.
    conn.execute(
        """INSERT INTO email_events (campaign_id, recipient_id, type, subtype, link_id, is_machine, occurred_at)
           SELECT %(id)s, %(first)s + (g * 7919) %% %(n)s, e.type,
                  CASE WHEN e.type = 'bounce' THEN (ARRAY['Permanent', 'Transient'])[1 + g %% 2] END,
                  CASE WHEN e.type = 'click' THEN g %% 5 END,
                  e.type IN ('open', 'click') AND g %% 5 = 0,
                  now() - interval '10 days' + (power((g %% 10007) / 10007.0, 3) * 864000) * interval '1 second'
             FROM generate_series(1, %(events)s::bigint) AS g,
                  LATERAL (SELECT CASE WHEN g %% 1000 < 700 THEN 'open' WHEN g %% 1000 < 850 THEN 'click'
                                       WHEN g %% 1000 < 980 THEN 'delivery' WHEN g %% 1000 < 990 THEN 'bounce'
                                       WHEN g %% 1000 < 991 THEN 'complaint' ELSE 'unsubscribe' END AS type) AS e""",
        {"id": campaign_id, "first": first_id, "n": recipients, "events": events})
    conn.execute(
        """INSERT INTO campaigns (key, name, subject, from_email, html, audience, status)
           SELECT 'small-' || g, 'Small campaign ' || g, 's', 'news@example.com', '<p>x</p>', '{}',
                  (ARRAY['sent', 'draft', 'scheduled', 'cancelled'])[1 + g % 4]
             FROM generate_series(1, 200) AS g""")
    conn.execute("ANALYZE")
    return campaign_id


def measure(client, path: str, requests: int) -> tuple[list[float], list[float]]:
    server, wall = [], []
    for _ in range(3):  # warm-up: first-use imports, template compilation, connection caches
        client.get(path)
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        wall.append(1000 * (time.perf_counter() - started))
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        server.append(float(response.headers["Server-Timing"].split("dur=")[1]))
    return server, wall


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered):6.1f} ms  p95 {p95:6.1f} ms  max {ordered[-1]:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()

    prepare(SETTINGS)  # the test AIRFLOW_HOME's metadata DB, which the auth checks read
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from campaigns_view.app import create_app
    from fastapi.testclient import TestClient

    token = init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bench", role="viewer"))
    with scratch_database(SETTINGS, "bench_view") as dsn:
        with db.connect(dsn, autocommit=True) as conn:
            started = time.perf_counter()
            campaign_id = seed(conn, args.recipients, args.events)
            print(f"seeded {args.recipients:,} ledger rows and {args.events:,} events in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            started = time.perf_counter()
            rollup = stats.refresh(conn)
            print(f"stats rollup (first run, all events): {time.perf_counter() - started:.1f} s, "
                  f"{rollup['events']:,} events", flush=True)
            counted = stats.campaign_stats(conn, campaign_id)
            print(f"campaign: {counted['recipients']:,} recipients, {counted['sent']:,} sent, "
                  f"{counted['opens']:,} opens, {counted['unique_opens']:,} unique opens, "
                  f"{len(stats.campaign_series(conn, campaign_id))} series buckets", flush=True)
        with TestClient(create_app(dsn)) as client:
            client.cookies.set(COOKIE_NAME_JWT_TOKEN, token)
            results = {}
            for label, path in (("campaign page", f"/{campaign_id}"), ("list page", "/"),
                                ("stats CSV", f"/{campaign_id}/stats.csv")):
                server, wall = measure(client, path, args.requests)
                results[label] = statistics.median(server)
                print(f"{label:<14} server {summary(server)}   round trip {summary(wall)}", flush=True)
    verdict = "OK" if results["campaign page"] <= TARGET_MS else "OVER TARGET"
    print(f"campaign page server time (median of {args.requests}): {results['campaign page']:.1f} ms; "
          f"target <= {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
