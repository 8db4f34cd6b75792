"""What the fault scripts share: the running local stack, seeded lists, triggering runs, counting what SES got.

Each fault script drives the stack the way a user does (Airflow's REST API), injects one fault from outside the
code under test (a signal, a stopped server, a proxy in front of the local SES), then prints the figures and a
verdict line `PASS` / `FAIL` and exits 0 / 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "include")]

from devstack import stack as devstack  # noqa: E402
from devstack.demo import Api  # noqa: E402
from devstack.processes import poll  # noqa: E402
from devstack.settings import SETTINGS  # noqa: E402


def ensure_stack() -> Api:
    """The local stack's REST API; `make up` first when it is not running."""
    if not devstack.apps_running(SETTINGS):
        subprocess.run([sys.executable, "-m", "devstack", "up"], check=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'include'}"})
    api = Api(SETTINGS)
    for dag_id in ("send_campaign",):
        api.wait_for_dag(dag_id)
    return api


def connect() -> psycopg.Connection:
    return psycopg.connect(SETTINGS.pg_dsn(), autocommit=True, row_factory=dict_row)


def seed_list(recipients: int, tag: str | None = None) -> tuple[str, str]:
    """A fresh list of `recipients` contacts with unique addresses; returns (list name, address prefix)."""
    tag = tag or uuid.uuid4().hex[:8]
    name, prefix = f"fault-{tag}", f"fault-{tag}-"
    with connect() as conn:
        list_id = conn.execute("INSERT INTO lists (name) VALUES (%s) RETURNING id", [name]).fetchone()["id"]
        conn.execute(
            """WITH c AS (
                   INSERT INTO contacts (email, first_name, attributes)
                   SELECT %(prefix)s || g || '@example.org', 'Reader' || g, '{}'::jsonb
                     FROM generate_series(1, %(n)s) AS g
                   RETURNING id)
               INSERT INTO list_members (list_id, contact_id) SELECT %(list_id)s, id FROM c""",
            {"prefix": prefix, "n": recipients, "list_id": list_id})
    return name, prefix


def campaign_conf(key: str, list_name: str, batch_size: int = 100) -> dict:
    return {"campaign": {
        "key": key, "name": key, "subject": "Fault test {{ first_name }}", "from_email": "news@example.com",
        "html": "<p>Hello {{ first_name }}</p><p><a href=\"https://example.com/x\">x</a></p>",
        "audience": {"lists": [list_name]}}, "batch_size": batch_size}


def campaign(key: str) -> dict | None:
    with connect() as conn:
        return conn.execute("SELECT id, status, status_reason, summary FROM campaigns WHERE key = %s",
                            [key]).fetchone()


def ledger_counts(campaign_id: int) -> Counter:
    with connect() as conn:
        rows = conn.execute("SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s "
                            "GROUP BY status", [campaign_id]).fetchall()
    return Counter({r["status"]: r["n"] for r in rows})


def local_ses_messages_to(prefix: str) -> Counter:
    """How many messages the local SES accepted per address starting with `prefix` (one per message)."""
    counts: Counter = Counter()
    for message in devstack.local_ses_messages(SETTINGS):
        # moto lists a raw message's recipient twice: count the message, once, by its first destination
        destination = message["destinations"][0] if message.get("destinations") else ""
        if isinstance(destination, str) and destination.startswith(prefix):
            counts[destination] += 1
    return counts


def start_campaign(api: Api, recipients: int, suffix: str, *, min_sent: int = 0) -> tuple[str, str, str, dict]:
    """Seed a fresh list, trigger send_campaign for it through the REST API and wait until `min_sent` rows are sent;
    returns (campaign key, address prefix, run id, campaign row)."""
    list_name, prefix = seed_list(recipients)
    key = f"{list_name}-{suffix}"
    run_id = api.trigger("send_campaign", campaign_conf(key, list_name, batch_size=100))
    row = poll(lambda: campaign(key), what="the campaign row", timeout=300)
    if min_sent:
        poll(lambda: ledger_counts(row["id"])["sent"] >= min_sent, what=f"{min_sent} sends", timeout=300)
    return key, prefix, run_id, row


def send_batch_tries(api: Api, run_id: str) -> int:
    """The most tries any send_batch task of the run needed (1: nothing was retried)."""
    return max(ti["try_number"] for ti in api.task_instances("send_campaign", run_id) if ti["task_id"] == "send_batch")


def verdict(checks: dict[str, bool]) -> int:
    """Print every check and the verdict; the exit code for the script."""
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    passed = all(checks.values())
    print("PASS" if passed else "FAIL", flush=True)
    return 0 if passed else 1
