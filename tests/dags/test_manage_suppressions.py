"""The manage_suppressions DAG with dag.test(): add, remove (with its audit trail and the SES account list's
answer, from the local SES served in-process), export, and refused input."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaigns.config import get_settings
from campaigns.feedback.suppressions import Request, SuppressionRequestError
from devstack.local_ses.server import create_app, serving
from tests.helpers import parse_dag


@pytest.fixture
def dag():
    return parse_dag("manage_suppressions")


@pytest.fixture(autouse=True)
def account_list(monkeypatch):
    """A remove asks SES's account suppression list: `aws_default` points at a local SES; yields its list."""
    app, _ = create_app()
    with serving(app) as endpoint:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": endpoint}}))
        yield app.suppressions


@pytest.fixture
def export_dir(tmp_path, monkeypatch):
    folder = tmp_path / "exports"
    monkeypatch.setenv("SUPPRESSIONS_EXPORT_DIR", str(folder))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def run(dag, conf: dict) -> tuple[str, str, dict | None]:
    """dag.test() one run; returns its state, its run id and the task's result (None when it failed)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dr = dag.test(run_conf=conf)
    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dr.run_id, key="return_value", dag_ids=dag.dag_id,
                                                 task_ids="apply_request")).first()
        value = XComModel.deserialize_value(row) if row is not None else None
    return dr.state, dr.run_id, value


def suppress(db, email, reason, source="ses", detail=None):
    db.execute("INSERT INTO suppressions (email, reason, source, detail) VALUES (%s, %s, %s, %s)",
               [email, reason, source, detail])


def suppressions(db) -> dict[str, dict]:
    return {row["email"]: row for row in db.execute("SELECT * FROM suppressions ORDER BY email")}


def changes(db) -> list[dict]:
    return db.execute("SELECT * FROM suppression_changes ORDER BY id").fetchall()


def test_add_suppresses_new_addresses_and_reports_existing_ones_unchanged(dag, db):
    suppress(db, "bo@example.com", "hard_bounce", detail="Permanent/General")

    state, run_id, result = run(dag, {"action": "add", "reason": "asked by phone, ticket 4711",
                                      "emails": ["Ann@Example.com", "bo@example.com", "ann@example.com", " "]})

    assert state == "success"
    assert result["added"] == ["ann@example.com"]
    assert [(e["email"], e["reason"]) for e in result["already_suppressed"]] == [("bo@example.com", "hard_bounce")]
    rows = suppressions(db)
    assert (rows["ann@example.com"]["reason"], rows["ann@example.com"]["detail"]) == (
        "manual", "asked by phone, ticket 4711")
    assert rows["bo@example.com"]["reason"] == "hard_bounce"  # a manual add never downgrades what SES reported
    [change] = changes(db)
    assert (change["email"], change["action"], change["reason"], change["old_reason"], change["run_id"]) == (
        "ann@example.com", "add", "asked by phone, ticket 4711", None, run_id)
    assert change["actor"] == "dag_test"  # the run's triggering user, as Airflow names it for dag.test()


def test_remove_records_the_old_reason_and_reports_addresses_that_were_not_suppressed(dag, db):
    suppress(db, "ann@example.com", "complaint", detail="complaint abuse")
    suppress(db, "cy@example.com", "manual", source="manage_suppressions")

    state, run_id, result = run(dag, {"action": "remove", "reason": "complaint was a mistake, customer confirmed",
                                      "emails": ["ann@example.com", "nobody@example.com"]})

    assert state == "success"
    assert result["removed"] == [{"email": "ann@example.com", "old_reason": "complaint"}]
    assert result["not_suppressed"] == ["nobody@example.com"]
    assert set(suppressions(db)) == {"cy@example.com"}
    [change] = changes(db)
    assert (change["email"], change["action"], change["old_reason"], change["run_id"]) == (
        "ann@example.com", "remove", "complaint", run_id)
    assert change["reason"] == "complaint was a mistake, customer confirmed"


def test_remove_says_which_addresses_are_still_on_the_ses_account_list(dag, db, account_list):
    suppress(db, "ann@example.com", "hard_bounce")
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    account_list.seed("ann@example.com", "BOUNCE", since)

    state, _, result = run(dag, {"action": "remove", "reason": "mailbox exists again, checked by phone",
                                 "emails": ["ann@example.com", "bob@example.com"]})

    assert state == "success"
    assert [(a["email"], a["on_list"], a["reason"], a["since"], a["removed"]) for a in result["ses_account_list"]] == [
        ("ann@example.com", True, "BOUNCE", since.isoformat(), False), ("bob@example.com", False, None, None, False)]
    assert [e.email for e in account_list.entries()] == ["ann@example.com"]  # asked about, left on SES's list


def test_remove_from_ses_lifts_the_account_list_entry_too(dag, db, account_list):
    suppress(db, "ann@example.com", "hard_bounce")
    account_list.seed("ann@example.com", "BOUNCE")

    state, _, result = run(dag, {"action": "remove", "reason": "mailbox exists again, checked by phone",
                                 "emails": ["ann@example.com"], "remove_from_ses": True})

    assert state == "success"
    [answer] = result["ses_account_list"]
    assert (answer["on_list"], answer["removed"], answer["reason"]) == (False, True, "BOUNCE")
    assert account_list.entries() == []
    assert suppressions(db) == {}


def test_remove_from_ses_with_another_action_fails_and_changes_nothing(dag, db, account_list):
    account_list.seed("ann@example.com", "BOUNCE")

    state, _, _ = run(dag, {"action": "add", "emails": ["ann@example.com"], "reason": "x", "remove_from_ses": True})

    assert state == "failed"
    assert suppressions(db) == {}
    assert [e.email for e in account_list.entries()] == ["ann@example.com"]


def test_remove_without_a_reason_fails_and_changes_nothing(dag, db):
    suppress(db, "ann@example.com", "hard_bounce")

    state, _, result = run(dag, {"action": "remove", "emails": ["ann@example.com"], "reason": "  "})

    assert state == "failed"
    assert result is None
    assert set(suppressions(db)) == {"ann@example.com"}
    assert changes(db) == []


def test_an_invalid_address_fails_the_whole_request_and_changes_nothing(dag, db):
    state, _, _ = run(dag, {"action": "add", "emails": ["ann@example.com", "not-an-address"], "reason": "x"})

    assert state == "failed"
    assert suppressions(db) == {}
    assert changes(db) == []


def test_invalid_input_is_refused_with_every_problem_named():
    with pytest.raises(SuppressionRequestError) as refused:
        Request.parse("add", ["ok@example.com", "not-an-address", "two@@example.com"], "")
    assert "2 invalid address(es), nothing changed" in str(refused.value)
    assert "'not-an-address'" in str(refused.value)
    assert "'two@@example.com'" in str(refused.value)
    with pytest.raises(SuppressionRequestError, match="remove needs a reason"):
        Request.parse("remove", ["ok@example.com"], "")
    with pytest.raises(SuppressionRequestError, match="leave emails empty"):
        Request.parse("export", ["ok@example.com"], "")
    with pytest.raises(SuppressionRequestError, match="remove_from_ses must be true or false, got 'yes'"):
        Request.parse("remove", ["ok@example.com"], "why", "yes")
    with pytest.raises(SuppressionRequestError, match="needs at least one address"):
        Request.parse("add", [""], "spam trap")
    with pytest.raises(SuppressionRequestError, match="action must be one of"):
        Request.parse("delete", ["ok@example.com"], "x")


def test_an_unknown_action_is_refused_by_the_trigger_form(dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="'delete' is not one of"):
        dag.params["action"] = "delete"


def test_export_writes_every_suppression_to_a_csv_in_the_export_folder(dag, db, export_dir):
    suppress(db, "ann@example.com", "hard_bounce", detail="Permanent/General")
    suppress(db, "bo@example.com", "manual", source="manage_suppressions", detail='said "stop", twice')
    suppress(db, "cy@example.com", "unsubscribe", source="tracking")

    state, run_id, result = run(dag, {"action": "export"})

    assert state == "success"
    path = Path(result["path"])
    assert path.parent == export_dir
    assert path.name.startswith("suppressions-")
    assert re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id) in path.name  # which run wrote it, safe as a file name
    assert result["count"] == 3
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["email", "reason", "source", "detail", "created_at"]
    assert [(r["email"], r["reason"], r["source"], r["detail"]) for r in rows] == [
        ("ann@example.com", "hard_bounce", "ses", "Permanent/General"),
        ("bo@example.com", "manual", "manage_suppressions", 'said "stop", twice'),
        ("cy@example.com", "unsubscribe", "tracking", ""),
    ]
    assert all(r["created_at"].endswith("Z") for r in rows)
    assert [p.name for p in export_dir.iterdir()] == [path.name]  # no partial file left behind
    assert changes(db) == []  # an export changes nothing
