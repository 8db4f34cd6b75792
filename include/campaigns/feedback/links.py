"""A campaign's tracked links (campaign_links): link_id is the index into `Composer.links`, the URL its target."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import psycopg

from campaigns import queries

MAX_URL_LENGTH = 8192


def is_redirectable(url: object) -> bool:
    """True for an absolute http(s) URL with a host and no control characters: the only redirect targets we use."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return False
    # CR/LF or other controls in a Location header would split the response
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def register_links(conn: psycopg.Connection, campaign_id: int, urls: Sequence[str]) -> int:
    """Store the campaign's tracked links (link_id = position); idempotent, returns how many rows were new.

    Call it with `Composer.links` before the first message of the campaign goes out. A rerun with the same
    list changes nothing; ids already stored keep their URL (links of a sent message must never change).
    """
    urls = list(urls)
    bad = [url for url in urls if not is_redirectable(url)]
    if bad:
        raise ValueError(f"campaign {campaign_id}: tracked links must be absolute http(s) URLs, got {bad[0]!r}")
    if not urls:
        return 0
    cur = conn.execute(queries.load("tracking")["register-links"],
                       {"campaign_id": campaign_id, "link_ids": list(range(len(urls))), "urls": urls})
    return cur.rowcount


def link_url(conn: psycopg.Connection, campaign_id: int, link_id: int) -> str | None:
    """The target of one tracked link, or None when the campaign has no such link."""
    row = conn.execute(queries.load("tracking")["link-url"],
                       {"campaign_id": campaign_id, "link_id": link_id}).fetchone()
    if row is None:
        return None
    return row["url"] if isinstance(row, dict) else row[0]
