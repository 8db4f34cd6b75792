"""The Campaigns view (plugins/campaigns_view): who may see it, what the list and the campaign page show, the CSV.

Campaign data is written as the product leaves it (ledger rows, tracked links, email_events, campaign_actions),
then one stats rollup runs, and the pages are read back the way a browser gets them.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import lxml.html
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from campaigns.lifecycle import stats
from tests.helpers import insert_campaign

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
LINKS = ["https://example.com/offer", "https://example.com/blog"]


def seed_campaign(db, key: str, *, sent: int, status: str = "sent", started: datetime = T0,
                  run_id: str | None = None) -> tuple[int, list[int]]:
    """A campaign that sent to `sent` recipients, with one failed, two skipped and one pending ledger row."""
    campaign_id = insert_campaign(db, key)
    db.execute("UPDATE campaigns SET name = %s, status = %s, started_at = %s, finished_at = %s, run_id = %s "
               "WHERE id = %s",
               [f"Campaign {key}", status, started, None if status == "running" else started + timedelta(hours=1),
                run_id, campaign_id])
    ids = [db.execute("""INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)
                         VALUES (%s, %s, 'sent', %s, %s) RETURNING id""",
                      [campaign_id, f"r{i}@{key}.example", f"msg-{key}-{i}", started + timedelta(minutes=i)]
                      ).fetchone()["id"] for i in range(sent)]
    db.execute("INSERT INTO campaign_recipients (campaign_id, email, status, error) VALUES (%s, %s, 'failed', 'x')",
               [campaign_id, f"failed@{key}.example"])
    for reason in ("suppressed:unsubscribe", "invalid_address"):
        db.execute("INSERT INTO campaign_recipients (campaign_id, email, status, skip_reason) VALUES (%s, %s, "
                   "'skipped', %s)", [campaign_id, f"{reason[:3]}@{key}.example", reason])
    db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, %s)",
               [campaign_id, f"pending@{key}.example"])
    for link_id, url in enumerate(LINKS):
        db.execute("INSERT INTO campaign_links (campaign_id, link_id, url) VALUES (%s, %s, %s)",
                   [campaign_id, link_id, url])
    return campaign_id, ids


def event(db, campaign_id: int, recipient_id: int, type_: str, at: datetime, *, subtype: str | None = None,
          link_id: int | None = None, machine: bool = False) -> None:
    db.execute("""INSERT INTO email_events (campaign_id, recipient_id, type, subtype, link_id, is_machine,
                                          occurred_at)
                  VALUES (%s, %s, %s, %s, %s, %s, %s)""",
               [campaign_id, recipient_id, type_, subtype, link_id, machine, at])


@pytest.fixture
def nov(db):
    """Campaign 'nov': 10 sent; opens by 4 people (one twice) and 1 machine, clicks, a bounce, a complaint, an
    unsubscribe, and a reputation-guard pause."""
    campaign_id, ids = seed_campaign(db, "nov", sent=10, status="paused", run_id="manual__2026-11-02T09:30")
    for i in range(4):
        event(db, campaign_id, ids[i], "open", T0 + timedelta(hours=i))
    event(db, campaign_id, ids[0], "open", T0 + timedelta(hours=5))
    event(db, campaign_id, ids[4], "open", T0 + timedelta(minutes=3), machine=True)
    event(db, campaign_id, ids[0], "click", T0 + timedelta(hours=1), link_id=0)
    event(db, campaign_id, ids[1], "click", T0 + timedelta(hours=2), link_id=0)
    event(db, campaign_id, ids[1], "click", T0 + timedelta(hours=2, minutes=5), link_id=1)
    event(db, campaign_id, ids[5], "bounce", T0 + timedelta(minutes=10), subtype="Permanent")
    event(db, campaign_id, ids[6], "complaint", T0 + timedelta(hours=3))
    event(db, campaign_id, ids[2], "unsubscribe", T0 + timedelta(hours=4))
    db.execute("""INSERT INTO campaign_actions (campaign_id, action, actor, run_id, old_status, new_status, reason)
                  VALUES (%s, 'pause', 'reputation_guard', 'manual__2026-11-02T09:30', 'running', 'paused', %s)""",
               [campaign_id, "complaint rate 10.000% over the 0.080% limit (1 of 10)"])
    stats.refresh(db)
    return campaign_id


def page(response) -> lxml.html.HtmlElement:
    assert response.status_code == 200, response.text
    return lxml.html.fromstring(response.text)


def values(doc, xpath: str, attribute: str) -> dict[str, str]:
    return {el.get(attribute): el.get("data-value") for el in doc.xpath(xpath)}


# ---- access ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/1", "/1/stats.csv"])
def test_anonymous_requests_are_refused_with_401(view, path):
    response = view.get(path)
    assert response.status_code == 401
    assert "Campaign" not in response.text


def test_forged_token_and_user_without_permission_get_403(view, token_for, nov):
    forged = token_for("viewer")[:-4] + "AAAA"
    assert view.get("/", headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    no_role = view.get(f"/{nov}", headers={"Authorization": f"Bearer {token_for(None, 'nobody')}"})
    assert no_role.status_code == 403
    assert "Campaign nov" not in no_role.text


def test_api_clients_with_a_bearer_token_see_the_view(view, token_for, nov):
    response = view.get(f"/{nov}/stats.csv", headers={"Authorization": f"Bearer {token_for('viewer')}"})
    assert response.status_code == 200


# ---- the list ------------------------------------------------------------------------------------------------------

def test_list_shows_progress_states_and_rates_but_no_recipient_address(analyst, db, nov):
    seed_campaign(db, "dec", sent=3, status="running", started=T0 + timedelta(days=30))
    stats.refresh(db)
    doc = page(analyst.get("/"))
    rows = {row.get("data-key"): row for row in doc.xpath("//tr[@data-campaign-id]")}
    assert list(rows) == ["dec", "nov"]  # newest first

    nov_row = rows["nov"]
    fields = values(nov_row, ".//*[@data-field and @data-value]", "data-field")
    assert fields["sent"] == "10"
    assert fields["recipients"] == "14"
    assert float(fields["bounce_rate"]) == pytest.approx(1 / 10)
    assert float(fields["complaint_rate"]) == pytest.approx(1 / 10)
    assert float(fields["open_rate"]) == pytest.approx(5 / 9)  # 5 openers of 9 messages that did not bounce
    assert float(fields["click_rate"]) == pytest.approx(2 / 9)
    assert "10 / 14" in re.sub(r"\s+", " ", nov_row.text_content())
    assert nov_row.xpath(".//*[@data-field='status']")[0].text == "paused"
    # the bounce rate is over SES's 5% review threshold: marked
    assert "over" in nov_row.xpath(".//*[@data-field='bounce_rate']")[0].get("class")
    assert nov_row.xpath(f".//a[@href='/{nov}']")
    assert nov_row.xpath(".//a[@data-airflow-link and contains(@href, '/dags/send_campaign/runs/manual__2026-11-02')]")
    assert rows["dec"].xpath(".//*[@data-field='status']")[0].text == "running"

    # no ledger address anywhere on the list page
    assert not re.search(r"[\w.+-]+@(nov|dec)\.example", analyst.get("/").text)


def test_list_filters_by_state_and_refuses_an_unknown_state(analyst, db, nov):
    seed_campaign(db, "dec", sent=3, status="running")
    stats.refresh(db)
    doc = page(analyst.get("/?state=running"))
    assert [r.get("data-key") for r in doc.xpath("//tr[@data-campaign-id]")] == ["dec"]
    chips = {a.get("data-state-filter"): a.text_content().split()[-1] for a in doc.xpath("//a[@data-state-filter]")}
    assert chips["running"] == "1"
    assert chips["paused"] == "1"
    assert chips["sent"] == "0"

    response = analyst.get("/?state=sending")
    assert response.status_code == 400
    assert "unknown campaign state 'sending'" in response.text


def test_list_pages_on_by_campaign_id(analyst, db):
    from campaigns_view import data

    ids = [insert_campaign(db, f"k{i}") for i in range(data.PAGE_SIZE + 2)]
    first = page(analyst.get("/"))
    shown = [int(r.get("data-campaign-id")) for r in first.xpath("//tr[@data-campaign-id]")]
    assert shown == ids[::-1][:data.PAGE_SIZE]
    (older,) = first.xpath("//p[@class='more']/a/@href")
    second = page(analyst.get(older))
    assert [int(r.get("data-campaign-id")) for r in second.xpath("//tr[@data-campaign-id]")] == ids[1::-1]


# ---- the campaign page ---------------------------------------------------------------------------------------------

def test_campaign_page_numbers_equal_the_rollups(analyst, db, nov):
    expected = stats.campaign_stats(db, nov)
    doc = page(analyst.get(f"/{nov}"))
    kpis = values(doc, "//*[@data-metric]", "data-metric")
    for metric, shown in kpis.items():
        assert int(shown) == expected[metric], metric
    assert kpis["unique_opens"] == "5"
    assert kpis["unique_human_opens"] == "4"
    assert kpis["unsubscribes"] == "1"
    ledger = values(doc, "//*[@data-ledger]", "data-ledger")
    assert ledger == {"pending": "1", "sending": "0", "sent": "10", "failed": "1", "skipped": "2", "cancelled": "0",
                      "unknown": "0"}
    assert values(doc, "//*[@data-skip-reason]", "data-skip-reason") == {"invalid_address": "1",
                                                                        "suppressed:unsubscribe": "1"}
    rates = {tr.get("data-rate"): tr.xpath("./td[@data-value]")[0].get("data-value")
             for tr in doc.xpath("//tr[@data-rate]")}
    for name, rate in expected["rates"].items():
        assert float(rates[name]) == pytest.approx(rate["value"]), name


def test_campaign_page_draws_every_chart_with_the_ses_thresholds(analyst, nov):
    doc = page(analyst.get(f"/{nov}"))
    charts = {svg.get("data-chart"): svg for svg in doc.xpath("//svg[@data-chart]")}
    assert set(charts) == {"funnel", "rates", "hourly", "links", "ledger"}  # no daily part in the first week

    steps = values(charts["funnel"], ".//rect[@data-step]", "data-step")
    assert steps == {"Recipients": "14", "Sent": "10", "Delivered": "0", "Opened (all)": "5",
                     "Opened (people)": "4", "Clicked (all)": "2", "Clicked (people)": "2"}
    widths = [float(r.get("width")) for r in charts["funnel"].xpath(".//rect[@data-step]")]
    assert widths[0] > widths[1] > widths[3] > widths[5] > 0  # bars shrink down the funnel

    # thresholds: SES's 5% bounce and 0.1% complaint review lines, each labelled
    assert {line.get("data-threshold") for line in charts["rates"].xpath(".//line[@data-threshold]")} == {
        "bounce", "complaint"}
    text = charts["rates"].text_content()
    assert "SES review at 5.00%" in text
    assert "SES review at 0.100%" in text
    assert "10.00%  (1 / 10)" in text  # bounce rate with its numerator and denominator

    # the hourly series: every hour from the first to the last bucket, opens and clicks as lines
    totals = values(charts["hourly"], ".//polyline[@data-series]", "data-series")
    assert totals == {"opens": "6", "clicks": "3"}
    assert len(charts["hourly"].xpath(".//polyline[@data-series='opens']")[0].get("points").split()) == 6

    links = values(charts["links"], ".//rect[@data-item]", "data-item")
    assert links == {LINKS[0]: "2", LINKS[1]: "1"}
    parts = values(charts["ledger"], ".//rect[@data-part]", "data-part")
    assert parts == {"pending": "1", "sent": "10", "failed": "1", "skipped": "2"}


def test_campaign_page_says_what_the_reputation_guard_did_and_links_its_runs(analyst, nov):
    doc = page(analyst.get(f"/{nov}"))
    (alert,) = doc.xpath("//section[@data-section='guard']//p[@class='alert']")
    said = " ".join(alert.text_content().split())
    assert "The reputation guard paused this campaign on " in said
    assert said.endswith(": complaint rate 10.000% over the 0.080% limit (1 of 10)")
    assert doc.xpath("//tr[@data-actor='reputation_guard']")
    assert doc.xpath("//a[@data-airflow-link and @href='/dags/send_campaign/runs/manual__2026-11-02T09%3A30']")
    assert doc.xpath(f"//a[@href='/{nov}/stats.csv']")


def test_after_the_first_week_the_series_is_daily(analyst, db):
    campaign_id, ids = seed_campaign(db, "old", sent=3)
    event(db, campaign_id, ids[0], "open", T0 + timedelta(hours=2))
    event(db, campaign_id, ids[1], "open", T0 + timedelta(days=10))
    event(db, campaign_id, ids[2], "click", T0 + timedelta(days=12), link_id=1)
    stats.refresh(db)
    doc = page(analyst.get(f"/{campaign_id}"))
    hourly, daily = (doc.xpath(f"//svg[@data-chart='{name}']")[0] for name in ("hourly", "daily"))
    assert values(hourly, ".//polyline[@data-series]", "data-series") == {"opens": "1", "clicks": "0"}
    assert values(daily, ".//polyline[@data-series]", "data-series") == {"opens": "1", "clicks": "1"}
    assert len(daily.xpath(".//polyline[@data-series='opens']")[0].get("points").split()) == 2


def test_a_campaign_no_rollup_has_counted_yet_says_so(analyst, db):
    campaign_id = insert_campaign(db, "fresh")
    doc = page(analyst.get(f"/{campaign_id}"))
    assert "not yet" in doc.xpath("//*[@data-field='counted']")[0].text_content()
    assert values(doc, "//*[@data-metric]", "data-metric")["recipients"] == "0"
    assert doc.xpath("//svg[@data-chart='funnel']")
    assert doc.xpath("//svg[@data-chart='ledger']")


def test_unknown_campaign_is_404(analyst, db):
    response = analyst.get("/424242")
    assert response.status_code == 404
    assert "campaign 424242 does not exist" in response.text


# ---- CSV -----------------------------------------------------------------------------------------------------------

def test_csv_download_carries_counts_rates_links_and_series(analyst, db, nov):
    response = analyst.get(f"/{nov}/stats.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert f'filename="campaign-{nov}-stats.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    by = {(r["section"], r["item"], r["metric"]): r for r in rows}
    expected = stats.campaign_stats(db, nov)
    assert by[("campaign", "", "key")]["value"] == "nov"
    assert int(by[("count", "", "sent")]["value"]) == 10
    assert int(by[("count", "", "unique_human_opens")]["value"]) == 4
    complaint = by[("rate", "", "complaint")]
    assert (float(complaint["value"]), complaint["numerator"], complaint["denominator"]) == (
        expected["rates"]["complaint"]["value"], "1", "10")
    assert by[("skipped_by_reason", "invalid_address", "skipped")]["value"] == "1"
    assert by[("link", LINKS[0], "unique_clicks")]["value"] == "2"
    series_opens = sum(int(r["value"]) for r in rows if r["section"] == "series" and r["metric"] == "opens")
    assert series_opens == expected["opens"] == 6
    assert not re.search(r"@nov\.example", response.text)


# ---- mounted in the api-server ---------------------------------------------------------------------------------------

def test_mounted_under_campaigns_the_links_point_into_the_app_and_the_airflow_ui(dsn, db, nov, token_for):
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from campaigns_view.app import MOUNT_PREFIX, create_app

    root = FastAPI()
    root.mount(MOUNT_PREFIX, create_app(dsn))
    with TestClient(root) as client:
        client.cookies.set(COOKIE_NAME_JWT_TOKEN, token_for("viewer"))
        listing = page(client.get("/campaigns/"))
        assert listing.xpath(f"//a[@href='/campaigns/{nov}']")
        assert listing.xpath("//link[@rel='stylesheet' and @href='/campaigns/static/campaigns.css']")
        assert listing.xpath("//a[@data-airflow-link and @href='/dags/send_campaign/runs']")
        assert client.get("/campaigns/static/campaigns.css").status_code == 200
        detail = page(client.get(f"/campaigns/{nov}"))
        assert detail.xpath(f"//a[@href='/campaigns/{nov}/stats.csv']")
        assert detail.xpath("//a[@data-airflow-link and starts-with(@href, '/dags/send_campaign/runs/manual__')]")


def test_the_plugin_registers_the_app_and_a_campaigns_nav_entry():
    import campaigns_plugin
    from campaigns_view.app import MOUNT_PREFIX

    plugin = campaigns_plugin.CampaignsViewPlugin
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == MOUNT_PREFIX
    (entry,) = plugin.external_views
    assert (entry["name"], entry["destination"], entry["url_route"], entry["href"]) == (
        "Campaigns", "nav", "campaigns", "/campaigns/")
