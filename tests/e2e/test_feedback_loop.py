"""The feedback loop through its real path, on the test stack: the local SES publishes the SES events of every message
it accepted as signed SNS notifications to the tracking service, as SES and SNS do in production. Nothing here builds
an event by hand; the SES mailbox simulator's addresses decide what comes back.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from collections import Counter

import pytest

from devstack.processes import poll, task_process
from tests.e2e.helpers import import_list

SIMULATOR = "simulator.amazonses.com"
pytestmark = pytest.mark.timeout(900)


def _campaign(key: str, list_name: str) -> dict:
    return {"key": key, "name": f"Feedback {key}", "subject": "Hello {{ first_name }}",
            "from_email": "news@example.com", "html": "<html><body><p>Hi {{ first_name }}</p></body></html>",
            "audience": {"lists": [list_name]}}


def _accepted(stack) -> list[tuple[str, str]]:
    """The local SES's record: (recipient address, SES MessageId) of every message it accepted."""
    with urllib.request.urlopen(f"{stack.ses_endpoint}/local-ses/messages", timeout=30) as response:
        messages = json.load(response)["messages"]
    return [(address.lower(), m["message_id"]) for m in messages for address in m["destinations"]]


def _ledger(stack_db, key: str) -> list[dict]:
    return stack_db.execute("""SELECT r.id, r.email, r.status, r.skip_reason, r.ses_message_id
                                 FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
                                WHERE c.key = %s ORDER BY r.id""", [key]).fetchall()


def test_hard_bounces_and_complaints_are_suppressed_before_the_next_campaign(stack, api, stack_db):
    stamp = uuid.uuid4().hex[:10]
    simulator = {kind: f"{kind}+{stamp}@{SIMULATOR}"
                 for kind in ("success", "bounce", "ooto", "complaint", "suppressionlist")}
    readers = [f"fb-{stamp}-{i}@example.org" for i in range(10)]
    import_list(api, stack, f"fb-{stamp}", readers + list(simulator.values()))
    api.wait_for_dag("send_campaign")

    first = api.run("send_campaign", {"campaign": _campaign(f"fb-{stamp}-1", f"fb-{stamp}")}, timeout=600)
    assert first["state"] == "success"
    assert Counter(row["status"] for row in _ledger(stack_db, f"fb-{stamp}-1")) == {"sent": 15}

    def suppressed() -> dict[str, str]:
        return {r["email"]: r["reason"] for r in stack_db.execute(
            "SELECT email, reason FROM suppressions WHERE email = ANY(%s)", [list(simulator.values())])}

    def delivered() -> int:
        return stack_db.execute("""SELECT count(*) AS n FROM email_events e JOIN campaigns c ON c.id = e.campaign_id
                                    WHERE c.key = %s AND e.type = 'delivery'""", [f"fb-{stamp}-1"]).fetchone()["n"]

    expected = {simulator["bounce"]: "hard_bounce", simulator["suppressionlist"]: "hard_bounce",
                simulator["complaint"]: "complaint"}
    poll(lambda: suppressed() == expected and delivered() == 13, timeout=60, interval=0.5,
         what="the published bounces and complaint as suppressions, 13 deliveries as events")
    # the auto-reply is a transient bounce: recorded, not suppressed (one is below SOFT_BOUNCE_LIMIT)
    ooto = stack_db.execute("SELECT subtype FROM email_events WHERE email = %s AND type = 'bounce'",
                            [simulator["ooto"]]).fetchall()
    assert [row["subtype"] for row in ooto] == ["Transient"]

    second = api.run("send_campaign", {"campaign": _campaign(f"fb-{stamp}-2", f"fb-{stamp}")}, timeout=600)
    assert second["state"] == "success"
    rows = _ledger(stack_db, f"fb-{stamp}-2")
    assert {r["email"]: r["skip_reason"] for r in rows if r["status"] == "skipped"} == {
        address: f"suppressed:{reason}" for address, reason in expected.items()}
    assert Counter(r["status"] for r in rows) == {"sent": 12, "skipped": 3}


def test_a_complaint_rate_over_the_threshold_pauses_the_campaign_through_the_reputation_guard(stack, api, stack_db):
    stamp = uuid.uuid4().hex[:10]
    # every second recipient complains: far above REPUTATION_MAX_COMPLAINT_RATE (0.1 %) once 200 have been delivered
    addresses = [f"complaint+{stamp}-{i}@{SIMULATOR}" if i % 2 else f"rep-{stamp}-{i}@example.org"
                 for i in range(1500)]
    import_list(api, stack, f"rep-{stamp}", addresses)
    api.wait_for_dag("send_campaign")
    run_id = api.trigger("send_campaign", {"campaign": _campaign(f"rep-{stamp}", f"rep-{stamp}")})

    def status() -> str | None:
        row = stack_db.execute("SELECT status FROM campaigns WHERE key = %s", [f"rep-{stamp}"]).fetchone()
        return row and row["status"]

    poll(lambda: status() == "paused", timeout=300, interval=0.5, what="the reputation guard's pause")
    api.wait("send_campaign", run_id, timeout=600)
    action = stack_db.execute("""SELECT a.actor, a.new_status, a.reason FROM campaign_actions a
                                   JOIN campaigns c ON c.id = a.campaign_id
                                  WHERE c.key = %s AND a.new_status = 'paused'""", [f"rep-{stamp}"]).fetchone()
    assert action["actor"] == "reputation_guard"
    assert "complaint" in action["reason"]
    counts = Counter(r["status"] for r in _ledger(stack_db, f"rep-{stamp}"))
    assert counts["pending"] > 0, counts  # it stopped before the whole list was sent
    assert status() == "paused"


def test_after_kill_9_the_rows_whose_message_reached_ses_are_settled_by_its_events(stack, api, stack_db):
    stamp = uuid.uuid4().hex[:10]
    addresses = [f"kill-{stamp}-{i}@example.org" for i in range(3000)]
    import_list(api, stack, f"kill-{stamp}", addresses)
    api.wait_for_dag("send_campaign")
    key = f"kill-{stamp}"
    run_id = api.trigger("send_campaign", {"campaign": _campaign(key, f"kill-{stamp}"), "batch_size": 500})

    def sent() -> int:
        return Counter(r["status"] for r in _ledger(stack_db, key))["sent"]

    poll(lambda: sent() >= 300, timeout=300, interval=0.2, what="300 sends before the kill")
    running = [ti for ti in api.task_instances("send_campaign", run_id)
               if ti["task_id"] == "send_batch" and ti["state"] == "running"]
    victim = next((p for p in (task_process(ti["id"]) for ti in running) if p is not None), None)
    assert victim is not None, "no running send_batch task process"

    def kill_in_flight() -> bool:  # strike the moment sends are in flight, so the retry has rows to settle
        if stack_db.execute("""SELECT 1 FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
                                WHERE c.key = %s AND r.status = 'sending' LIMIT 1""", [key]).fetchone() is None:
            return False
        os.kill(victim.pid, signal.SIGKILL)
        return True

    # a claim the victim had sent may still commit after the kill: its rows count once PostgreSQL has closed the
    # victim's connections to the campaign database, which it does only after finishing what they had sent (the
    # process also holds sockets inherited from its parent, such as Airflow's own database: those stay open)
    def campaign_db_ports(ports: list[int]) -> list[int]:
        return [row["client_port"] for row in stack_db.execute(
            """SELECT client_port FROM pg_stat_activity
                WHERE datname = current_database() AND client_port = ANY(%s)""", [ports])]

    ports = campaign_db_ports([c.laddr.port for c in victim.net_connections(kind="tcp") if c.raddr])
    assert ports, "the send task holds no connection to the campaign database"
    poll(kill_in_flight, timeout=30, interval=0.01, what="a send in flight to kill")
    poll(lambda: not campaign_db_ports(ports), timeout=30, interval=0.05,
         what="PostgreSQL to close the killed task's connections")
    in_flight = {r["id"]: r["email"] for r in _ledger(stack_db, key) if r["status"] == "sending"}

    assert api.wait("send_campaign", run_id, timeout=900)["state"] == "success"
    mine = [(address, message_id) for address, message_id in _accepted(stack) if address.startswith(f"kill-{stamp}-")]
    received = Counter(address for address, _ in mine)
    assert set(received.values()) == {1}  # nobody got the campaign twice, the killed sends included
    accepted = dict(mine)

    def settled() -> bool:
        rows = {r["id"]: r for r in _ledger(stack_db, key)}
        return all(rows[i]["status"] == ("sent" if email in accepted else "unknown") for i, email in in_flight.items())

    poll(settled, timeout=60, interval=0.5, what="the killed attempt's in-flight rows settled by SES's events")
    rows = {r["id"]: r for r in _ledger(stack_db, key)}
    for row_id, email in in_flight.items():
        if email in accepted:  # SES got it: sent with the MessageId its events carry, and never sent again
            assert rows[row_id]["ses_message_id"] == accepted[email]
    assert len(received) == sum(1 for r in rows.values() if r["status"] == "sent")  # one message per sent row
    counts = Counter(r["status"] for r in rows.values())
    assert counts["pending"] == counts["sending"] == 0, counts
    assert counts["unknown"] == sum(1 for email in in_flight.values() if email not in accepted)
