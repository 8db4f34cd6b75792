"""The SES account-level suppression list against the local SES (in-process) and the real PostgreSQL: the import
(paging, the high-water mark, reasons, no downgrade, bad entries), the push, and the removal's answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest

from campaigns.feedback import ses_account_list as account_list
from campaigns.feedback.suppressions import REMOVE, Request, remove
from devstack.local_ses.server import create_app, serving

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def local_ses():
    """(the local SES app, a sesv2 client talking to it over HTTP)."""
    app, _ = create_app()
    with serving(app) as endpoint:
        yield app, boto3.client("sesv2", endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id="testing", aws_secret_access_key="testing")


def suppressions(db) -> dict[str, dict]:
    return {row["email"]: row for row in db.execute("SELECT * FROM suppressions ORDER BY email")}


def changes(db) -> list[dict]:
    return db.execute("SELECT email, action, reason, old_reason, actor, run_id FROM suppression_changes"
                      " ORDER BY email").fetchall()


def suppress(db, email, reason, source="ses"):
    db.execute("INSERT INTO suppressions (email, reason, source, detail) VALUES (%s, %s, %s, 'before')",
               [email, reason, source])


def test_import_reads_every_page_and_maps_bounce_and_complaint(db, local_ses):
    app, ses = local_ses
    for i in range(3):
        app.suppressions.seed(f"bounce{i}@example.com", "BOUNCE", NOW - timedelta(days=5 - i))
    app.suppressions.seed("Complainer@Example.com", "COMPLAINT", NOW - timedelta(days=1))

    result = account_list.import_account_list(db, ses, run_id="run-1", page_size=2)

    assert (result["pages"], result["read"], result["added"], result["problems"]) == (2, 4, 4, [])
    rows = suppressions(db)
    assert {email: (row["reason"], row["source"]) for email, row in rows.items()} == {
        "bounce0@example.com": ("hard_bounce", "ses-account"), "bounce1@example.com": ("hard_bounce", "ses-account"),
        "bounce2@example.com": ("hard_bounce", "ses-account"), "complainer@example.com": ("complaint", "ses-account")}
    assert all(row["ses_account_listed_at"] is not None for row in rows.values())
    audit = changes(db)
    assert [(c["email"], c["action"], c["actor"], c["run_id"]) for c in audit][-1] == (
        "complainer@example.com", "add", "sync_ses_suppressions", "run-1")
    assert len(audit) == 4
    assert audit[-1]["reason"].startswith("SES account suppression list: COMPLAINT, last updated ")
    assert result["high_water"] == (NOW - timedelta(days=1)).isoformat()


def test_a_second_run_reads_only_what_changed_since_the_last_one(db, local_ses):
    app, ses = local_ses
    app.suppressions.seed("first@example.com", "BOUNCE", NOW - timedelta(days=10))
    account_list.import_account_list(db, ses, run_id="run-1")
    app.suppressions.seed("new@example.com", "COMPLAINT", NOW - timedelta(hours=2))
    # stamped before the mark: a run that honours the mark never asks for it
    app.suppressions.seed("older@example.com", "BOUNCE", NOW - timedelta(days=20))

    second = account_list.import_account_list(db, ses, run_id="run-2")

    assert second["since"] == (NOW - timedelta(days=10) - account_list.OVERLAP).isoformat()
    assert (second["read"], second["added"], second["kept"]) == (2, 1, 1)  # first@ again: the overlap
    assert set(suppressions(db)) == {"first@example.com", "new@example.com"}
    assert db.execute("SELECT run_id FROM ses_suppression_sync").fetchone()["run_id"] == "run-2"

    full = account_list.import_account_list(db, ses, run_id="run-3", full=True)

    assert (full["since"], full["read"], full["added"]) == (None, 3, 1)
    assert "older@example.com" in suppressions(db)
    assert full["high_water"] == (NOW - timedelta(hours=2)).isoformat()  # an older entry never moves it back


def test_import_never_downgrades_an_existing_suppression(db, local_ses):
    app, ses = local_ses
    suppress(db, "manual@example.com", "manual", source="manage_suppressions")
    suppress(db, "unsub@example.com", "unsubscribe", source="tracking")
    suppress(db, "hard@example.com", "hard_bounce")
    suppress(db, "soft@example.com", "soft_bounce_limit")
    for email in ("manual@example.com", "unsub@example.com", "hard@example.com", "soft@example.com"):
        app.suppressions.seed(email, "COMPLAINT", NOW - timedelta(days=1))

    result = account_list.import_account_list(db, ses, run_id="run-1")

    assert (result["added"], result["upgraded"], result["kept"]) == (0, 1, 3)
    rows = suppressions(db)
    assert {email: (row["reason"], row["source"]) for email, row in rows.items()} == {
        "hard@example.com": ("hard_bounce", "ses"), "manual@example.com": ("manual", "manage_suppressions"),
        "soft@example.com": ("complaint", "ses-account"), "unsub@example.com": ("unsubscribe", "tracking")}
    assert rows["manual@example.com"]["detail"] == "before"
    assert all(row["ses_account_listed_at"] is not None for row in rows.values())  # on SES: never pushed back
    [change] = changes(db)
    assert (change["email"], change["old_reason"]) == ("soft@example.com", "soft_bounce_limit")


def test_unusable_entries_are_reported_and_the_rest_imported(db, local_ses):
    app, ses = local_ses
    app.suppressions.seed("good@example.com", "BOUNCE", NOW - timedelta(days=2))
    app.suppressions.seed("not-an-address", "BOUNCE", NOW - timedelta(days=2))
    app.suppressions.seed("odd@example.com", "SPAMTRAP", NOW - timedelta(days=1))

    result = account_list.import_account_list(db, ses, run_id="run-1")

    assert set(suppressions(db)) == {"good@example.com"}
    problems = {p["entry"]["EmailAddress"]: p["problem"] for p in result["problems"]}
    assert set(problems) == {"not-an-address", "odd@example.com"}
    assert problems["not-an-address"].startswith("invalid EmailAddress")
    assert problems["odd@example.com"] == "unknown Reason 'SPAMTRAP' (expected BOUNCE or COMPLAINT)"
    assert result["high_water"] == (NOW - timedelta(days=2)).isoformat()  # only usable entries move the mark


def test_push_sends_each_product_hard_bounce_and_complaint_once(db, local_ses):
    app, ses = local_ses
    suppress(db, "hard@example.com", "hard_bounce")
    suppress(db, "complaint@example.com", "complaint")
    suppress(db, "manual@example.com", "manual")
    suppress(db, "soft@example.com", "soft_bounce_limit")
    app.suppressions.seed("known@example.com", "BOUNCE", NOW - timedelta(days=3))
    account_list.import_account_list(db, ses, run_id="run-1")

    first = account_list.push_product_suppressions(db, ses)

    assert first == {"pushed": 2, "problems": []}
    assert {e.email: e.reason for e in app.suppressions.entries()} == {
        "known@example.com": "BOUNCE", "hard@example.com": "BOUNCE", "complaint@example.com": "COMPLAINT"}
    pushed_at = {e.email: e.last_update_time for e in app.suppressions.entries()}

    assert account_list.push_product_suppressions(db, ses) == {"pushed": 0, "problems": []}
    assert {e.email: e.last_update_time for e in app.suppressions.entries()} == pushed_at


def test_remove_says_whether_the_address_is_still_on_the_account_list(db, local_ses):
    app, ses = local_ses
    suppress(db, "listed@example.com", "hard_bounce")
    suppress(db, "clean@example.com", "manual")
    app.suppressions.seed("listed@example.com", "BOUNCE", NOW - timedelta(days=3))

    result = remove(db, Request.parse(REMOVE, ["listed@example.com", "clean@example.com"], "fixed"),
                    actor="ann", run_id="r1", ses=ses)

    answers = {a["email"]: a for a in result["ses_account_list"]}
    assert answers["listed@example.com"] == {
        "email": "listed@example.com", "on_list": True, "reason": "BOUNCE",
        "since": (NOW - timedelta(days=3)).isoformat(), "removed": False, "error": None}
    assert (answers["clean@example.com"]["on_list"], answers["clean@example.com"]["error"]) == (False, None)
    assert [e.email for e in app.suppressions.entries()] == ["listed@example.com"]  # asked, not removed
    assert suppressions(db) == {}


def test_remove_from_ses_takes_the_address_off_the_account_list_too(db, local_ses):
    app, ses = local_ses
    suppress(db, "listed@example.com", "hard_bounce")
    app.suppressions.seed("listed@example.com", "BOUNCE", NOW - timedelta(days=3))

    result = remove(db, Request.parse(REMOVE, ["listed@example.com"], "fixed", remove_from_ses=True),
                    actor="ann", run_id="r1", ses=ses)

    [answer] = result["ses_account_list"]
    assert (answer["on_list"], answer["removed"], answer["reason"]) == (False, True, "BOUNCE")
    assert app.suppressions.entries() == []


def test_remove_reports_an_unreachable_ses_and_still_removes_the_suppression(db):
    suppress(db, "ann@example.com", "hard_bounce")
    ses = boto3.client("sesv2", endpoint_url="http://127.0.0.1:1", region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing",
                       config=boto3.session.Config(retries={"total_max_attempts": 1}, connect_timeout=2))

    result = remove(db, Request.parse(REMOVE, ["ann@example.com"], "fixed"), actor="ann", run_id="r1", ses=ses)

    [answer] = result["ses_account_list"]
    assert answer["on_list"] is None
    assert "Could not connect" in answer["error"]
    assert suppressions(db) == {}
