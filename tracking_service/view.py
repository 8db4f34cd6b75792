""""View in browser": GET /v/<token> shows one recipient the message they received, as a web page.

The page is that recipient's message composed again by the send path's own Composer (composer_for + compose, then
read_message) from the campaign's content and the merge data frozen in the ledger at snapshot, so it is the same
message, never a second rendering. Opens are off for it: viewing in the browser is not an open, and the page holds
no tracking pixel of its own; its links stay the recipient's tracked links. The headers forbid scripts, framing,
caching and referrers (the html is the campaign author's; the URL is the recipient's).

Anything but a valid view token of a ledger row that was sent (or unknown: it may have been) is 404 with a plain
page and nothing rendered. The route is rare, so it reads PostgreSQL directly; the open and click routes do not
wait on it. Compiling a campaign's templates costs milliseconds, so the last few campaigns' Composers are kept,
keyed by campaign id and updated_at (a changed campaign gets a new one).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psycopg
from flask import Blueprint, current_app, render_template

from campaigns import queries
from campaigns.errors import ComposeError, InvalidToken
from campaigns.feedback.tokens import VIEW
from campaigns.sending.compose import Composer
from campaigns.sending.ledger import merge_fields
from campaigns.sending.messages import composer_for, read_message
from campaigns.states import Row
from tracking_service.tracking import get_codec, get_db

log = logging.getLogger(__name__)

bp = Blueprint("view", __name__)

# A received message seen by its reader: nothing runs, nothing loads (a remote image is a read receipt for whoever
# serves it, and the page must count as no open), nothing frames it, nothing is kept or told where it came from.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}
RECEIVED = (Row.SENT, Row.UNKNOWN)
COMPOSER_CACHE_SIZE = 16


class ComposerCache:
    """A small LRU of built Composers, shared by a worker's threads."""

    def __init__(self, size: int = COMPOSER_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[tuple[Any, ...], Composer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], build: Callable[[], Composer]) -> Composer:
        """The Composer cached under `key`, built (outside the lock: it is CPU work) when there is none."""
        with self._lock:
            composer = self._items.get(key)
            if composer is not None:
                self._items.move_to_end(key)
                return composer
        composer = build()
        with self._lock:
            self._items[key] = composer
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return composer


def _composers() -> ComposerCache:
    """The app's Composer cache (one per worker process: gunicorn forks before the first request)."""
    cache = current_app.extensions.get("view_composers")
    if cache is None:
        cache = current_app.extensions["view_composers"] = ComposerCache()
    return cache


def _page(title: str, message: str, status: int, **headers: str):
    return render_template("error.html", title=title, message=message), status, {**PAGE_HEADERS, **headers}


def _not_found():
    return _page("Message not found", "This link does not show a message. It may have been copied incompletely.",
                 404)


def _composer_without_opens(campaign: dict[str, Any]) -> Composer:
    """The campaign's Composer as the send path builds it, with the open pixel left out."""
    options = {**(campaign["settings"] or {}), "track_opens": False}
    return composer_for({**campaign, "settings": options}, current_app.config["SETTINGS"])


def _load(campaign_id: int, recipient_id: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(ledger row, campaign) of a received message, or None."""
    conn = get_db()
    sql = queries.load("tracking")
    row = conn.execute(sql["view-recipient"], {"campaign_id": campaign_id, "recipient_id": recipient_id,
                                               "statuses": list(RECEIVED)}).fetchone()
    if row is None:
        return None
    return row, conn.execute(sql["view-campaign"], {"campaign_id": campaign_id}).fetchone()


@bp.get("/v/<token>")
def view_in_browser(token: str):
    """The recipient's message as a web page; 404 for anything that is not a received message."""
    try:
        payload = get_codec().decode(VIEW, token)
    except InvalidToken:
        return _not_found()
    try:
        found = _load(payload.campaign_id, payload.recipient_id)
    except psycopg.OperationalError:
        log.exception("view in browser of campaign %s: database unavailable", payload.campaign_id)
        return _page("Try again", "This message cannot be shown right now. Please try again in a minute.", 503,
                     **{"Retry-After": "60"})
    if found is None:
        return _not_found()
    row, campaign = found
    try:
        composer = _composers().get((campaign["id"], campaign["updated_at"]),
                                    lambda: _composer_without_opens(campaign))
        message = read_message(composer.compose(row["id"], row["email"], merge_fields(row)))
    except ComposeError:
        log.exception("view in browser of campaign %s recipient %s: the message cannot be composed",
                      payload.campaign_id, payload.recipient_id)
        return _page("Message unavailable", "This message cannot be shown.", 500)
    return message.html, 200, {**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"}
