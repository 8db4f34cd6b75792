"""A campaign's message builder: its stored row (content and options) plus the settings -> a ready Composer.

The send loop, preflight and test sends all build their Composer here, so each sends exactly what the others check.
`read_message` turns one composed message back into what a person sees (the preview on the Campaigns view and the
tracking service's "view in browser" page use it), so a preview is the real message, never a second rendering.
"""

from __future__ import annotations

import html as html_lib
from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

from campaigns.config import Settings
from campaigns.feedback.tokens import TokenCodec
from campaigns.sending.addresses import normalize_address
from campaigns.sending.compose import CampaignContent, Composer
from campaigns.sending.list_id import ListId, derive_list_id, parse_list_id
from campaigns.sending.tracked_links import PREHEADER_END, PREHEADER_START


def composer_for(campaign: dict[str, Any], settings: Settings) -> Composer:
    """The per-campaign message builder: templates compiled once, links and headers prepared once."""
    options = campaign.get("settings") or {}
    content = CampaignContent(
        campaign_id=campaign["id"], subject=campaign["subject"], html=campaign["html"], text=campaign["text"],
        from_email=campaign["from_email"], from_name=campaign["from_name"], reply_to=campaign["reply_to"],
        auto_footer=options.get("auto_footer", True), preheader=campaign.get("preheader"),
        view_in_browser_footer=options.get("view_in_browser_footer", False), key=campaign.get("key"),
        list_id=list_id_for(campaign, settings))
    return Composer(content, tracking_base_url=settings.tracking_base_url,
                    codec=TokenCodec(settings.tracking_secret_keys),
                    track_opens=options.get("track_opens", True), track_clicks=options.get("track_clicks", True))


def list_id_for(campaign: dict[str, Any], settings: Settings) -> ListId:
    """The campaign's List-Id: its definition's `settings.list_id`, else its first audience list's, derived under
    LIST_ID_DOMAIN (default: the From domain); a campaign without lists (a bare row in a test) uses its key."""
    given = (campaign.get("settings") or {}).get("list_id")
    if given:
        return parse_list_id(given, "settings.list_id")
    lists = (campaign.get("audience") or {}).get("lists") or [campaign.get("key") or f"campaign-{campaign['id']}"]
    return derive_list_id(lists[0], normalize_address(campaign["from_email"], "from"), settings.list_id_domain)


@dataclass(frozen=True)
class ReadMessage:
    """One composed message as its reader sees it: the decoded subject, both bodies, every header and the
    preheader (the preview text inbox apps show after the subject)."""

    subject: str
    html: str
    text: str
    headers: list[tuple[str, str]]  # in order, decoded (RFC 2047 words as text)
    preheader: str  # the rendered preheader text as the html carries it; "" when the message has none


def read_message(raw: bytes) -> ReadMessage:
    """Parse a composed message (Composer.compose's bytes) back into its parts."""
    message = message_from_bytes(raw, policy=email_policy.default)
    assert isinstance(message, EmailMessage)
    html = _body_text(message, "html")
    return ReadMessage(subject=str(message["Subject"] or ""), html=html, text=_body_text(message, "plain"),
                       headers=[(name, str(value)) for name, value in message.items()],
                       preheader=preheader_of(html))


def _body_text(message: EmailMessage, subtype: str) -> str:
    """One body part's text with the line ends the Composer was given (the wire's CRLF turned back into LF)."""
    part = message.get_body((subtype,))
    return part.get_content().replace("\r\n", "\n") if part is not None else ""


def preheader_of(html: str) -> str:
    """The preheader text of a composed html body (the Composer's hidden block), "" when it has none."""
    start = html.find(PREHEADER_START)
    if start == -1:
        return ""
    start += len(PREHEADER_START)
    end = html.find(PREHEADER_END, start)
    # the Composer escapes the preheader's text, so its block holds no tag and ends at the first </div>
    return html_lib.unescape(html[start:end if end != -1 else len(html)])
