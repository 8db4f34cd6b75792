"""A campaign's message builder: its stored row (content and options) plus the settings -> a ready Composer.

The send loop, preflight and test sends all build their Composer here, so each sends exactly what the others check.
"""

from __future__ import annotations

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
