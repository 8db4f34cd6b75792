"""Exclude lists against real PostgreSQL: members are left out of the snapshot as skipped rows counted by reason,
preflight counts the same people the snapshot stores and refuses a list that does not exist, naming it."""

from __future__ import annotations

import pytest

from campaigns.audience.filters import Audience
from campaigns.errors import PreflightFailed
from campaigns.lifecycle import definitions
from campaigns.sending import ledger, preflight
from campaigns.sending.messages import composer_for
from tests.helpers import add_contacts, inline_campaign, insert_campaign

NEWSLETTER = [f"u{i}@example.org" for i in range(8)]


@pytest.fixture
def lists(db):
    """8 on the newsletter; u0-u2 are customers (u2 unsubscribed from that list), u1 and u3 are staff."""
    add_contacts(db, NEWSLETTER)
    add_contacts(db, NEWSLETTER[:2], "customers")
    add_contacts(db, NEWSLETTER[2:3], "customers", status="unsubscribed")
    add_contacts(db, [NEWSLETTER[1], NEWSLETTER[3]], "staff")
    add_contacts(db, ["outsider@example.org"], "customers")  # excluded list member who is not in the audience


def _rows(db, campaign_id):
    return {row["email"]: (row["status"], row["skip_reason"], row["page_no"]) for row in db.execute(
        "SELECT email, status, skip_reason, page_no FROM campaign_recipients WHERE campaign_id = %s",
        [campaign_id])}


def test_members_of_exclude_lists_are_skipped_rows_counted_by_reason(db, lists):
    campaign_id = insert_campaign(db)
    audience = Audience.parse({"lists": ["newsletter"], "exclude_lists": ["customers", "staff"]})

    summary = ledger.snapshot(db, campaign_id, audience, page_size=2)

    # a member of both is counted once, under the first exclude list by name; any membership status counts
    assert summary["skipped_by_reason"] == {"excluded:customers": 3, "excluded:staff": 1}
    assert (summary["recipients"], summary["pending"], summary["skipped"]) == (8, 4, 4)
    rows = _rows(db, campaign_id)
    assert rows["u1@example.org"] == ("skipped", "excluded:customers", None)
    assert rows["u2@example.org"] == ("skipped", "excluded:customers", None)
    assert rows["u3@example.org"] == ("skipped", "excluded:staff", None)
    assert "outsider@example.org" not in rows  # exclude lists only take away, never add
    assert sorted(page for status, _, page in rows.values() if status == "pending") == [0, 0, 1, 1]


def test_an_excluded_person_who_would_not_get_it_anyway_keeps_that_reason(db, lists):
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('u0@example.org', 'hard_bounce', 't')")
    db.execute("""UPDATE list_members SET status = 'unsubscribed'
                   WHERE contact_id = (SELECT id FROM contacts WHERE email = 'u1@example.org')
                     AND list_id = (SELECT id FROM lists WHERE name = 'newsletter')""")
    campaign_id = insert_campaign(db)

    summary = ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"],
                                                               "exclude_lists": ["customers"]}), page_size=10)

    # `excluded:<list>` counts the people the exclusion itself kept from the campaign
    assert summary["skipped_by_reason"] == {"excluded:customers": 1, "suppressed:hard_bounce": 1, "unsubscribed": 1}


def test_an_audience_without_exclude_lists_snapshots_as_before(db, lists):
    campaign_id = insert_campaign(db)
    summary = ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"]}), page_size=10)
    assert (summary["pending"], summary["skipped_by_reason"]) == (8, {})


def _campaign(db, audience):
    definition = definitions.CampaignDefinition.parse(inline_campaign(audience=audience))
    return definitions.load_campaign(db, definitions.upsert_campaign(db, definition)["id"])


def _preflight(db, campaign, settings):
    return preflight.run(db, campaign, composer_factory=lambda c: composer_for(c, settings), settings=settings)


def test_preflight_counts_equal_the_snapshot_counts(db, lists, settings):
    campaign = _campaign(db, {"lists": ["newsletter"], "exclude_lists": ["customers", "staff"]})
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('u5@example.org', 'complaint', 't')")

    report = _preflight(db, campaign, settings)
    summary = ledger.snapshot(db, campaign["id"], Audience.parse(campaign["audience"]), page_size=500)

    assert report["audience"]["skipped_by_reason"] == summary["skipped_by_reason"] == {
        "excluded:customers": 3, "excluded:staff": 1, "suppressed:complaint": 1}
    assert report["audience"]["recipients"] == summary["recipients"] == 8
    assert report["audience"]["sendable"] == summary["pending"] == 3
    assert report["audience"]["rendered"] == 3


@pytest.mark.parametrize(("audience", "message"), [
    ({"lists": ["newsletter"], "exclude_lists": ["customers", "ex-customers"]},
     "audience.exclude_lists: no list named 'ex-customers'"),
    ({"lists": ["newsletter", "newsleter"]}, "audience.lists: no list named 'newsleter'"),
])
def test_preflight_refuses_a_list_that_does_not_exist_naming_it(db, lists, settings, audience, message):
    campaign = _campaign(db, audience)
    with pytest.raises(PreflightFailed) as refused:
        _preflight(db, campaign, settings)
    assert message in str(refused.value)
    assert db.execute("SELECT count(*) AS n FROM campaign_recipients").fetchone()["n"] == 0


def test_preflight_names_every_missing_list_of_both_fields(db, lists, settings):
    campaign = _campaign(db, {"lists": ["nope", "newsletter"], "exclude_lists": ["gone", "staff", "away"]})
    with pytest.raises(PreflightFailed) as refused:
        _preflight(db, campaign, settings)
    assert "audience.lists: no list named 'nope'" in str(refused.value)
    assert "audience.exclude_lists: no list named 'gone', 'away'" in str(refused.value)
