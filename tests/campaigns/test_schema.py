"""The campaign schema migrates an empty database up, down and up again."""

from __future__ import annotations

import psycopg
import pytest

from campaigns import schema
from devstack.services import scratch_database
from devstack.settings import SETTINGS
from tests.helpers import downgrade_schema, insert_campaign


@pytest.fixture
def scratch_dsn():
    with scratch_database(SETTINGS, "campaigns_migrate", migrate=False) as dsn:
        yield dsn


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows} - {"alembic_version"}


def test_migrations_go_up_down_and_up_again(scratch_dsn):
    schema.upgrade(scratch_dsn)
    created = _tables(scratch_dsn)
    assert {"contacts", "lists", "list_members", "suppressions", "campaigns", "campaign_recipients",
            "campaign_links", "email_events", "campaign_actions", "test_sends", "suppression_changes",
            "stats_rollup_state", "campaign_stats", "campaign_stats_series", "campaign_link_stats",
            "campaign_recipient_activity", "campaign_recipient_link_activity", "email_event_counts_hourly"} <= created

    downgrade_schema(scratch_dsn)
    assert _tables(scratch_dsn) == set()

    schema.upgrade(scratch_dsn)
    assert _tables(scratch_dsn) == created


def test_contact_emails_are_unique_case_insensitively(db):
    db.execute("INSERT INTO contacts (email) VALUES ('Ann@Example.com')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO contacts (email) VALUES ('ann@example.COM')")


def test_ledger_rows_are_unique_per_campaign_and_address(db):
    campaign_id = insert_campaign(db)
    db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, 'Bo@example.com')", [campaign_id])
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, 'bo@EXAMPLE.com')",
                   [campaign_id])


def test_a_sent_ledger_row_must_carry_its_ses_message_id(db):
    campaign_id = insert_campaign(db)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("INSERT INTO campaign_recipients (campaign_id, email, status) VALUES (%s, 'a@example.com', 'sent')",
                   [campaign_id])


def test_deleting_a_campaign_deletes_its_ledger(db):
    campaign_id = insert_campaign(db)
    db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (%s, 'a@example.com')", [campaign_id])

    db.execute("DELETE FROM campaigns WHERE id = %s", [campaign_id])

    assert db.execute("SELECT count(*) AS n FROM campaign_recipients").fetchone()["n"] == 0
