"""Snapshot and plan: one set-based statement, idempotent, and any audience size plans under max_map_length."""

from __future__ import annotations

import pytest

from campaigns.audience.filters import Audience
from campaigns.sending import ledger, plan
from tests.helpers import add_contacts, insert_campaign


def test_snapshot_rerun_changes_nothing(db):
    add_contacts(db, [f"u{i}@example.org" for i in range(12)])
    campaign_id = insert_campaign(db)
    audience = Audience.parse({"lists": ["newsletter"]})

    first = ledger.snapshot(db, campaign_id, audience, page_size=5)
    add_contacts(db, ["late@example.org"])  # joins after the snapshot: not part of this campaign
    second = ledger.snapshot(db, campaign_id, audience, page_size=5)

    assert first == second
    assert first["pending"] == 12
    count = db.execute("SELECT count(*) AS n FROM campaign_recipients WHERE campaign_id = %s", [campaign_id])
    assert count.fetchone()["n"] == 12


def test_snapshot_pages_only_sendable_rows_and_keeps_skipped_rows_with_reasons(db):
    add_contacts(db, ["a@example.org", "b@example.org", "c@example.org"])
    add_contacts(db, ["d@example.org"], status="unsubscribed")
    add_contacts(db, ["bad\u00e9@example.org"])  # a non-ASCII local part SES cannot send to
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('b@example.org', 'complaint', 't')")
    campaign_id = insert_campaign(db)

    summary = ledger.snapshot(db, campaign_id, Audience.parse({"lists": ["newsletter"]}), page_size=1)

    assert summary["skipped_by_reason"] == {"invalid_address": 1, "suppressed:complaint": 1, "unsubscribed": 1}
    rows = db.execute("SELECT email, page_no, status FROM campaign_recipients WHERE campaign_id = %s ORDER BY email",
                      [campaign_id]).fetchall()
    pages = {row["email"]: row["page_no"] for row in rows if row["status"] == "pending"}
    assert sorted(pages.values()) == [0, 1]
    assert all(row["page_no"] is None for row in rows if row["status"] == "skipped")


def test_pages_per_task_carry_many_seconds_of_sending_at_high_rates():
    assert plan.pages_per_task(open_pages=200, page_size=500, rate=1000, task_seconds=60) == 120
    assert plan.pages_per_task(open_pages=200, page_size=500, rate=14, task_seconds=60) == 1


def test_a_big_campaign_spreads_over_the_parallel_send_tasks():
    # 100,000 recipients at 400/s: one task would carry all 250 s; four side by side carry a quarter each
    assert plan.pages_per_task(open_pages=200, page_size=500, rate=400, task_seconds=300) == 240
    assert plan.pages_per_task(open_pages=200, page_size=500, rate=400, task_seconds=300, parallel=4) == 60
    # a small campaign stays one task: splitting it would only add the scheduler's per-task overhead
    assert plan.pages_per_task(open_pages=10, page_size=100, rate=100, task_seconds=300, parallel=4) == 75
    with pytest.raises(ValueError, match="parallel"):
        plan.pages_per_task(open_pages=10, page_size=100, rate=100, task_seconds=300, parallel=0)


def test_a_million_recipient_campaign_plans_under_max_map_length(db):
    campaign_id = insert_campaign(db)
    db.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, page_no)
           SELECT %s, 'u' || g || '@example.org', (g - 1) / 500 FROM generate_series(1, 1000000) AS g""",
        [campaign_id])

    tasks = plan.plan(db, campaign_id, page_size=500, rate=14, task_seconds=60)

    assert len(tasks) <= plan.MAX_SEND_TASKS < 1024
    covered = [page for task in tasks for page in range(task.first_page, task.last_page + 1)]
    assert covered == list(range(2000))  # every page exactly once, in order
    assert tasks[6].label == f"batch 7/{len(tasks)}"
    assert len(str([task.as_dict() for task in tasks])) < 150_000  # small descriptors, not recipients


def test_a_resumed_campaign_plans_only_pages_with_work_left(db):
    campaign_id = insert_campaign(db)
    db.execute(
        """INSERT INTO campaign_recipients (campaign_id, email, page_no, status, ses_message_id)
           SELECT %s, 'u' || g || '@example.org', (g - 1) / 10,
                  CASE WHEN g <= 50 THEN 'sent' ELSE 'pending' END,
                  CASE WHEN g <= 50 THEN 'm' || g END
             FROM generate_series(1, 100) AS g""", [campaign_id])

    tasks = plan.plan(db, campaign_id, page_size=10, rate=1, task_seconds=1)

    assert [(t.first_page, t.last_page) for t in tasks] == [(5, 5), (6, 6), (7, 7), (8, 8), (9, 9)]
