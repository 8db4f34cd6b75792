"""Campaign definitions against the real campaign database: the new fields, test-first storing, the key rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaigns.errors import CampaignDefinitionError
from campaigns.lifecycle import definitions
from tests.helpers import inline_campaign

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def store(db, *, keep_timing=False, **overrides):
    definition = definitions.CampaignDefinition.parse(inline_campaign(**overrides))
    return definitions.upsert_campaign(db, definition, now=NOW, keep_timing=keep_timing)


def test_preheader_and_the_view_in_browser_setting_are_stored(db):
    row = store(db, preheader="Our picks", settings={"view_in_browser_footer": True})

    assert row["preheader"] == "Our picks"
    assert row["settings"] == {"view_in_browser_footer": True}


def test_the_schema_accepts_preheader_exclude_lists_and_the_view_in_browser_setting():
    definitions.validate_inline(inline_campaign(preheader="p", settings={"view_in_browser_footer": False},
                                                audience={"lists": ["a"], "exclude_lists": ["vip"]}))


@pytest.mark.parametrize(("campaign", "message"), [
    (inline_campaign(preheader=3), r"campaign\.preheader: 3 is not of type"),
    (inline_campaign(audience={"lists": ["a"], "exclude_lists": "vip"}), r"campaign\.audience\.exclude_lists"),
    (inline_campaign(settings={"view_in_browser_footer": "yes"}), r"campaign\.settings\.view_in_browser_footer"),
])
def test_the_schema_refuses_wrong_types_of_the_new_fields(campaign, message):
    with pytest.raises(CampaignDefinitionError, match=message):
        definitions.validate_inline(campaign)


def test_a_draft_is_revised_by_the_same_key_with_new_content(db):
    first = store(db)
    revised = store(db, subject="Fixed subject")

    assert revised["id"] == first["id"]
    assert revised["subject"] == "Fixed subject"
    assert db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"] == 1


def test_a_sent_campaign_refuses_new_content_naming_the_key(db):
    row = store(db)
    db.execute("UPDATE campaigns SET status = 'sent' WHERE id = %s", [row["id"]])

    with pytest.raises(CampaignDefinitionError, match=r"^key 'nov-news' belongs to a campaign that is sent; its "
                                                      r"content can no longer change \(give a new key"):
        store(db, subject="Other")
    assert db.execute("SELECT subject FROM campaigns").fetchone()["subject"] == row["subject"]


def test_keep_timing_stores_a_new_campaign_as_a_draft_even_with_a_send_time(db):
    row = store(db, keep_timing=True, send_at="2026-06-02T09:00:00Z")

    assert row["status"] == "draft"
    assert row["send_at"] is None


def test_keep_timing_revises_a_scheduled_campaigns_content_and_leaves_it_scheduled(db):
    scheduled = store(db, send_at="2026-06-02T09:00:00Z")

    revised = store(db, keep_timing=True, subject="Fixed subject")

    assert revised["status"] == "scheduled"
    assert revised["send_at"] == scheduled["send_at"]
    assert revised["subject"] == "Fixed subject"
