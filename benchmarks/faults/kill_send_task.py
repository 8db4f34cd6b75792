"""Fault 1: `kill -9` a running send_batch task process mid-batch; Airflow retries the task.

    .venv/bin/python benchmarks/faults/kill_send_task.py [--recipients 3000]

Expected: the run succeeds after the retry; 0 duplicates in the local SES; every ledger row terminal; `unknown`
rows at most the task's in-flight sends (its thread count); then signed SES Send events, built from the messages
the local SES accepted (moto publishes no events), settle every `unknown` row whose message was accepted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import ssl
import sys
import time

import common

from campaigns.sending.ratelimit import default_thread_count
from devstack import stack as devstack
from devstack.processes import task_process
from tests.e2e.helpers import post_ses_event


def send_event(message_id: str, address: str, campaign_id: int, recipient_id: int) -> dict:
    """The SES Send event of a message the local SES accepted, with the tags the send path set on it."""
    return {"eventType": "Send", "send": {}, "mail": {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(), "source": "news@example.com", "messageId": message_id,
        "destination": [address], "tags": {"campaign": [str(campaign_id)], "recipient": [str(recipient_id)]}}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=3000)
    args = parser.parse_args()

    api = common.ensure_stack()
    _, prefix, run_id, campaign = common.start_campaign(api, args.recipients, "kill", min_sent=300)

    running = [ti for ti in api.task_instances("send_campaign", run_id)
               if ti["task_id"] == "send_batch" and ti["state"] == "running"]
    victim = next((p for p in (task_process(ti["id"]) for ti in running) if p is not None), None)
    if victim is None:
        print("FAIL: no running send_batch task process found")
        return 1
    # strike while sends are in flight (rows `sending`), so the retry has unknown rows to deal with
    with common.connect() as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not conn.execute(
                "SELECT 1 FROM campaign_recipients WHERE campaign_id = %s AND status = 'sending' LIMIT 1",
                [campaign["id"]]).fetchone():
            pass
        os.kill(victim.pid, signal.SIGKILL)
    before = common.ledger_counts(campaign["id"])
    killed_at = time.monotonic()
    print(f"killed send_batch task process {victim.pid} (SIGKILL); just after: {before['sent']} sent, "
          f"{before['sending']} sending", flush=True)

    finished = api.wait("send_campaign", run_id, timeout=900)
    elapsed = time.monotonic() - killed_at
    counts = common.ledger_counts(campaign["id"])
    messages = common.local_ses_messages_to(prefix)
    duplicates = sum(n - 1 for n in messages.values() if n > 1)
    rate = float(os.environ.get("STACK_SES_RATE", common.SETTINGS.ses_rate))
    in_flight = default_thread_count(rate)
    tries = common.send_batch_tries(api, run_id)
    print(f"run {finished['state']} {elapsed:.0f} s after the kill; send_batch tries: {tries}")
    print(f"ledger: {dict(counts)}; local SES: {sum(messages.values())} messages to {len(messages)} addresses, "
          f"{duplicates} duplicates; in-flight bound (threads) {in_flight}")

    # settle the unknown rows the way production does: SES Send events through the signed webhook
    with common.connect() as conn:
        unknown = conn.execute("SELECT id, email FROM campaign_recipients WHERE campaign_id = %s AND status = "
                               "'unknown'", [campaign["id"]]).fetchall()
    accepted = {m["destinations"][0]: m["id"] for m in devstack.local_ses_messages(common.SETTINGS)
                if m["destinations"]}
    tls = ssl.create_default_context(cafile=str(common.SETTINGS.state_dir / "tls" / "tracking.crt"))
    posted = 0
    for row in unknown:
        if row["email"] in accepted:
            status, body = post_ses_event(send_event(accepted[row["email"]], row["email"], campaign["id"],
                                                     row["id"]), tls)
            assert status == 200, body
            posted += 1
    after = common.ledger_counts(campaign["id"])
    not_accepted = len(unknown) - posted
    print(f"unknown rows: {len(unknown)} ({posted} accepted by SES -> Send events posted, {not_accepted} never "
          f"reached SES); ledger after the events: {dict(after)}")
    return common.verdict({
        "the task was retried and the run succeeded": finished["state"] == "success" and tries >= 2,
        "0 duplicates in the local SES": duplicates == 0,
        "every ledger row terminal": after["pending"] == 0 and after["sending"] == 0,
        f"unknown ({len(unknown)}) <= in-flight sends ({in_flight})": len(unknown) <= in_flight,
        "every recipient got at most one message and every sent row has one":
            all(n == 1 for n in messages.values()) and counts["sent"] + posted == len(messages),
        "Send events settled every unknown row SES accepted": after["unknown"] == not_accepted,
    })



if __name__ == "__main__":
    sys.exit(main())
