"""The Campaigns view: a FastAPI app that Airflow's api-server mounts (plugins/campaigns_plugin.py).

    GET /                           campaign list (?state=running, ?before=<id> pages on)
    GET /{campaign_id}              campaign page: funnel, rates against SES thresholds, series, links, ledger
    GET /{campaign_id}/stats.csv    the campaign's stats as CSV
    GET /static/...                 the view's stylesheet and icon (no data)

Every data route runs Airflow's own authorization: the caller must be logged into Airflow (the UI's session cookie
or a Bearer token) and allowed to read runs of the send_campaign DAG, whose runs these campaigns are. Anonymous
requests get 401, invalid tokens and users without that permission 403. Pages are rendered on the server (SVG
charts included), so the view needs no JavaScript and nothing from the internet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import psycopg
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from campaigns import db
from campaigns.config import Settings, get_settings
from campaigns_view import charts, data

HERE = Path(__file__).parent
MOUNT_PREFIX = "/campaigns"
SEND_DAG_ID = "send_campaign"


def _datetime(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(number=charts.number, percent=charts.percent, when=_datetime)
templates.env.globals.update(charts=charts, SES_BOUNCE=data.SES_REVIEW_BOUNCE_RATE,
                             SES_COMPLAINT=data.SES_REVIEW_COMPLAINT_RATE, SEND_DAG_ID=SEND_DAG_ID)

# Reading campaigns is reading send_campaign's runs: an auth manager that limits who sees which DAG (FAB, Keycloak)
# limits this view the same way. The simple auth manager lets every role from viewer up read them.
can_read_campaigns = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=SEND_DAG_ID)


def connection(request: Request) -> Iterator[psycopg.Connection]:
    """One campaign-database connection per request (autocommit: the pages only read)."""
    dsn = request.app.state.dsn
    if not dsn:
        dsn = db.resolve_postgres_dsn((request.app.state.settings or get_settings()).db_conn_id)
    with db.connect(dsn, autocommit=True) as conn:
        yield conn


# module level: FastAPI resolves these (string) annotations in the module's namespace
Conn = Annotated[psycopg.Connection, Depends(connection)]


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
    def campaign_page(request: Request, conn: Conn, campaign_id: int):
        try:
            page = data.campaign_page(conn, campaign_id)
        except data.CampaignNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        return templates.TemplateResponse(request, "campaign.html", {**_links(request), **page,
                                                                      **_campaign_charts(page)})

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
