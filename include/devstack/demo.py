"""`make demo`: on the running local stack, import a sample contact list and send a sample campaign, both through
Airflow's REST API (the same calls a user's scripts make), then say where to look."""

from __future__ import annotations

import csv
import json
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from devstack.settings import SETTINGS, StackSettings

COUNTRIES = ["DE", "AT", "CH", "FR", "NL"]
FIRST_NAMES = ["Ana", "Ben", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas"]


class Api:
    """A minimal client for Airflow's REST API v2 with a token from POST /auth/token."""

    def __init__(self, s: StackSettings) -> None:
        self.base = s.airflow_url
        password = (s.state_dir / "secrets" / "airflow-admin-password").read_text().strip()
        self.token = self._call("POST", "/auth/token", {"username": "admin", "password": password},
                                auth=False)["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True) -> dict:
        request = urllib.request.Request(self.base + path, method=method,  # noqa: S310 - the local stack's URL
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._call("GET", f"/api/v2/dags/{dag_id}").get("is_paused", True):
                    return
            except SystemExit:
                pass  # not parsed yet
            time.sleep(2)
        raise SystemExit(f"DAG {dag_id} did not appear unpaused within {timeout:.0f} s (see .local/log/)")

    def trigger(self, dag_id: str, conf: dict) -> str:
        """POST /api/v2/dags/{dag_id}/dagRuns with `conf`; returns the run id."""
        run = self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        print(f"  triggered {dag_id} run {run['dag_run_id']}", flush=True)
        return run["dag_run_id"]

    def state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        """Poll the run until it succeeded or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(dag_id, run_id)
            if state in ("success", "failed"):
                print(f"  {dag_id}: {state}", flush=True)
                return {"run_id": run_id, "state": state}
            time.sleep(1)
        raise SystemExit(f"{dag_id} run {run_id} did not finish within {timeout:.0f} s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """The run's task instances (mapped ones one per map index), with their states and ids."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances?limit=1000"
        return self._call("GET", path)["task_instances"]

    def run(self, dag_id: str, conf: dict, timeout: float = 600) -> dict:
        """Trigger a run with `conf` and wait for it to finish."""
        return self.wait(dag_id, self.trigger(dag_id, conf), timeout)


def sample_contacts(path: Path, count: int = 200) -> Path:
    """A CSV like a user's export: a few bad rows on purpose, so the import report has something to show."""
    rng = random.Random(42)  # noqa: S311 - sample data
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "last_name", "country", "plan"])
        for i in range(count):
            writer.writerow([f"reader{i}@example.org", rng.choice(FIRST_NAMES), f"Reader{i}",
                             rng.choice(COUNTRIES), rng.choice(["free", "pro"])])
        writer.writerow(["not-an-address", "Bad", "Row", "DE", "free"])
        writer.writerow(["READER1@example.org", "Dup", "Licate", "DE", "free"])
    return path


DEMO_CAMPAIGN = {
    "key": "demo-welcome",
    "name": "Demo: welcome",
    "subject": "Welcome, {{ first_name | default('friend') }}!",
    "from_email": "news@example.com",
    "from_name": "Example News",
    "html": (
        "<html><body><h1>Hello {{ first_name | default('friend') }}</h1>"
        "<p>Thanks for reading us from {{ country }}.</p>"
        "<p><a href=\"https://example.com/welcome\">Read the welcome guide</a></p>"
        "</body></html>"
    ),
    "audience": {"lists": ["demo"], "where": {"country": ["DE", "AT", "CH"]}},
}


def main() -> None:
    s = SETTINGS
    api = Api(s)
    csv_path = sample_contacts(s.state_dir / "demo" / "contacts.csv")
    for dag_id in ("import_contacts", "send_campaign"):
        api.wait_for_dag(dag_id)
    print("importing sample contacts ...", flush=True)
    imported = api.run("import_contacts", {"path": str(csv_path), "list": "demo"})
    print("sending the demo campaign ...", flush=True)
    sent = api.run("send_campaign", {"campaign": DEMO_CAMPAIGN, "batch_size": 25})
    print(
        "\nWhere to look:\n"  # noqa: S608 - printed advice, not a query
        f"  Airflow UI   {s.airflow_url}/dags/send_campaign/runs/{sent['run_id']}\n"
        f"  Local SES    {s.ses_endpoint}/moto-api/data.json   (every message the campaign sent)\n"
        f"  Ledger       psql {s.pg_dsn()} -c \"SELECT status, skip_reason, count(*) FROM campaign_recipients "
        "GROUP BY 1, 2\"\n"
        f"  Summary      psql {s.pg_dsn()} -c \"SELECT key, status, summary FROM campaigns\"\n",
        flush=True,
    )
    if imported["state"] != "success" or sent["state"] != "success":
        sys.exit(1)


if __name__ == "__main__":
    main()
