"""The campaign page's preview: the real message for one recipient, made safe to look at.

One rendering path with the send: `composer_for` + `Composer.compose` + `read_message`, so what the page shows is
the message SES would get (subject, preheader, text part, every header, html). Three ways to pick whose message:

- a ledger row (a campaign that has its snapshot): its frozen merge data and its real row id, "as recipient X
  received it" (the List-Unsubscribe header carries that row's token);
- a contact of a draft's audience: the merge data the snapshot would freeze, recipient id 0 (no ledger row);
- sample values for the fields the templates use (`Composer.fields`), recipient id 0.

Looking must not count as reading or clicking. The html is served only through the preview.html route, with a
Content-Security-Policy that lets nothing load (no scripts, no network; inline styles and data: images only),
inside an <iframe sandbox="">. A sandboxed frame may still navigate itself when a link is clicked, so every link
loses its href: the tracked URL carries a real token, and following it would record a click (or, for the
unsubscribe link, unsubscribe the recipient). The link keeps its text, and its title and `data-preview-target`
name where it leads (the original target of a tracked link, decoded from its signed token); the page lists the
targets as text. The open pixel is removed outright.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import lxml.html
import psycopg
from psycopg import sql

from campaigns import queries
from campaigns.audience.filters import Audience
from campaigns.config import Settings
from campaigns.errors import CampaignDefinitionError, CampaignNotFound, InvalidToken
from campaigns.feedback.tokens import CLICK, TokenCodec
from campaigns.lifecycle.testsend import TEST_RECIPIENT_ID, sample_values
from campaigns.sending import ledger
from campaigns.sending.messages import composer_for, read_message
from campaigns_view.data import QUERIES

SAMPLE_ADDRESS = "recipient@example.com"
SEARCH_LIMIT = 10
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"


@dataclass(frozen=True)
class Preview:
    """What the preview section shows; `error` (a template that does not render) replaces the rest."""

    who: str
    subject: str = ""
    preheader: str = ""
    text: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    html: str = ""
    links: list[str] = field(default_factory=list)
    error: str | None = None


def render(campaign: dict[str, Any], settings: Settings, *, who: str, recipient_id: int, to: str,
           merge_data: dict[str, Any]) -> Preview:
    """Compose the message exactly as the send would, then read it back and disarm its links."""
    try:
        composer = composer_for(campaign, settings)
        message = read_message(composer.compose(recipient_id, to, merge_data))
    except ValueError as exc:  # TemplateProblem, AddressProblem: the analyst fixes the campaign
        return Preview(who=who, error=str(exc))
    html, links = disarm(message.html, composer.links, settings)
    return Preview(who=who, subject=message.subject, preheader=message.preheader,
                   text=disarm_text(message.text, composer.links, settings), headers=message.headers, html=html,
                   links=links)


def for_ledger_row(conn: psycopg.Connection, campaign: dict[str, Any], settings: Settings, row_id: int) -> Preview:
    """The message of one ledger row, from its frozen merge data and its own id."""
    row = conn.execute(queries.load("view", QUERIES)["ledger-row"],
                       {"campaign_id": campaign["id"], "id": row_id}).fetchone()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign['id']} has no recipient {row_id}")
    return render(campaign, settings, who=f"as {row['email']} received it ({row['status']})", recipient_id=row["id"],
                  to=row["email"], merge_data=ledger.merge_fields(row))


def for_contact(conn: psycopg.Connection, campaign: dict[str, Any], settings: Settings, contact_id: int) -> Preview:
    """The message a contact of the (not yet frozen) audience would get."""
    matches = audience_members(conn, campaign, contact_id=contact_id)
    if not matches:
        raise CampaignNotFound(f"contact {contact_id} is not in the audience of campaign {campaign['id']}")
    (row,) = matches
    return render(campaign, settings, who=f"as {row['email']} would get it", recipient_id=TEST_RECIPIENT_ID,
                  to=row["email"], merge_data=ledger.merge_fields(row))


def for_sample(campaign: dict[str, Any], settings: Settings, given: dict[str, str]) -> Preview:
    """The message rendered with sample values."""
    values = sample_values(campaign, settings, given)
    return render(campaign, settings, who="with sample values", recipient_id=TEST_RECIPIENT_ID, to=SAMPLE_ADDRESS,
                  merge_data={**values, "email": values.get("email", SAMPLE_ADDRESS)})


def search(conn: psycopg.Connection, campaign: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """Up to 10 recipients whose address is `text` or starts with it: ledger rows once the audience is frozen,
    else the draft's audience members."""
    prefix = text.strip().lower()
    if not prefix:
        return []
    if campaign["snapshot"] is not None:
        return conn.execute(queries.load("view", QUERIES)["ledger-search"],
                            {"campaign_id": campaign["id"], "prefix": prefix, "limit": SEARCH_LIMIT}).fetchall()
    return audience_members(conn, campaign, prefix=prefix)


def audience_members(conn: psycopg.Connection, campaign: dict[str, Any], *, prefix: str | None = None,
                     contact_id: int | None = None) -> list[dict[str, Any]]:
    """Sendable members of the campaign's audience (exactly whom the snapshot would freeze) by prefix or id."""
    try:
        audience = Audience.parse(campaign["audience"])
    except CampaignDefinitionError:
        return []
    members, params = ledger.audience_query("audience-preview", audience)
    search_sql = sql.SQL(queries.load("view", QUERIES)["audience-search"]).format(members=members)
    return conn.execute(search_sql, {**params, "limit": None, "prefix": prefix, "contact_id": contact_id,
                                     "shown": SEARCH_LIMIT}).fetchall()


def disarm(html: str, links: list[str], settings: Settings) -> tuple[str, list[str]]:
    """The html with no link that can be followed and no open pixel; returns it and the link targets shown."""
    base = settings.tracking_base_url.rstrip("/")
    codec = TokenCodec(settings.tracking_secret_keys)
    doc = lxml.html.document_fromstring(html)
    targets: list[str] = []
    for element in doc.iter("a", "area"):
        href = element.attrib.pop("href", None)
        if href is None:
            continue
        target = link_target(href, base, codec, links)
        element.set("data-preview-target", target)
        element.set("title", f"{target} (links are off in the preview)")
        targets.append(target)
    for image in list(doc.iter("img")):
        if (image.get("src") or "").startswith(f"{base}/o/"):
            image.drop_tree()
    for meta in list(doc.iter("meta")):
        if (meta.get("http-equiv") or "").lower() == "refresh":
            meta.drop_tree()
    return lxml.html.tostring(doc, doctype="<!DOCTYPE html>", encoding="unicode"), list(dict.fromkeys(targets))


def disarm_text(text: str, links: list[str], settings: Settings) -> str:
    """The text part with each tracked link (click, unsubscribe) shown as where it leads, so copying one out of
    the preview records nothing for the recipient."""
    base = settings.tracking_base_url.rstrip("/")
    codec = TokenCodec(settings.tracking_secret_keys)
    tracked = re.compile(re.escape(base) + r"/[cu]/[A-Za-z0-9_-]+")
    return tracked.sub(lambda match: link_target(match[0], base, codec, links), text)


def link_target(href: str, base: str, codec: TokenCodec, links: list[str]) -> str:
    """Where a link leads, for a person: a tracked link's original target, the unsubscribe link named as such."""
    if href.startswith(f"{base}/c/"):
        try:
            return links[codec.decode(CLICK, href.removeprefix(f"{base}/c/")).link_id]
        except (InvalidToken, IndexError, TypeError):
            return href
    if href.startswith(f"{base}/u/"):
        return "the one-click unsubscribe link"
    return href
