"""An analyst's whole campaign, in the Airflow UI, in Debian's Chromium: no JSON typed anywhere.

Log in; open send_campaign -> Trigger and fill the campaign composer's fields; send a test first and find it in the
local inbox; open the Campaigns view, preview the message as a contact of the audience (nothing leaves the page);
press Start, watch the progress move by itself, pause (pending rows stay), resume, and see it finish, the page equal
to the database at each step. A second user with the Viewer role sees the view and is refused every action. Bad
input in the form (no subject, a list that does not exist, a send time in the past, a template error) fails with a
message naming the field and stores nothing half-way.

Screenshots go to artifacts/ (git-ignored); `make screenshots` writes them to docs/images/ for docs/analysts.md.
"""

from __future__ import annotations

import csv
import os
import re
import time
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import pytest

from devstack.processes import poll
from devstack.settings import SETTINGS
from tests.browser import headless_chromium
from tests.e2e.helpers import messages_to

pytestmark = pytest.mark.timeout(900)
SHOTS = Path(os.environ.get("DOCS_SCREENSHOTS") or SETTINGS.root / "artifacts")
RECIPIENTS = 1000
LEDGER_STATES = ("pending", "sending", "sent", "failed", "skipped", "cancelled", "unknown")
REMOTE_IMAGE = "https://images.example.net/spring-banner.png"
HTML = ("<html><body><h1>Spring is here, {{ first_name }}</h1>"
        f'<p><img src="{REMOTE_IMAGE}" alt="Spring"></p>'
        '<p>Our <a href="https://shop.example.com/spring">spring collection</a> is out.</p></body></html>')


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as chromium:
        yield chromium


class Network:
    """What a page asked for, and which of it the browser's Content-Security-Policy stopped before it left."""

    def __init__(self, page) -> None:
        self.asked: list[str] = []
        self.blocked: set[str] = set()
        page.on("request", lambda request: self.asked.append(request.url))
        page.on("requestfailed", lambda request: self.blocked.add(request.url)
                if "csp" in (request.failure or "").lower() else None)

    def clear(self) -> None:
        self.asked.clear()
        self.blocked.clear()

    def left(self) -> list[str]:
        return [url for url in self.asked if url not in self.blocked]


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _password(stack, user: str) -> str:
    return (stack.state_dir / "secrets" / f"airflow-{user}-password").read_text().strip()


def _log_in(browser, stack, user: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.goto(f"{stack.airflow_url}/")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(_password(stack, user))
    page.locator("button[type=submit]").click()
    page.wait_for_url(f"{stack.airflow_url}/")
    return context, page


def _import(api, stack, name: str, addresses: list[str]) -> None:
    path = stack.state_dir / "e2e" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "country"])
        writer.writerows([address, f"Reader{i}", "AT" if i % 2 else "DE"] for i, address in enumerate(addresses))
    assert api.run("import_contacts", {"path": str(path), "list": name}, timeout=300)["state"] == "success"


def _newest_run(api, dag_id: str, after: set[str]) -> str:
    def new() -> str | None:
        runs = api._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]
        return next((r["dag_run_id"] for r in runs if r["dag_run_id"] not in after), None)

    return poll(new, timeout=60, interval=0.5, what=f"the {dag_id} run the form triggered")


def _run_ids(api, dag_id: str) -> set[str]:
    """The newest runs of `dag_id` (a page of them: the API caps a page at [api] maximum_page_limit, 100, and a
    stack that has run the tests before has more; _newest_run looks only at the newest ones)."""
    runs = api._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=100")["dag_runs"]
    return {r["dag_run_id"] for r in runs}


def _task_log(api, dag_id: str, run_id: str, task_id: str) -> str:
    """The task's log as the UI shows it: each line's message, and an exception's message after its line."""
    run = urllib.parse.quote(run_id, safe="")
    body = api._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/logs/1?full_content=true")
    lines = []
    for line in body.get("content") or []:
        if not isinstance(line, dict):
            lines.append(str(line))
            continue
        lines.append(str(line.get("event", "")))
        lines.extend(str(error.get("exc_value", "")) for error in line.get("error_detail") or [])
    return "\n".join(lines)


def _trigger_form(page, stack, fields: dict[str, str]) -> None:
    """send_campaign -> Trigger, the fields typed into their sections (each section opened by its title)."""
    page.goto(f"{stack.airflow_url}/dags/send_campaign")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    for section, values in fields.items():
        dialog.get_by_role("button", name=section, exact=True).click()
        for name, value in values.items():
            field = dialog.locator(f"#element_{name}")
            field.wait_for(state="visible")
            field.fill(value)
    return dialog


def _ledger(stack_db, campaign_id: int) -> dict[str, int]:
    counts = Counter({state: 0 for state in LEDGER_STATES})
    for row in stack_db.execute("SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s "
                                "GROUP BY status", [campaign_id]):
        counts[row["status"]] = row["n"]
    return dict(counts)


def _page_counts(view) -> dict[str, int]:
    return {state: int(view.locator(f"[data-live='{state}']").inner_text()) for state in LEDGER_STATES}


def _status(stack_db, campaign_id: int) -> str:
    return stack_db.execute("SELECT status FROM campaigns WHERE id = %s", [campaign_id]).fetchone()["status"]


def test_an_analyst_runs_a_campaign_from_the_trigger_form_to_the_finish(stack, api, stack_db, browser):
    stamp = uuid.uuid4().hex[:8]
    list_name, name = f"spring-{stamp}", f"Spring sale {stamp}"
    addresses = [f"spring-{stamp}-{i}@example.org" for i in range(RECIPIENTS)]
    tester = f"tester-{stamp}@example.org"
    for dag_id in ("import_contacts", "send_campaign", "send_test_email", "campaign_control"):
        api.wait_for_dag(dag_id)
    _import(api, stack, list_name, addresses)
    context, page = _log_in(browser, stack, "admin")
    network = Network(page)

    # 1. the form: content, audience, a test first; no JSON anywhere
    before = _run_ids(api, "send_campaign")
    dialog = _trigger_form(page, stack, {
        "Content": {"name": name, "subject": "Spring is here, {{ first_name }}",
                    "preheader": "Twenty new pieces, picked for you", "html": HTML},
        "Audience": {"lists": list_name},
        "Test first": {"test_recipients": tester},
    })
    dialog.get_by_role("button", name="Options", exact=True).click()
    switch = dialog.locator("input[name=element_view_in_browser_footer]")  # the footer link "View this email ..."
    dialog.locator("label:has(input[name=element_view_in_browser_footer])").click()
    assert switch.is_checked()
    _shot(page, "analyst-1-trigger-form")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    test_run = _newest_run(api, "send_campaign", before)
    assert api.wait("send_campaign", test_run, timeout=300)["state"] == "success"
    campaign = stack_db.execute("SELECT id, key, status, preheader FROM campaigns WHERE name = %s", [name]).fetchone()
    assert campaign["status"] == "draft"
    assert campaign["preheader"] == "Twenty new pieces, picked for you"
    assert campaign["key"] in _task_log(api, "send_campaign", test_run, "resolve_campaign")
    assert "Start" in _task_log(api, "send_campaign", test_run, "send_tests_first")  # how to send for real
    assert _ledger(stack_db, campaign["id"])["pending"] == 0  # only the test went out
    assert set(messages_to(stack, set(addresses))) == set()

    # 2. the test in the local inbox
    page.goto(f"{stack.ses_endpoint}/inbox")
    test_row = page.get_by_text("[TEST] Spring is here").first
    test_row.wait_for()
    assert tester in page.content()
    _shot(page, "analyst-2-local-inbox")

    # 3. the Campaigns view: the draft, its test send, a preview as a contact of the audience
    page.goto(f"{stack.airflow_url}/")
    page.get_by_role("link", name="Campaigns").first.click()
    view = page.frame_locator("iframe[title=Campaigns]")
    view.locator(f"a:has-text('{name}')").first.click()
    view.locator("[data-section=actions]").wait_for()
    assert view.locator("[data-table=test-sends]").inner_text().count(tester) == 1
    network.clear()  # from here on: what the preview loads
    view.locator("[data-form=search] input[name=q]").fill(addresses[7])
    view.locator("[data-form=search] button").click()
    view.locator(f"[data-list=matches] a:has-text('{addresses[7]}')").click()
    assert view.locator("[data-field=subject]").inner_text() == "Spring is here, Reader7"
    assert view.locator("[data-field=preheader]").inner_text() == "Twenty new pieces, picked for you"
    html = view.frame_locator("iframe[data-frame=html]")
    assert html.locator("h1").inner_text() == "Spring is here, Reader7"
    assert "List-Unsubscribe" in view.locator("[data-table=headers]").inner_text()
    _shot(page, "analyst-3-preview")
    page.wait_for_load_state("networkidle")
    left = network.left()
    assert [url for url in left if REMOTE_IMAGE in url or "/o/" in url or url.startswith(stack.tracking_base_url)] \
        == []  # neither the open pixel nor the remote image left the browser

    # 4. send for real: Start, the progress moves by itself, pause
    view.locator("text=Back to the campaign").click()
    (db_clock,) = stack_db.execute("SELECT now() AS now").fetchone().values()
    view.locator("button[data-action=start]").click()
    view.locator("[data-flash]").wait_for()
    poll(lambda: _ledger(stack_db, campaign["id"])["sent"] > 0, timeout=120, interval=0.05,
         what="the first message of the campaign")
    first = stack_db.execute("SELECT min(sent_at) AS at FROM campaign_recipients WHERE campaign_id = %s",
                             [campaign["id"]]).fetchone()["at"]
    print(f"  Start -> first message of {RECIPIENTS}: {(first - db_clock).total_seconds():.1f} s")
    poll(lambda: view.locator("section.head").get_attribute("data-status") == "running", timeout=10,
         interval=0.2, what="the page to show the campaign running")
    poll(lambda: _page_counts(view)["sent"] > 0, timeout=10, interval=0.2,
         what="the page's progress to move without a reload")
    _shot(page, "analyst-4-sending")
    view.locator("button[data-action=pause]").click()
    poll(lambda: _status(stack_db, campaign["id"]) == "paused", timeout=10, interval=0.1, what="the pause")
    poll(lambda: _ledger(stack_db, campaign["id"])["sending"] == 0, timeout=30, interval=0.2,
         what="the send tasks to stop")
    paused = _ledger(stack_db, campaign["id"])
    assert paused["pending"] > 0, paused  # pending rows stay pending
    poll(lambda: view.locator("section.head").get_attribute("data-status") == "paused"
         and _page_counts(view) == _ledger(stack_db, campaign["id"]), timeout=10, interval=0.2,
         what="the page to show the paused campaign's ledger")
    actor = stack_db.execute("SELECT actor FROM campaign_actions WHERE campaign_id = %s AND action = 'pause'",
                             [campaign["id"]]).fetchone()["actor"]
    assert actor == "admin"
    _shot(page, "analyst-5-paused")

    # 5. resume once the paused run has wound down; it finishes
    paused_run = stack_db.execute("SELECT run_id FROM campaigns WHERE id = %s", [campaign["id"]]).fetchone()["run_id"]
    api.wait("send_campaign", paused_run, timeout=300)
    view.locator("button[data-action=resume]").click()
    poll(lambda: _status(stack_db, campaign["id"]) == "sent", timeout=300, interval=0.5, what="the campaign sent")
    sent_at = time.monotonic()
    poll(lambda: view.locator("section.head").get_attribute("data-status") == "sent", timeout=10, interval=0.2,
         what="the page to show the campaign sent")
    assert time.monotonic() - sent_at <= 5
    final = _ledger(stack_db, campaign["id"])
    assert final["sent"] == RECIPIENTS
    assert _page_counts(view) == final
    received = Counter(address for address, messages in messages_to(stack, set(addresses)).items()
                       for _ in messages)
    assert len(received) == RECIPIENTS
    assert set(received.values()) == {1}
    _shot(page, "analyst-6-sent")
    context.close()

    # 6. a recipient's "view in browser" link: their own message, and nothing loads from anywhere else
    reader = addresses[3]
    html = messages_to(stack, {reader})[reader][0].get_body(("html",)).get_content()
    link = re.search(r'href="(https://[^"]+/v/[^"]+)"', html).group(1)
    reader_context = browser.new_context(ignore_https_errors=True)  # the stack's self-signed certificate
    reader_page = reader_context.new_page()
    reading = Network(reader_page)
    reader_page.goto(link)
    reader_page.wait_for_load_state("networkidle")
    assert reader_page.locator("h1").inner_text() == "Spring is here, Reader3"
    assert reading.left() == [link]  # the page alone: no pixel, and the remote image stopped by its CSP
    _shot(reader_page, "analyst-7-view-in-browser")
    reader_context.close()

    # 7. a Viewer sees the view and is refused every action
    viewer_context, viewer = _log_in(browser, stack, "viewer")
    viewer.goto(f"{stack.airflow_url}/campaigns/{campaign['id']}")
    assert viewer.locator("[data-readonly]").is_visible()
    token = viewer.locator("[data-section=actions] input[type=hidden]").first
    form = {token.get_attribute("name"): token.get_attribute("value")}
    origin = {"Origin": stack.airflow_url}
    for path in ("actions/pause", "actions/resume", "actions/cancel", "actions/release", "actions/start",
                 "duplicate", "test-send"):
        response = viewer_context.request.post(f"{stack.airflow_url}/campaigns/{campaign['id']}/{path}",
                                               form={**form, "recipients": tester}, headers=origin,
                                               max_redirects=0)
        assert response.status == 403, (path, response.status)
    _shot(viewer, "analyst-8-viewer")
    viewer_context.close()


@pytest.mark.parametrize("case", ["no subject", "unknown list", "past send time", "template error"])
def test_bad_input_in_the_form_names_the_field_and_stores_nothing(stack, api, stack_db, browser, case):
    stamp = uuid.uuid4().hex[:8]
    list_name, name = f"bad-{stamp}", f"Bad {case} {stamp}"
    api.wait_for_dag("send_campaign")
    _import(api, stack, list_name, [f"bad-{stamp}@example.org"])
    content = {"name": name, "subject": "Hello {{ first_name }}", "html": "<p>Hi {{ first_name }}</p>"}
    audience = {"lists": list_name}
    sections = {"Content": content, "Audience": audience}
    expected = {"no subject": "subject", "unknown list": f"nosuch-{stamp}", "past send time": "send_date/send_time",
                "template error": "html"}[case]
    if case == "no subject":
        del content["subject"]
    elif case == "unknown list":
        audience["lists"] = f"nosuch-{stamp}"
    elif case == "template error":
        content["html"] = "<p>Hi {{ first_name </p>"
    elif case == "past send time":
        sections["When"] = {"send_date": "2020-01-01", "send_time": "09:00"}
    context, page = _log_in(browser, stack, "admin")
    before = _run_ids(api, "send_campaign")
    dialog = _trigger_form(page, stack, sections)
    if case == "past send time":
        dialog.locator("#element_when").click()
        dialog.get_by_text("At a date and time", exact=True).click()
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    run_id = _newest_run(api, "send_campaign", before)
    assert api.wait("send_campaign", run_id, timeout=300)["state"] == "failed"
    failed = [ti["task_id"] for ti in api.task_instances("send_campaign", run_id) if ti["state"] == "failed"]
    step = failed[0]
    assert step in ("resolve_campaign", "preflight")
    log = _task_log(api, "send_campaign", run_id, step)
    assert re.search(re.escape(expected), log), log[-2000:]
    _shot(page, f"form-refused-{case.replace(' ', '-')}")
    context.close()
    row = stack_db.execute("SELECT id FROM campaigns WHERE name = %s", [name]).fetchone()
    if row is not None:  # preflight refused a stored draft: nothing of it was snapshotted or sent
        assert _ledger(stack_db, row["id"]) == {state: 0 for state in LEDGER_STATES}
    else:
        assert step == "resolve_campaign"
