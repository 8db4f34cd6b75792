"""`make demo`: on the running local stack, the whole loop a campaign goes through, and its funnel at the end.

1. import a sample contact list (a few bad rows on purpose, and the SES mailbox simulator's addresses) and send a
   sample campaign, both through Airflow's REST API (the same calls a user's scripts make);
2. the local SES publishes what real SES would for each message (deliveries, a hard bounce, an auto-reply, a
   complaint, an address on the account's suppression list) as signed SNS notifications to the tracking service;
3. "simulated readers" open and click a share of the messages through the real tracking service over https (a few
   as a privacy proxy or a link scanner would, which the stats count apart), and one reader unsubscribes by the
   RFC 8058 one-click POST;
4. the stats are refreshed (refresh_campaign_stats) and the funnel is read back from the database, next to the
   Campaigns view's URL for the campaign.
"""

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

SIMULATOR = "simulator.amazonses.com"
SIMULATED = ("success", "bounce", "ooto", "complaint", "suppressionlist")
FUNNEL = ("recipients", "sent", "delivered", "bounced", "complained", "unique_opens", "unique_human_opens",
          "unique_clicks", "unique_human_clicks", "unsubscribes")
READER_AGENT = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"
PROXY_AGENT = "Mozilla/5.0"  # what Apple's Mail Privacy Protection prefetcher sends: counted as a machine open
SCANNER_AGENT = "Mozilla/5.0 (compatible; Proofpoint URL Defense scanner)"  # a security gateway checking links

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


def sample_contacts(path: Path, count: int = 200, stamp: str = "demo") -> Path:
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
        for kind in SIMULATED:  # labelled per run: each demo gets its own bounce and complaint
            writer.writerow([f"{kind}+{stamp}@{SIMULATOR}", kind.title(), "Simulator", "DE", "free"])
    return path


DEMO_CAMPAIGN = {
    "key": "demo-welcome",  # main() adds the run's time: every demo sends a campaign of its own
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


class Readers:
    """People (and machines) reading the demo's messages: GETs of the pixel and the links, one one-click POST."""

    def __init__(self, s: StackSettings) -> None:
        import ssl

        # trust exactly the stack's own tracking certificate, as the tests do
        self.tls = ssl.create_default_context(cafile=str(s.state_dir / "tls" / "tracking.crt"))
        self.counts: dict[str, int] = {"opened": 0, "clicked": 0, "proxy opens": 0, "scanner clicks": 0,
                                       "unsubscribed": 0}

    def _request(self, url: str, *, agent: str, method: str = "GET", body: bytes | None = None) -> int:
        request = urllib.request.Request(url, data=body, method=method,  # noqa: S310 - the stack's https URLs
                                         headers={"User-Agent": agent,
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.tls), _NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:  # the click's 302 arrives here, not followed
            return exc.code

    def read(self, messages: list[bytes], rng: random.Random) -> None:
        """Open about half the messages, click in a third of those; a few proxies, scanners and one unsubscribe."""
        import email
        import email.policy
        import re

        for i, raw in enumerate(messages):
            message = email.message_from_bytes(raw, policy=email.policy.default)
            html = message.get_body(("html",)).get_content()
            pixel = re.search(r'<img[^>]+src="(https://[^"]+/o/[^"]+\.gif)"', html)
            link = re.search(r'href="(https://[^"]+/c/[^"]+)"', html)
            if i % 10 == 3 and pixel:
                self._request(pixel.group(1), agent=PROXY_AGENT)
                self.counts["proxy opens"] += 1
            if i % 10 == 7 and link:
                self._request(link.group(1), agent=SCANNER_AGENT)
                self.counts["scanner clicks"] += 1
            if rng.random() < 0.5 and pixel:
                self._request(pixel.group(1), agent=READER_AGENT)
                self.counts["opened"] += 1
                if rng.random() < 0.35 and link:
                    self._request(link.group(1), agent=READER_AGENT)
                    self.counts["clicked"] += 1
        unsubscribe = str(email.message_from_bytes(messages[0], policy=email.policy.default)["List-Unsubscribe"])
        status = self._request(unsubscribe.strip("<>"), agent=READER_AGENT, method="POST",
                               body=b"List-Unsubscribe=One-Click")
        if status == 200:
            self.counts["unsubscribed"] += 1


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a reader's client follows the click's 302 to the shop, which is not part of the demo


def _local_ses(s: StackSettings, path: str) -> bytes:
    with urllib.request.urlopen(f"{s.ses_endpoint}{path}", timeout=60) as response:  # noqa: S310 - the local SES
        return response.read()


def campaign_messages(s: StackSettings, campaign_id: int) -> list[bytes]:
    """The raw messages of one campaign that the local SES accepted (by the campaign tag the sender sets)."""
    listed = json.loads(_local_ses(s, "/local-ses/messages"))["messages"]
    return [_local_ses(s, f"/local-ses/messages/{urllib.parse.quote(m['message_id'])}/raw") for m in listed
            if m["tags"].get("campaign") == str(campaign_id)]


def funnel(s: StackSettings, campaign_id: int) -> dict[str, int]:
    """The campaign's funnel as the Campaigns view shows it: the stats rollups, read from the database."""
    import psycopg

    from campaigns.lifecycle.stats import campaign_stats

    with psycopg.connect(s.pg_dsn(), autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        stats = campaign_stats(conn, campaign_id)
    return {name: stats[name] for name in FUNNEL}


def wait_for(check, what: str, timeout: float = 120) -> None:
    """Poll `check` until it is true (a condition with a deadline, not a sleep)."""
    from devstack.processes import poll

    poll(check, what=what, timeout=timeout, interval=1)


def main() -> None:
    import psycopg

    s = SETTINGS
    api = Api(s)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    csv_path = sample_contacts(s.state_dir / "demo" / "contacts.csv", stamp=stamp)
    for dag_id in ("import_contacts", "send_campaign", "refresh_campaign_stats"):
        api.wait_for_dag(dag_id)
    print("importing sample contacts ...", flush=True)
    imported = api.run("import_contacts", {"path": str(csv_path), "list": "demo"})
    print("sending the demo campaign ...", flush=True)
    campaign = {**DEMO_CAMPAIGN, "key": f"demo-welcome-{stamp}"}
    sent = api.run("send_campaign", {"campaign": campaign, "batch_size": 25})
    if imported["state"] != "success" or sent["state"] != "success":
        sys.exit(f"the demo's DAG runs did not succeed (import {imported['state']}, send {sent['state']}): see "
                 f"{s.airflow_url}")
    with psycopg.connect(s.pg_dsn(), autocommit=True) as conn:
        campaign_id = conn.execute("SELECT id FROM campaigns WHERE key = %s", [campaign["key"]]).fetchone()[0]

        def feedback() -> bool:  # the simulator's bounce and complaint came back through SNS
            return conn.execute("SELECT count(DISTINCT type) FROM email_events WHERE campaign_id = %s "
                                "AND type IN ('bounce', 'complaint')", [campaign_id]).fetchone()[0] == 2

        print("waiting for SES's deliveries, bounces and complaints (signed SNS notifications) ...", flush=True)
        wait_for(feedback, "the simulator's bounce and complaint in email_events")
        # People read a little later than link scanners check: a click within SCANNER_SECONDS of the send is
        # counted as a machine's (tracking_service.drainer), so the readers wait until the campaign is that old.
        from tracking_service.drainer import SCANNER_SECONDS

        wait_for(lambda: conn.execute("SELECT now() - max(sent_at) > make_interval(secs => %s) FROM "
                                      "campaign_recipients WHERE campaign_id = %s",
                                      [SCANNER_SECONDS, campaign_id]).fetchone()[0],
                 f"the campaign's last send to be {SCANNER_SECONDS:.0f} s old")
        print("simulated readers ...", flush=True)
        readers = Readers(s)
        readers.read(campaign_messages(s, campaign_id), random.Random(7))  # noqa: S311 - sample behaviour
        print("  " + ", ".join(f"{n} {what}" for what, n in readers.counts.items()), flush=True)

        def drained() -> bool:  # the tracking service spools opens and clicks, its drainers store them
            return conn.execute("SELECT count(*) FROM email_events WHERE campaign_id = %s AND type IN "
                                "('open', 'click')", [campaign_id]).fetchone()[0] >= \
                readers.counts["opened"] + readers.counts["clicked"]

        wait_for(drained, "the readers' opens and clicks in email_events")
    print("refreshing the stats ...", flush=True)
    api.run("refresh_campaign_stats", {})
    numbers = funnel(s, campaign_id)
    width = max(len(name) for name in numbers)
    ledger = f"SELECT status, skip_reason, count(*) FROM campaign_recipients WHERE campaign_id = {campaign_id}"  # noqa: S608 - printed advice, not a query
    print(
        f"\nThe demo campaign {campaign['key']!r}, as the Campaigns view shows it:\n"
        f"  {s.airflow_url}/plugin/campaigns/campaigns/{campaign_id}   (login: admin, password in "
        f"{s.state_dir / 'secrets' / 'airflow-admin-password'})\n\n"
        "Its funnel, read back from the database:\n"
        + "".join(f"  {name:<{width}}  {value:>5}\n" for name, value in numbers.items())
        + "\nWhere else to look:\n"
        f"  Local inbox  {s.ses_endpoint}/inbox   (every message the local SES accepted, rendered)\n"
        f"  Airflow UI   {s.airflow_url}/dags/send_campaign/runs/{sent['run_id']}\n"
        f"  Ledger       psql {s.pg_dsn()} -c \"{ledger} GROUP BY 1, 2\"\n",
        flush=True,
    )
    missing = [name for name in ("delivered", "bounced", "complained", "unique_opens", "unique_human_opens",
                                 "unique_clicks", "unique_human_clicks", "unsubscribes") if not numbers[name]]
    if missing:
        sys.exit(f"the demo's funnel has no {', '.join(missing)}: see {s.log_dir} (ses.log, tracking.log)")


if __name__ == "__main__":
    main()
