"""The Campaigns view: a FastAPI app that Airflow's api-server mounts (plugins/campaigns_plugin.py).

    GET  /                           campaign list (?state=running, ?before=<id> pages on)
    GET  /{campaign_id}              campaign page: actions, live progress, preview search (?q=), test sends,
                                     funnel, rates against SES thresholds, series, links, ledger
    GET  /{campaign_id}/progress.json   state and ledger counts now (the page polls it every 2 s)
    GET  /{campaign_id}/preview      the message for ?recipient=<ledger id>, ?contact=<id> or sample.<field>=...
    GET  /{campaign_id}/preview.html its html, disarmed, under a CSP that lets nothing load
    GET  /{campaign_id}/stats.csv    the campaign's stats as CSV
    POST /{campaign_id}/actions/{pause|resume|cancel|release|start|release_unknown}
    POST /{campaign_id}/test-send    send_test_email to up to 20 addresses
    POST /{campaign_id}/duplicate    a new draft with the same content; redirects to it
    GET  /static/...                 the view's stylesheet, script and icon (no data)

Every data route runs Airflow's own authorization: the caller must be logged into Airflow (the UI's session cookie
or a Bearer token) and allowed to read runs of the send_campaign DAG, whose runs these campaigns are. Anonymous
requests get 401, invalid tokens and users without that permission 403. Every POST also needs the auth manager's
permission to trigger send_campaign runs (a Viewer gets 403), the user's CSRF token and a same-origin request
(guard.py); it is carried out by campaigns.lifecycle.control, the code of the campaign_control DAG, with the user's
name as the actor in campaign_actions, and answers with a redirect to the campaign page saying what was done, or a
409 page with the reason it was refused. Pages are rendered on the server (SVG charts included); the one script
polls progress.json and opens Airflow links in the Airflow UI. Nothing comes from the internet.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import psycopg
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.exceptions import AirflowException
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from campaigns import db
from campaigns.config import Settings, get_settings
from campaigns.errors import CampaignDefinitionError, CampaignNotFound, IllegalTransition
from campaigns.lifecycle import control, definitions, reconcile, testsend
from campaigns.lifecycle.testsend import MAX_RECIPIENTS, TestSendRequest
from campaigns_view import charts, data, guard, preview, runs

HERE = Path(__file__).parent
MOUNT_PREFIX = "/campaigns"
SEND_DAG_ID = control.SEND_DAG_ID
TEST_DAG_ID = "send_test_email"
SAMPLE_PREFIX = "sample."
# ?done=<word> on the campaign page after an action: only these words are shown, so a link cannot make the page
# say anything else
DONE = {**{spec.done: f"Campaign {spec.done}." for spec in control.ACTIONS.values()},
        "started": "Campaign started: its send run is queued; this page follows it.",
        control.ACTIONS[control.RELEASE_UNKNOWN].done: "Unknown recipients released: a send run is queued that sends "
                                                        "them once more; this page follows it.",
        "test_sent": "Test email asked for: the results appear under Test sends within seconds.",
        "duplicated": "This draft is a copy: same content, audience and settings, a new key."}


def _datetime(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(number=charts.number, percent=charts.percent, when=_datetime)
templates.env.globals.update(charts=charts, SES_BOUNCE=data.SES_REVIEW_BOUNCE_RATE,
                             SES_COMPLAINT=data.SES_REVIEW_COMPLAINT_RATE, SEND_DAG_ID=SEND_DAG_ID)

# Reading campaigns is reading send_campaign's runs: an auth manager that limits who sees which DAG (FAB, Keycloak)
# limits this view the same way. The simple auth manager lets every role from viewer up read them.
can_read_campaigns = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=SEND_DAG_ID)
# Acting on a campaign is starting or steering send_campaign runs: the check the REST API's POST dagRuns runs.
can_act_on_campaigns = requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=SEND_DAG_ID)


def acting_user(request: Request, user: GetUserDep,
                csrf_token: Annotated[str | None, Form(alias=guard.TOKEN_FIELD)] = None) -> str:
    """The name of the user a POST acts for, once the request is same-origin and carries the user's token."""
    guard.check_same_origin(request)
    guard.check_csrf(user.get_name(), csrf_token)
    return user.get_name()


Actor = Annotated[str, Depends(acting_user)]


def connection(request: Request) -> Iterator[psycopg.Connection]:
    """One campaign-database connection per request (autocommit: the pages only read)."""
    dsn = request.app.state.dsn
    if not dsn:
        dsn = db.resolve_postgres_dsn(app_settings(request).db_conn_id)
    with db.connect(dsn, autocommit=True) as conn:
        yield conn


# module level: FastAPI resolves these (string) annotations in the module's namespace
Conn = Annotated[psycopg.Connection, Depends(connection)]


def app_settings(request: Request) -> Settings:
    """The settings the app was made with, else the process's (read at the first request that needs them)."""
    return request.app.state.settings or get_settings()


AppSettings = Annotated[Settings, Depends(app_settings)]


def create_app(dsn: str | None = None, settings: Settings | None = None) -> FastAPI:
    """The view's app; `dsn` names the campaign database (default: the Airflow connection `settings.db_conn_id`)."""
    app = FastAPI(title="Campaigns", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dsn = dsn
    # None: the process's settings, read at the first request, not when the api-server imports the plugin (a bad
    # send-path setting must not keep the view from loading, as it never did)
    app.state.settings = settings
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        # The benchmark and the browser's network panel read how long the server took for a page.
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - started):.1f}"
        return response

    authorized = [Depends(can_read_campaigns)]

    @app.get("/", response_class=HTMLResponse, dependencies=authorized)
    def campaign_list(request: Request, conn: Conn, state: Annotated[str | None, Query()] = None,
                      before: Annotated[int | None, Query()] = None):
        try:
            listing = data.campaign_list(conn, status=state or None, before=before)
        except data.BadFilter as exc:
            raise HTTPException(400, str(exc)) from exc
        return templates.TemplateResponse(request, "list.html", {**_links(request), **listing})

    @app.get("/{campaign_id}", response_class=HTMLResponse, dependencies=authorized)
    def campaign_page(request: Request, conn: Conn, settings: AppSettings, user: GetUserDep, campaign_id: int,
                      q: Annotated[str | None, Query(max_length=254)] = None,
                      done: Annotated[str | None, Query()] = None):
        try:
            page = data.campaign_page(conn, campaign_id)
            campaign = definitions.load_campaign(conn, campaign_id)
        except CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        window = reconcile.window_for(settings)
        context = {**_links(request), **page, **_campaign_charts(page), **_controls(campaign, user),
                   "unsettled": reconcile.unsettled_of(conn, campaign_id, window),
                   "unknown_window": reconcile.hours_text(window), "RELEASE_UNKNOWN": control.RELEASE_UNKNOWN,
                   "done": DONE.get(done or ""), "query": q or "",
                   "matches": preview.search(conn, campaign, q) if q else None,
                   "searches_ledger": campaign["snapshot"] is not None,
                   "samples": testsend.sample_form_values(campaign, settings, {}),
                   "test_sends": data.recent_test_sends(conn, campaign_id),
                   "progress": data.progress(conn, campaign_id), "MAX_TEST_RECIPIENTS": MAX_RECIPIENTS}
        return templates.TemplateResponse(request, "campaign.html", context)

    @app.get("/{campaign_id}/progress.json", dependencies=authorized)
    def campaign_progress(conn: Conn, campaign_id: int) -> JSONResponse:
        try:
            return JSONResponse(data.progress(conn, campaign_id), headers={"Cache-Control": "no-store"})
        except CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/{campaign_id}/preview", response_class=HTMLResponse, dependencies=authorized)
    def campaign_preview(request: Request, conn: Conn, settings: AppSettings, campaign_id: int):
        campaign, shown = _preview(request, conn, settings, campaign_id)
        query = urlencode(list(request.query_params.multi_items()))
        return templates.TemplateResponse(request, "preview.html", {
            **_links(request), "campaign": campaign, "preview": shown, "html_query": query,
            "samples": testsend.sample_form_values(campaign, settings, _sample_given(request))},
            status_code=422 if shown.error else 200)

    @app.get("/{campaign_id}/preview.html", dependencies=authorized)
    def campaign_preview_html(request: Request, conn: Conn, settings: AppSettings, campaign_id: int) -> Response:
        _, shown = _preview(request, conn, settings, campaign_id)
        body = shown.html if shown.error is None else "<!DOCTYPE html><p>The message does not render.</p>"
        return HTMLResponse(body, headers={"Content-Security-Policy": preview.CSP, "Referrer-Policy": "no-referrer",
                                           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    acting = [Depends(can_act_on_campaigns)]

    @app.post("/{campaign_id}/actions/{action}", dependencies=acting)
    def campaign_action(request: Request, conn: Conn, settings: AppSettings, actor: Actor, campaign_id: int,
                        action: str) -> Response:
        if action not in control.ACTIONS:
            raise HTTPException(404, f"no action {action!r}; actions are: {', '.join(control.ACTIONS)}")
        try:
            result = control.apply_action(conn, campaign_id, action, actor=actor,
                                          run_is_active=lambda run_id: runs.run_is_active(SEND_DAG_ID, run_id),
                                          unknown_window=reconcile.window_for(settings))
        except CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except IllegalTransition as exc:
            return _refused(request, campaign_id, str(exc), 409)
        if result.trigger_run_id:
            try:
                runs.trigger(SEND_DAG_ID, run_id=result.trigger_run_id, conf={"campaign_id": campaign_id},
                             username=actor)
            except AirflowException as exc:
                return _refused(request, campaign_id, (
                    f"{action} was recorded, but its send run could not be started: {exc}. Trigger send_campaign "
                    f"with run id {result.trigger_run_id} and conf {{\"campaign_id\": {campaign_id}}} to finish it."),
                    502)
        return _back(request, campaign_id, control.ACTIONS[action].done)

    @app.post("/{campaign_id}/test-send", dependencies=acting)
    def campaign_test_send(request: Request, conn: Conn, actor: Actor, campaign_id: int,
                           recipients: Annotated[str, Form(max_length=20_000)] = "",
                           sample_values: Annotated[str, Form(max_length=20_000)] = "") -> Response:
        conf = {"campaign_id": campaign_id, "recipients": _lines(recipients.replace(",", "\n")),
                "sample_values": testsend.parse_sample_lines(_lines(sample_values))}
        try:
            definitions.load_campaign(conn, campaign_id)
            checked = TestSendRequest.parse(conf)
        except CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except CampaignDefinitionError as exc:
            return _refused(request, campaign_id, str(exc), 400)
        conf["recipients"] = list(checked.recipients)
        run_id = f"campaigns_view__test__campaign_{campaign_id}__{datetime.now(UTC):%Y%m%dT%H%M%S}__" \
                 f"{uuid.uuid4().hex[:8]}"
        try:
            runs.trigger(TEST_DAG_ID, run_id=run_id, conf=conf, username=actor)
        except AirflowException as exc:
            return _refused(request, campaign_id, f"the test email could not be started: {exc}", 502)
        control.record_test_send(conn, campaign_id, conf["recipients"], actor=actor, run_id=run_id)
        return _back(request, campaign_id, "test_sent")

    @app.post("/{campaign_id}/duplicate", dependencies=acting)
    def campaign_duplicate(request: Request, conn: Conn, actor: Actor, campaign_id: int) -> Response:
        try:
            copy = control.duplicate_campaign(conn, campaign_id, actor=actor)
        except CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return _back(request, copy["id"], "duplicated")

    @app.get("/{campaign_id}/stats.csv", dependencies=authorized)
    def campaign_csv(conn: Conn, campaign_id: int) -> Response:
        try:
            text = data.stats_csv(conn, campaign_id)
        except data.CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="campaign-{campaign_id}-stats.csv"'})

    return app


def _links(request: Request) -> dict[str, str]:
    """Where this app and the Airflow UI are, from the path the api-server mounted the app under."""
    root = request.scope.get("root_path", "").rstrip("/")
    return {"app_root": root, "airflow_root": root.removesuffix(MOUNT_PREFIX)}


def _controls(campaign: dict[str, Any], user) -> dict[str, Any]:
    """The actions the campaign's state allows, whether this user may take them, and the user's CSRF token."""
    allowed = [spec for spec in control.ACTIONS.values() if campaign["status"] in spec.allowed_from
               and not (spec.name == control.START and campaign["recurrence"])]
    may_act = runs.may_trigger(user, SEND_DAG_ID)
    return {"allowed_actions": allowed, "may_act": may_act,
            "csrf_field": guard.TOKEN_FIELD, "csrf_token": guard.csrf_token(user.get_name()) if may_act else ""}


def _preview(request: Request, conn: psycopg.Connection, settings: Settings,
             campaign_id: int) -> tuple[dict[str, Any], preview.Preview]:
    """The campaign and its preview for the query's choice: ?recipient=, ?contact=, else sample.<field> values."""
    try:
        campaign = definitions.load_campaign(conn, campaign_id)
        recipient, contact = (_int_param(request, name) for name in ("recipient", "contact"))
        if recipient is not None:
            return campaign, preview.for_ledger_row(conn, campaign, settings, recipient)
        if contact is not None:
            return campaign, preview.for_contact(conn, campaign, settings, contact)
    except CampaignNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    return campaign, preview.for_sample(campaign, settings, _sample_given(request))


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise HTTPException(400, f"{name} must be a whole number, got {value!r}")
    return int(value)


def _sample_given(request: Request) -> dict[str, str]:
    return {name.removeprefix(SAMPLE_PREFIX): value for name, value in request.query_params.items()
            if name.startswith(SAMPLE_PREFIX)}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _back(request: Request, campaign_id: int, done: str) -> RedirectResponse:
    """303 to the campaign page (a reload does not repeat the POST), which says what was done."""
    return RedirectResponse(f"{_links(request)['app_root']}/{campaign_id}?done={done}", status_code=303)


def _refused(request: Request, campaign_id: int, reason: str, status: int) -> HTMLResponse:
    return templates.TemplateResponse(request, "refused.html", {**_links(request), "campaign_id": campaign_id,
                                                                 "reason": reason}, status_code=status)


def _campaign_charts(page: dict[str, Any]) -> dict[str, Any]:
    s = page["stats"]
    rates = s["rates"]
    funnel = charts.funnel([
        ("Recipients", "recipients", s["recipients"]),
        ("Sent", "sent", s["sent"]),
        ("Delivered", "delivered", s["delivered"]),
        ("Opened (all)", "opened", s["unique_opens"]),
        ("Opened (people)", "opened_human", s["unique_human_opens"]),
        ("Clicked (all)", "clicked", s["unique_clicks"]),
        ("Clicked (people)", "clicked_human", s["unique_human_clicks"]),
    ], base=s["recipients"])

    def gauge(name: str, label: str, threshold: float | None, digits: int) -> dict[str, Any]:
        return {"name": name, "label": label, "threshold": threshold, "digits": digits, **rates[name]}

    rate_chart = charts.rate_gauges([
        gauge("bounce", "Bounce rate", data.SES_REVIEW_BOUNCE_RATE, 2),
        gauge("complaint", "Complaint rate", data.SES_REVIEW_COMPLAINT_RATE, 3),
        gauge("unsubscribe", "Unsubscribe rate", None, 2),
    ])
    lines = [("opens", "Opens"), ("clicks", "Clicks")]
    hourly = charts.time_series("hourly", "Opens and clicks per hour (first week)", page["hourly"], lines,
                                label_format="%d %b %H:00") if page["hourly"] else None
    daily = charts.time_series("daily", "Opens and clicks per day (after the first week)", page["daily"], lines,
                               label_format="%d %b") if page["daily"] else None
    links = charts.bar_list("links", "Clicks per link", [
        (link["url"] or f"link {link['link_id']}", link["unique_clicks"],
         f"{charts.plural(link['unique_clicks'], 'person', 'people')}, {charts.plural(link['clicks'], 'click')}")
        for link in s["links"]]) if s["links"] else None
    ledger = charts.stacked_bar("ledger", "Ledger: where every recipient is",
                                [(state, s[state]) for state in data.LEDGER_STATES])
    return {"funnel_chart": funnel, "rate_chart": rate_chart, "hourly_chart": hourly, "daily_chart": daily,
            "links_chart": links, "ledger_chart": ledger}
