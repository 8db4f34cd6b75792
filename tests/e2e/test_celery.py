"""A campaign on the CeleryExecutor across two workers, one of them SIGKILLed mid-campaign.

5,000 recipients at R = 100/s in 10 send tasks (batch size 500, pool `ses` of 4 slots, so they spread over both
workers) on the `celery` stack instance. From Airflow's task instances (the metadata database, every try): send
tasks ran on both workers' hostnames. From the local SES's receive times (the kernel's stamp of each request's
arrival): no 1-second window holds more than R + burst sends, two workers or not. Once half the campaign is sent,
one worker and its task processes are SIGKILLed (as when its machine dies) while a send of its task is in flight;
the scheduler notices through the task heartbeat timeout and the lost task's retry runs on the other worker within
that timeout + 30 s of the kill. The run succeeds, nobody gets the campaign twice, every ledger row is terminal and
`unknown` stays within the killed tasks' in-flight sends.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
import uuid
from bisect import bisect_left
from collections import Counter

import pytest

from campaigns.sending.ratelimit import default_thread_count
from devstack import stack as devstack
from devstack.demo import Api
from devstack.processes import kill_tree, poll
from tests.e2e.helpers import connect, import_list

RECIPIENTS = 5000
BATCH_SIZE = 500
BURST = 1  # SES_RATE_BURST: the stack leaves it at its default
SLACK_AFTER_TIMEOUT = 30.0  # seconds the retry may take to start once the heartbeat timeout has passed
pytestmark = pytest.mark.timeout(1200)


def _ledger_counts(campaign_db, key: str) -> Counter:
    rows = campaign_db.execute("""SELECT r.status, count(*) AS n FROM campaign_recipients r
                                    JOIN campaigns c ON c.id = r.campaign_id
                                   WHERE c.key = %s GROUP BY r.status""", [key]).fetchall()
    return Counter({r["status"]: r["n"] for r in rows})


def _send_tries(airflow_db, run_id: str) -> list[dict]:
    """Every try of every send_batch task instance of the run: map index, try number, hostname, state, start."""
    return airflow_db.execute(
        """SELECT map_index, try_number, hostname, state, start_date FROM task_instance
            WHERE dag_id = 'send_campaign' AND run_id = %(run)s AND task_id = 'send_batch'
           UNION ALL
           SELECT map_index, try_number, hostname, state, start_date FROM task_instance_history
            WHERE dag_id = 'send_campaign' AND run_id = %(run)s AND task_id = 'send_batch'
           ORDER BY map_index, try_number""", {"run": run_id}).fetchall()


def _received(stack, prefix: str) -> list[tuple[str, dt.datetime]]:
    """(recipient, receive time) of every message the local SES accepted for addresses starting with `prefix`,
    counted once per message (moto lists a raw message's recipient twice)."""
    with urllib.request.urlopen(f"{stack.ses_endpoint}/local-ses/messages", timeout=60) as response:
        messages = json.load(response)["messages"]
    return [(m["destinations"][0].lower(), dt.datetime.fromisoformat(m["received_at"])) for m in messages
            if m["destinations"] and m["destinations"][0].lower().startswith(prefix)]


def _busiest_second(times: list[dt.datetime]) -> int:
    """The most receive times in any half-open window [t, t + 1 s) (the busiest one starts at a receive time)."""
    ordered = sorted(times)
    return max((bisect_left(ordered, t + dt.timedelta(seconds=1)) - i for i, t in enumerate(ordered)), default=0)


def test_a_campaign_across_two_celery_workers_survives_one_killed_mid_send(celery_stack):
    stack = celery_stack
    api = Api(stack)
    # Airflow's metadata database: task_instance holds each task's last try, task_instance_history the earlier ones
    with connect(stack) as campaign_db, connect(stack, stack.airflow_db) as airflow_db:
        _send_with_a_worker_killed(stack, api, campaign_db, airflow_db)


def _send_with_a_worker_killed(stack, api: Api, campaign_db, airflow_db) -> None:
    workers = set(stack.celery_worker_names)
    assert len(workers) == 2
    assert devstack.celery_workers_answering(stack) == workers
    stamp = uuid.uuid4().hex[:10]
    key, prefix = f"celery-{stamp}", f"celery-{stamp}-"
    import_list(api, stack, key, [f"{prefix}{i}@example.org" for i in range(RECIPIENTS)])
    api.wait_for_dag("send_campaign")
    run_id = api.trigger("send_campaign", {"campaign": {
        "key": key, "name": f"Celery {key}", "subject": "Hello {{ first_name }}", "from_email": "news@example.com",
        "html": "<html><body><p>Hi {{ first_name }}</p></body></html>", "audience": {"lists": [key]}},
        "batch_size": BATCH_SIZE})

    # the middle of sending, from the ledger: half the campaign sent, a send of a task on a worker in flight
    poll(lambda: _ledger_counts(campaign_db, key)["sent"] >= RECIPIENTS // 2, timeout=600, interval=0.2,
         what="half the campaign sent")

    def victim_with_a_send_in_flight() -> tuple[str, list[dict]] | None:
        if not _ledger_counts(campaign_db, key)["sending"]:
            return None
        running = [t for t in _send_tries(airflow_db, run_id) if t["state"] == "running" and t["hostname"]]
        hosts = Counter(t["hostname"] for t in running)
        if not hosts:
            return None
        host = hosts.most_common(1)[0][0]
        return host, [t for t in running if t["hostname"] == host]

    victim, lost = poll(victim_with_a_send_in_flight, timeout=60, interval=0.01,
                        what="a running send task with a send in flight")
    pid = devstack.celery_worker_pid(stack, victim)
    assert pid is not None, f"no pid file for worker {victim}"
    killed = kill_tree(pid)
    killed_at = dt.datetime.now(dt.UTC)
    assert len(killed) > 1, "the worker had no task processes under it"

    final = api.wait("send_campaign", run_id, timeout=900)
    assert final["state"] == "success"

    tries = _send_tries(airflow_db, run_id)
    assert len({t["map_index"] for t in tries}) >= 4
    assert {t["hostname"] for t in tries} == workers  # send tasks ran on both workers
    survivor = (workers - {victim}).pop()
    by_try = {(t["map_index"], t["try_number"]): t for t in tries}
    for lost_try in lost:
        retry = by_try.get((lost_try["map_index"], lost_try["try_number"] + 1))
        assert retry is not None, f"send_batch[{lost_try['map_index']}] was never retried"
        assert retry["hostname"] == survivor
        assert retry["start_date"] - killed_at <= dt.timedelta(
            seconds=stack.task_heartbeat_timeout + SLACK_AFTER_TIMEOUT), (retry["start_date"], killed_at)
        last = max((t for t in tries if t["map_index"] == lost_try["map_index"]), key=lambda t: t["try_number"])
        assert last["state"] == "success"

    received = _received(stack, prefix)
    per_address = Counter(address for address, _ in received)
    assert set(per_address.values()) == {1}  # nobody got the campaign twice, the killed sends included
    busiest = _busiest_second([at for _, at in received])
    assert busiest <= stack.ses_rate + BURST  # one shared rate at SES's door, two workers or not

    # rows the killed attempt left `sending` are `unknown` to the retry; SES's Send events settle those it accepted
    poll(lambda: _ledger_counts(campaign_db, key)["sent"] == len(per_address), timeout=60, interval=0.5,
         what="one sent row per accepted message (the killed attempt's accepted sends settled by SES's events)")
    counts = _ledger_counts(campaign_db, key)
    assert counts["pending"] == counts["sending"] == 0, counts  # every row terminal
    assert counts["sent"] + counts["unknown"] == RECIPIENTS, counts
    in_flight_bound = len(lost) * default_thread_count(stack.ses_rate)
    assert counts["unknown"] <= in_flight_bound, counts
    delays = [(by_try[(t["map_index"], t["try_number"] + 1)]["start_date"] - killed_at).total_seconds() for t in lost]
    print(f"\nkilled {victim} ({len(killed)} processes, {len(lost)} send task(s)); retries on {survivor} started "
          f"{delays} s after the kill (heartbeat timeout {stack.task_heartbeat_timeout} s); ledger {dict(counts)}, "
          f"in-flight bound {in_flight_bound}; local SES {len(received)} messages to {len(per_address)} addresses; "
          f"busiest 1 s window {busiest} (R + burst = {stack.ses_rate + BURST})")
