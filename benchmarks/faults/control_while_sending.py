"""Fault 5: pause and cancel issued through the REST API (campaign_control) while 4 send tasks are running.

    .venv/bin/python benchmarks/faults/control_while_sending.py [--recipients 30000]

A campaign big enough for four parallel send tasks (SEND_TASK_PARALLELISM=4, the `ses` pool's 4 slots) is started;
once all four are running, `campaign_control` is triggered through POST /api/v2/dags/campaign_control/dagRuns.
Start the stack with that setting (`SEND_TASK_PARALLELISM=4 make up`): at the stack's R = 100/s the plan would
otherwise run one task, the fewest that hold R.
Expected, for pause and for cancel: the last sent_at is at most 5 s after the action's requested_at (the time the
control task applied it), the send run ends cleanly, the campaign ends paused (pending rows kept) / cancelled (no
pending rows left), and the local SES holds exactly one message per sent row.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import common


def exercise(api, action: str, recipients: int) -> dict[str, bool]:
    key, prefix, run_id, campaign = common.start_campaign(api, recipients, action)

    def four_running():
        running = [ti for ti in api.task_instances("send_campaign", run_id)
                   if ti["task_id"] == "send_batch" and ti["state"] == "running"]
        return len(running) >= 4 and common.ledger_counts(campaign["id"])["sent"] >= 200

    common.poll(four_running, what="four running send tasks", timeout=300, interval=0.5)
    asked = datetime.now(UTC)
    api.trigger("campaign_control", {"campaign_id": campaign["id"], "action": action})
    finished = api.wait("send_campaign", run_id, timeout=600)
    with common.connect() as conn:
        requested_at = conn.execute(
            "SELECT requested_at FROM campaign_actions WHERE campaign_id = %s AND action = %s "
            "ORDER BY id DESC LIMIT 1", [campaign["id"], action]).fetchone()["requested_at"]
        last_sent = conn.execute("SELECT max(sent_at) AS t FROM campaign_recipients WHERE campaign_id = %s",
                                 [campaign["id"]]).fetchone()["t"]
    counts = common.ledger_counts(campaign["id"])
    final = common.campaign(key)
    messages = common.local_ses_messages_to(prefix)
    stopped_after = (last_sent - requested_at).total_seconds()
    print(f"{action}: REST call -> applied by the control task {(requested_at - asked).total_seconds():.1f} s; "
          f"last send {stopped_after:+.2f} s after it; run {finished['state']}; campaign {final['status']}; "
          f"ledger {dict(counts)}; local SES {sum(messages.values())} messages", flush=True)
    expected_status = "paused" if action == "pause" else "cancelled"
    checks = {
        f"{action}: sending stopped within 5 s of the request ({stopped_after:.2f} s)": stopped_after <= 5,
        f"{action}: the send run ended cleanly": finished["state"] == "success",
        f"{action}: the campaign is {expected_status}": final["status"] == expected_status,
        f"{action}: one message per sent row, no duplicates": sum(messages.values()) == counts["sent"]
                                                                  and all(n == 1 for n in messages.values()),
    }
    if action == "pause":
        checks["pause: pending rows kept for a resume"] = counts["pending"] > 0 and counts["sending"] == 0
    else:
        checks["cancel: no pending row left"] = counts["pending"] == 0 and counts["sending"] == 0
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=30_000)
    args = parser.parse_args()
    api = common.ensure_stack()
    api.wait_for_dag("campaign_control")
    checks: dict[str, bool] = {}
    for action in ("pause", "cancel"):
        checks.update(exercise(api, action, args.recipients))
        time.sleep(1)
    return common.verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
