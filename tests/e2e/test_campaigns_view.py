"""The Campaigns view in a real browser, the way an analyst uses it.

On the local stack: a small campaign goes out through the REST API, recipients open, click and unsubscribe through
the tracking service, SES reports a hard bounce; refresh_campaign_stats rolls it up. Then headless Debian Chromium
(driven by Playwright, never a downloaded browser) logs into Airflow, opens Campaigns in the navigation, and checks
that the list and the campaign page show the database's numbers, that every chart rendered, that a run link opens
the run in the Airflow UI, that the CSV downloads, and that the console stayed free of errors. Screenshots go to
artifacts/ (git-ignored).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import uuid

import psycopg
import pytest

from devstack.processes import poll
from devstack.settings import SETTINGS
from tests.browser import headless_chromium
from tests.e2e.helpers import https, messages_to, post_ses_event, ses_event

pytestmark = pytest.mark.timeout(900)
ARTIFACTS = SETTINGS.root / "artifacts"
CONTACTS = 30
HUMAN = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from Debian's package (installed with apt-get where we can)."""
    with headless_chromium() as chromium:
        yield chromium


def _campaign_with_activity(stack, api, stack_db, tls) -> dict:
    """Send a 30-recipient campaign; 3 people open, 1 clicks, 1 unsubscribes, 1 hard-bounces; roll the stats up."""
    stamp = uuid.uuid4().hex[:10]
    list_name, key = f"view-{stamp}", f"view-{stamp}"
    path = stack.state_dir / "e2e" / f"view-contacts-{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    addresses = [f"view-{stamp}-{i}@example.org" for i in range(CONTACTS)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name"])
        writer.writerows([address, f"Reader{i}"] for i, address in enumerate(addresses))
    for dag_id in ("import_contacts", "send_campaign", "refresh_campaign_stats"):
        api.wait_for_dag(dag_id)
    assert api.run("import_contacts", {"path": str(path), "list": list_name}, timeout=300)["state"] == "success"
    campaign = {"key": key, "name": f"Browser view {stamp}", "subject": "Hello {{ first_name }}",
                "from_email": "news@example.com",
                "html": '<html><body><p>Hi {{ first_name }}</p><p><a href="https://example.com/spring">Spring '
                        'sale</a></p></body></html>',
                "audience": {"lists": [list_name]}}
    assert api.run("send_campaign", {"campaign": campaign, "batch_size": 10}, timeout=600)["state"] == "success"
    row = stack_db.execute("SELECT id, status, run_id FROM campaigns WHERE key = %s", [key]).fetchone()
    assert row["status"] == "sent"

    received = messages_to(stack, set(addresses))
    ledger = {r["email"]: r for r in stack_db.execute(
        "SELECT id, email, ses_message_id FROM campaign_recipients WHERE campaign_id = %s", [row["id"]])}
    for address in addresses[:3]:
        html = received[address][0].get_body(("html",)).get_content()
        pixel = re.search(r'<img[^>]+src="(https://[^"]+/o/[^"]+\.gif)"', html).group(1)
        assert https(pixel, tls, headers=HUMAN)[0] == 200
    html = received[addresses[0]][0].get_body(("html",)).get_content()
    click = re.search(r'href="(https://[^"]+/c/[^"]+)"', html).group(1)
    assert https(click, tls, headers=HUMAN)[0] == 302
    unsubscribe = str(received[addresses[4]][0]["List-Unsubscribe"]).strip("<>")
    assert https(unsubscribe, tls, method="POST", body=b"List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 200
    bounced = addresses[5]
    bounce = ses_event("Bounce", ledger[bounced], bounce={
        "bounceType": "Permanent", "bounceSubType": "General", "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "bouncedRecipients": [{"emailAddress": bounced, "action": "failed", "status": "5.1.1"}]})
    status, body = post_ses_event(bounce, tls)
    assert status == 200, body

    def recorded():
        n = stack_db.execute("SELECT count(*) AS n FROM email_events WHERE campaign_id = %s AND type IN "
                             "('open', 'click', 'unsubscribe', 'bounce')", [row["id"]]).fetchone()["n"]
        return n >= 6  # 3 opens, 1 click, 1 unsubscribe, 1 bounce (the click's implied open needs no pixel)

    poll(recorded, what="the opens, the click, the unsubscribe and the bounce in email_events", timeout=60,
         interval=0.5)
    # the rollup the way it runs in production: its DAG (every 5 minutes), triggered now instead of waited for
    assert api.run("refresh_campaign_stats", {}, timeout=300)["state"] == "success"
    return {**row, "key": key, "name": campaign["name"]}


def _truth(conn: psycopg.Connection, campaign_id: int) -> dict:
    """The campaign's numbers counted from the raw ledger and events, and as the rollup holds them (equal)."""
    raw = conn.execute(
        """SELECT (SELECT count(*) FROM campaign_recipients WHERE campaign_id = %(id)s) AS recipients,
                  (SELECT count(*) FROM campaign_recipients WHERE campaign_id = %(id)s AND status = 'sent') AS sent,
                  count(DISTINCT recipient_id) FILTER (WHERE type = 'open') AS unique_opens,
                  count(DISTINCT recipient_id) FILTER (WHERE type = 'click') AS unique_clicks,
                  count(DISTINCT recipient_id) FILTER (WHERE type = 'bounce') AS bounced,
                  count(DISTINCT recipient_id) FILTER (WHERE type = 'unsubscribe') AS unsubscribes
             FROM email_events WHERE campaign_id = %(id)s""", {"id": campaign_id}).fetchone()
    rollup = conn.execute("SELECT recipients, sent, unique_opens, unique_clicks, bounced, unsubscribes "
                          "FROM campaign_stats WHERE campaign_id = %s", [campaign_id]).fetchone()
    assert dict(raw) == dict(rollup)
    return dict(rollup)


def test_analyst_reads_a_campaign_in_the_airflow_ui(stack, api, stack_db, tls, browser):
    campaign = _campaign_with_activity(stack, api, stack_db, tls)
    truth = _truth(stack_db, campaign["id"])
    assert truth["unique_opens"] >= 3
    assert (truth["unique_clicks"], truth["bounced"], truth["unsubscribes"]) == (1, 1, 1)
    password = (stack.state_dir / "secrets" / "airflow-admin-password").read_text().strip()
    ARTIFACTS.mkdir(exist_ok=True)

    # nobody logged in: no data
    anonymous = browser.new_context()
    assert anonymous.request.get(f"{stack.airflow_url}/campaigns/").status == 401
    assert anonymous.request.get(f"{stack.airflow_url}/campaigns/{campaign['id']}/stats.csv").status == 401
    anonymous.close()

    context = browser.new_context(viewport={"width": 1400, "height": 2200}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{stack.airflow_url}/")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{stack.airflow_url}/")
    errors: list[str] = []  # from here on: the logged-in UI and the view, every frame
    page.on("console", lambda message: errors.append(f"{message.location.get('url')}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    page.get_by_role("link", name="Campaigns").first.click()
    page.wait_for_url("**/plugin/campaigns**")
    view = page.frame_locator("iframe[title=Campaigns]")
    row = view.locator(f"tr[data-key='{campaign['key']}']")
    row.wait_for()
    fields = {el.get_attribute("data-field"): el.get_attribute("data-value")
              for el in row.locator("[data-field][data-value]").all()}
    assert (int(fields["sent"]), int(fields["recipients"])) == (truth["sent"], truth["recipients"])
    assert f"{truth['sent']:,} / {truth['recipients']:,}" in " ".join(row.inner_text().split())
    assert float(fields["bounce_rate"]) == pytest.approx(truth["bounced"] / truth["sent"])
    assert float(fields["open_rate"]) == pytest.approx(truth["unique_opens"] / (truth["sent"] - truth["bounced"]))
    assert not re.search(r"view-[0-9a-f]{10}-\d+@example\.org", view.locator("body").inner_html())
    page.screenshot(path=str(ARTIFACTS / "campaigns-view-list.png"))

    row.locator("a.name").click()
    view.locator("svg[data-chart='funnel']").wait_for()
    assert page.url.endswith(f"/plugin/campaigns/campaigns/{campaign['id']}")  # the UI keeps a deep link
    kpis = {el.get_attribute("data-metric"): el for el in view.locator("[data-metric]").all()}
    for metric, expected in truth.items():
        assert int(kpis[metric].get_attribute("data-value")) == expected, metric
        assert kpis[metric].inner_text().replace(",", "") == str(expected), metric

    charts = {svg.get_attribute("data-chart"): svg for svg in view.locator("svg[data-chart]").all()}
    assert set(charts) >= {"funnel", "rates", "hourly", "links", "ledger"}
    for name, svg in charts.items():
        box = svg.bounding_box()
        assert box is not None, name
        assert (box["width"] > 100, box["height"] > 40) == (True, True), (name, box)
        assert svg.locator("rect, polyline").count() > 0, name
    assert view.locator("svg[data-chart='rates'] line[data-threshold]").count() == 2  # SES's 5% and 0.1%
    page.screenshot(path=str(ARTIFACTS / "campaigns-view-campaign.png"))

    with page.expect_download() as download:
        view.locator("a[download]").click()
    text = download.value.path().read_text(encoding="utf-8")
    counts = {r["metric"]: int(r["value"]) for r in csv.DictReader(io.StringIO(text)) if r["section"] == "count"}
    assert {metric: counts[metric] for metric in truth} == truth

    # a run link opens the run in the Airflow UI itself, not inside the view's frame
    view.locator("a.run").first.click()
    page.wait_for_url(re.compile(r".*/dags/send_campaign/runs/[^/]+$"))
    assert page.url.startswith(f"{stack.airflow_url}/dags/send_campaign/runs/")

    assert errors == []
    context.close()

