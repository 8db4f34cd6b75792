"""A campaign's message builder: its stored row (content and options) plus the settings -> a ready Composer.

The send loop, preflight and test sends all build their Composer here, so each sends exactly what the others check.
`read_message` turns one composed message back into what a person sees (the preview on the Campaigns view and the
tracking service's "view in browser" page use it), so a preview is the real message, never a second rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

from campaigns.config import Settings
from campaigns.feedback.tokens import TokenCodec
from campaigns.sending.compose import CampaignContent, Composer


def composer_for(campaign: dict[str, Any], settings: Settings) -> Composer:
    """The per-campaign message builder: templates compiled once, links and headers prepared once."""
    options = campaign.get("settings") or {}
    content = CampaignContent(
        campaign_id=campaign["id"], subject=campaign["subject"], html=campaign["html"], text=campaign["text"],
        from_email=campaign["from_email"], from_name=campaign["from_name"], reply_to=campaign["reply_to"],
        auto_footer=options.get("auto_footer", True))
    return Composer(content, tracking_base_url=settings.tracking_base_url,
                    codec=TokenCodec(settings.tracking_secret_keys),
                    track_opens=options.get("track_opens", True), track_clicks=options.get("track_clicks", True))


@dataclass(frozen=True)
class ReadMessage:
    """One composed message as its reader sees it: the decoded subject, both bodies and every header."""

    subject: str
    html: str
    text: str
    headers: list[tuple[str, str]]  # in order, decoded (RFC 2047 words as text)
    preheader: str = ""  # placeholder until the MESSAGE part's read_message fills it (merged by the lead)


def read_message(raw: bytes) -> ReadMessage:
    """Parse a composed message (Composer.compose's bytes) back into its parts."""
    message = message_from_bytes(raw, policy=email_policy.default)
    assert isinstance(message, EmailMessage)
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    return ReadMessage(subject=str(message["Subject"] or ""),
                       html=html.get_content() if html is not None else "",
                       text=text.get_content() if text is not None else "",
                       headers=[(name, str(value)) for name, value in message.items()])
