"""Faults 3 and 4: Redis stopped for 30 s mid-campaign; PostgreSQL restarted mid-campaign.

    .venv/bin/python benchmarks/faults/outage.py --service redis [--down 30] [--recipients 6000]
    .venv/bin/python benchmarks/faults/outage.py --service postgres [--down 0]

Redis: no message may be sent while it is down (no slot, no send: the limiter fails closed), and the campaign
completes afterwards. PostgreSQL (the campaign database AND Airflow's metadata database here): the campaign
completes with 0 duplicates. Sent timestamps come from the ledger; the outage window from this script's clock,
which is the same machine clock PostgreSQL uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sys
import time

import common

from devstack import services


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", choices=("redis", "postgres"), required=True)
    parser.add_argument("--down", type=float, default=None, help="seconds the service stays down "
                        "(default: 30 for redis, 0 = a restart, for postgres)")
    parser.add_argument("--recipients", type=int, default=6000)
    args = parser.parse_args()
    down_for = args.down if args.down is not None else (30.0 if args.service == "redis" else 0.0)
    s = common.SETTINGS
    api = common.ensure_stack()
    key, prefix, run_id, campaign = common.start_campaign(api, args.recipients, args.service, min_sent=500)

    stop, start = ((services.stop_redis, services.start_redis) if args.service == "redis"
                   else (services.stop_postgres, services.start_postgres))
    went_down = dt.datetime.now(dt.UTC)
    stop(s)
    stopped = dt.datetime.now(dt.UTC)
    port = s.redis_port if args.service == "redis" else s.pg_port
    # the outage itself; anything that answers on the port meanwhile (another process restarting the service)
    # makes this run meaningless, so it is watched, not assumed
    until = time.monotonic() + down_for
    while time.monotonic() < until:
        if _answers(port):
            print(f"INVALID RUN: something restarted {args.service} during the outage; run again on a quiet stack")
            return 2
        time.sleep(0.2)
    start(s)
    came_back = dt.datetime.now(dt.UTC)
    print(f"{args.service} down from {went_down:%H:%M:%S.%f} (stopped {stopped:%H:%M:%S.%f}) "
          f"to {came_back:%H:%M:%S.%f}", flush=True)

    finished = api.wait("send_campaign", run_id, timeout=1200)
    counts = common.ledger_counts(campaign["id"])
    messages = common.local_ses_messages_to(prefix)
    duplicates = sum(n - 1 for n in messages.values() if n > 1)
    with common.connect() as conn:
        during = conn.execute(
            "SELECT count(*) AS n, min(sent_at) AS first, max(sent_at) AS last FROM campaign_recipients "
            "WHERE campaign_id = %s AND sent_at > %s AND sent_at < %s",
            [campaign["id"], stopped, came_back]).fetchone()
    tries = common.send_batch_tries(api, run_id)
    final = common.campaign(key)
    print(f"run {finished['state']}; campaign {final['status']}; send_batch tries {tries}; ledger {dict(counts)}; "
          f"local SES {sum(messages.values())} messages to {len(messages)} addresses, {duplicates} duplicates")
    checks = {
        "the run succeeded and the campaign is sent": finished["state"] == "success" and final["status"] == "sent",
        "0 duplicates": duplicates == 0,
        "every recipient got one message": len(messages) == args.recipients,
    }
    if args.service == "redis":
        print(f"sends recorded while Redis was down: {during['n']} (first {during['first']}, last {during['last']})")
        checks["no message sent while Redis was down"] = during["n"] == 0
    return common.verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
