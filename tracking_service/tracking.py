"""Open pixel, click redirect and one-click unsubscribe (RFC 8058).

- GET /o/<token>.gif  always the 43-byte GIF with no-cache headers; a valid token buffers an open event.
- GET /c/<token>      302 to the campaign's link `link_id` (campaign_links, http/https only) and buffers a click;
                      anything else is 404 and never redirects.
- GET /u/<token>      a confirmation page with a button; changes nothing (link scanners fetch GET).
- POST /u/<token>     `List-Unsubscribe=One-Click` (form-urlencoded or multipart; the page's button sends it too):
                      suppress the address, unsubscribe its list memberships and record the event, synchronously in
                      PostgreSQL, then 200 with a page. No redirect, no cookie, idempotent.

Opens and clicks go to a spool on local disk (tracking_service.spool) and are flagged, never dropped, when they
look like machines: Apple Mail Privacy Protection prefetches, link scanners, HEAD requests.
"""

from __future__ import annotations

import ipaddress
import logging
import re

import psycopg
from flask import Blueprint, Response, current_app, g, render_template, request
from psycopg.types.json import Jsonb

from campaigns import db, queries
from campaigns.errors import InvalidToken
from campaigns.feedback import links
from campaigns.feedback.tokens import CLICK, OPEN, UNSUBSCRIBE, TokenCodec
from tracking_service.spool import Spool, buffer_event

log = logging.getLogger(__name__)

bp = Blueprint("tracking", __name__)

# 1x1 transparent GIF89a: header, screen descriptor, 2-colour table, graphic control (transparent), image, trailer.
PIXEL_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
             b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
NO_CACHE = {
    # every open must reach us: no browser, proxy or CDN may answer from a cache
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
}

# Apple's Mail Privacy Protection fetches images through proxies in Apple's 17.0.0.0/8 (unverified heuristic).
APPLE_PROXY_NETWORK = ipaddress.ip_network("17.0.0.0/8")
# The MPP prefetcher has been reported to send this bare user agent; a real mail client sends more.
APPLE_PROXY_USER_AGENTS = frozenset({"mozilla/5.0"})
# Substrings of user agents of link scanners, security gateways, previewers and scripts (lower case).
SCANNER_AGENTS = (
    "bot", "crawler", "spider", "scanner", "preview", "barracuda", "proofpoint", "mimecast", "symantec",
    "messagelabs", "trendmicro", "fortiguard", "forcepoint", "safelinks", "urldefense", "ironport", "sophos",
    "python-requests", "python-urllib", "aiohttp", "curl/", "wget/", "go-http-client", "java/", "okhttp",
    "libwww", "headlesschrome", "phantomjs", "microsoft office", "ms-office",
)
_SCANNER_RE = re.compile("|".join(re.escape(agent) for agent in SCANNER_AGENTS))  # one scan instead of 31
_LINK_CACHE_MAX = 10_000
_link_cache: dict[tuple[int, int], str] = {}  # links never change once registered: cache per process


def get_db() -> psycopg.Connection:
    """The request's campaign database connection, opened on first use and closed in teardown."""
    if "db" not in g:
        settings = current_app.config["SETTINGS"]
        g.db = db.connect(db.resolve_postgres_dsn(settings.db_conn_id), connect_timeout=5)
    return g.db


def close_db(exc: BaseException | None = None) -> None:
    """Release the request's connection (rolls back whatever a failed request left open)."""
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def get_spool() -> Spool:
    """The process's spool writer (create_app made it; it opens its segment file lazily, after gunicorn forked)."""
    return current_app.extensions["tracking_spool"]


def get_codec() -> TokenCodec:
    """The token codec built from TRACKING_SECRET_KEYS (the same keys the send path signs with)."""
    codec = current_app.extensions.get("tracking_codec")
    if codec is None:
        codec = TokenCodec(current_app.config["SETTINGS"].tracking_secret_keys)
        current_app.extensions["tracking_codec"] = codec
    return codec


def _client_ip() -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address if it is one (ProxyFix, when configured, has already put the forwarded one here)."""
    try:
        return ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return None


def _ip_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str | None:
    return None if ip is None else str(ip)


def _user_agent() -> str:
    return request.headers.get("User-Agent", "")


def machine_open_reasons(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None, user_agent: str,
                         method: str = "GET") -> list[str]:
    """Why an open looks like a machine fetch rather than a person reading (empty: looks human)."""
    reasons = []
    if ip is not None:
        addr = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv4Address) and addr in APPLE_PROXY_NETWORK:
            reasons.append("apple_proxy_ip")
    ua = user_agent.strip().lower()
    if ua in APPLE_PROXY_USER_AGENTS:
        reasons.append("apple_proxy_user_agent")
    elif not ua:
        reasons.append("no_user_agent")
    elif _SCANNER_RE.search(ua):
        reasons.append("scanner_user_agent")
    if method == "HEAD":
        reasons.append("head_request")
    return reasons


def machine_click_reasons(user_agent: str, method: str) -> list[str]:
    """Why a click looks like a link scanner (the drainer adds clicks within seconds of the send)."""
    reasons = []
    if method == "HEAD":
        reasons.append("head_request")
    ua = user_agent.strip().lower()
    if not ua:
        reasons.append("no_user_agent")
    elif _SCANNER_RE.search(ua):
        reasons.append("scanner_user_agent")
    return reasons


def _decode(kind: str, token: str):
    try:
        return get_codec().decode(kind, token)
    except InvalidToken:
        return None


@bp.get("/o/<token>.gif")
def open_pixel(token: str) -> Response:
    """The open pixel: the same GIF for every token, an open event only for a valid one."""
    payload = _decode(OPEN, token)
    if payload is not None:
        ip, ua = _client_ip(), _user_agent()
        reasons = machine_open_reasons(ip, ua, request.method)
        try:
            buffer_event(get_spool(), type="open", campaign_id=payload.campaign_id,
                         recipient_id=payload.recipient_id, ip=_ip_text(ip), user_agent=ua,
                         is_machine=bool(reasons), reasons=reasons, method=request.method)
        except OSError:
            # the reader still gets the image; the lost open is logged for the operator
            log.exception("open of campaign %s recipient %s not recorded: the spool refused it", payload.campaign_id,
                          payload.recipient_id)
    return Response(PIXEL_GIF, status=200, mimetype="image/gif", headers=NO_CACHE)


def _link_target(campaign_id: int, link_id: int) -> str | None:
    key = (campaign_id, link_id)
    url = _link_cache.get(key)
    if url is None:
        url = links.link_url(get_db(), campaign_id, link_id)
        if url is None or not links.is_redirectable(url):
            return None
        if len(_link_cache) >= _LINK_CACHE_MAX:
            _link_cache.clear()  # crude but bounded; a miss only costs one indexed lookup
        _link_cache[key] = url
    return url


def _not_found_page(message: str) -> tuple[str, int, dict[str, str]]:
    return render_template("error.html", title="Link not found", message=message), 404, {"Cache-Control": "no-store"}


@bp.route("/c/<token>", methods=["GET", "HEAD"])
def click(token: str):
    """Redirect to the campaign's link named by a valid click token; 404 for anything else."""
    payload = _decode(CLICK, token)
    if payload is None or payload.link_id is None:
        return _not_found_page("This link is not valid. It may have been copied incompletely.")
    try:
        url = _link_target(payload.campaign_id, payload.link_id)
    except psycopg.OperationalError:
        # a link this worker has not cached yet, with the database down: no target to send the reader to
        log.exception("click of campaign %s: link %s not resolvable, database unavailable", payload.campaign_id,
                      payload.link_id)
        page = render_template("error.html", title="Try again",
                               message="This link cannot be opened right now. Please try again in a minute.")
        return page, 503, {"Cache-Control": "no-store", "Retry-After": "60"}
    if url is None:
        return _not_found_page("This link does not exist (any more).")
    ua, method = _user_agent(), request.method
    reasons = machine_click_reasons(ua, method)
    try:
        buffer_event(get_spool(), type="click", campaign_id=payload.campaign_id,
                     recipient_id=payload.recipient_id, link_id=payload.link_id,
                     ip=_ip_text(_client_ip()), user_agent=ua, is_machine=bool(reasons),
                     reasons=reasons, method=method)
    except OSError:
        # the person still reaches the page; the lost click is logged for the operator
        log.exception("click of campaign %s recipient %s not recorded: the spool refused it", payload.campaign_id,
                      payload.recipient_id)
    return Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


def _unsubscribe_error(status: int, message: str):
    return (render_template("error.html", title="Unsubscribe", message=message), status,
            {"Cache-Control": "no-store"})


def _ledger_row(payload) -> dict | None:
    return get_db().execute(queries.load("tracking")["unsubscribe-recipient"],
                            {"campaign_id": payload.campaign_id, "recipient_id": payload.recipient_id}).fetchone()


def _mask(email: str) -> str:
    """a***@example.com: enough for the reader to recognise the address, not enough to harvest it."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


@bp.get("/u/<token>")
def unsubscribe_page(token: str):
    """The confirmation page; GET never changes anything, because scanners and previewers fetch it."""
    payload = _decode(UNSUBSCRIBE, token)
    if payload is None:
        return _unsubscribe_error(404, "This unsubscribe link is not valid. It may have been copied incompletely.")
    try:
        row = _ledger_row(payload)
    except psycopg.OperationalError:
        log.exception("unsubscribe page: database unavailable")
        return _unsubscribe_error(503, "We cannot process this right now. Please try again in a few minutes.")
    if row is None:
        return _unsubscribe_error(404, "This unsubscribe link is not valid (any more).")
    get_db().rollback()
    return (render_template("unsubscribe_confirm.html", email=_mask(row["email"]), action=request.path), 200,
            {"Cache-Control": "no-store"})


def _is_one_click() -> bool:
    if request.form.get("List-Unsubscribe") == "One-Click":
        return True
    # some senders of one-click POSTs omit the Content-Type; accept the exact RFC 8058 body anyway
    return request.get_data(cache=True, as_text=False).strip() == b"List-Unsubscribe=One-Click"


@bp.post("/u/<token>")
def unsubscribe(token: str):
    """RFC 8058 one-click unsubscribe (also the confirmation page's button): 200, no redirect, idempotent."""
    payload = _decode(UNSUBSCRIBE, token)
    if payload is None:
        return _unsubscribe_error(404, "This unsubscribe link is not valid. It may have been copied incompletely.")
    if not _is_one_click():
        return _unsubscribe_error(400, "This request did not ask to unsubscribe (List-Unsubscribe=One-Click).")
    sql = queries.load("tracking")
    from_page = request.form.get("source") == "page"
    try:
        conn = get_db()
        # synchronous and in one transaction: the send path re-checks suppressions before each send, so the
        # address is skipped from the next message on, and the three writes land together or not at all
        with conn.transaction():
            row = _ledger_row(payload)
            if row is None:
                return _unsubscribe_error(404, "This unsubscribe link is not valid (any more).")
            conn.execute(sql["suppress-unsubscribe"],
                         {"email": row["email"], "detail": f"campaign {payload.campaign_id}"})
            conn.execute(sql["unsubscribe-list-members"], {"contact_id": row["contact_id"], "email": row["email"]})
            conn.execute(sql["record-unsubscribe-event"], {
                "campaign_id": payload.campaign_id, "recipient_id": payload.recipient_id, "email": row["email"],
                "subtype": "confirm_page" if from_page else "one_click", "ip": _ip_text(_client_ip()),
                "user_agent": _user_agent()[:512] or None, "payload": Jsonb({"method": "POST"}),
            })
    except psycopg.OperationalError:
        log.exception("unsubscribe of campaign %s recipient %s failed: database unavailable",
                      payload.campaign_id, payload.recipient_id)
        return _unsubscribe_error(503, "We could not unsubscribe you right now. Please try again in a few minutes.")
    return render_template("unsubscribe_done.html", email=_mask(row["email"])), 200, {"Cache-Control": "no-store"}
