"""send_campaign triggered from its form (fields, no JSON) through dag.test(): real PostgreSQL and Redis, moto SES."""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.helpers import add_contacts, parse_dag, sent_messages

pytestmark = pytest.mark.usefixtures("fast_rate")  # no waiting on the limiter (tested on its own)

TASKS_AFTER_THE_TESTS = ("preflight", "snapshot_recipients", "plan_batches", "send_batch", "finalize")


@pytest.fixture
def send_dag():
    """A freshly parsed DAG per test: dag.test() runs in-process and would carry one run's params to the next."""
    return parse_dag("send_campaign")


def form(**values):
    """What the Trigger form sends for an analyst who filled Content and Audience (no JSON anywhere)."""
    conf = {"name": "November news", "key": "nov-news", "subject": "Hi {{ first_name | default('there') }}",
            "preheader": "Our November picks",
            "html": "<p>Hello {{ first_name | default('there') }}!</p>", "lists": ["newsletter"],
            "filters": ["country: DE, AT", ""], "when": "now", "timezone": "UTC"}
    conf.update(values)
    return conf


def count(db, table):
    return db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]  # noqa: S608 - fixed table names


def task_states(dag_run, task_id):
    return [ti.state for ti in dag_run.get_task_instances() if ti.task_id == task_id]


def subjects(messages):
    return sorted(email.message_from_string(m.raw_data, policy=email.policy.default)["Subject"] for m in messages)


def test_a_campaign_composed_in_the_form_is_sent_to_its_filtered_audience(send_dag, db, ses):
    add_contacts(db, ["de@example.org", "at@example.org", "fr@example.org"],
                 attributes=lambda i: {"country": ["DE", "AT", "FR"][i]})

    dag_run = send_dag.test(run_conf=form(batch_size=2))

    assert dag_run.state == "success"
    campaign = db.execute("SELECT * FROM campaigns WHERE key = 'nov-news'").fetchone()
    assert campaign["status"] == "sent"
    assert campaign["preheader"] == "Our November picks"
    assert campaign["audience"]["where"] == {"country": ["DE", "AT"]}
    assert campaign["from_email"] == "news@example.com"  # SES_FROM_EMAIL: the form's From address was empty
    assert subjects(sent_messages()) == ["Hi First0", "Hi First1"]
    assert campaign["summary"]["sent"] == 2


def test_an_empty_key_is_derived_from_the_name_and_the_runs_date(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])

    dag_run = send_dag.test(run_conf=form(key=None, filters=[]))

    assert dag_run.state == "success"
    [row] = db.execute("SELECT key, status FROM campaigns").fetchall()
    run_day = (dag_run.logical_date or dag_run.run_after).strftime("%Y%m%d")
    assert row == {"key": f"november-news-{run_day}", "status": "sent"}


def test_test_addresses_send_only_the_test_copies_and_end_the_run_successfully(send_dag, db, ses):
    add_contacts(db, ["ana@example.org", "bo@example.org"])

    dag_run = send_dag.test(run_conf=form(filters=[], test_recipients=["me@example.com", "", "qa@example.net"]))

    assert dag_run.state == "success"
    assert task_states(dag_run, "send_tests_first") == ["success"]
    for task_id in TASKS_AFTER_THE_TESTS:
        assert set(task_states(dag_run, task_id)) == {"skipped"}, task_id
    assert subjects(sent_messages()) == ["[TEST] Hi there"] * 2
    recipients = {email.message_from_string(m.raw_data, policy=email.policy.default)["To"].addresses[0].addr_spec
                  for m in sent_messages()}
    assert recipients == {"me@example.com", "qa@example.net"}
    campaign = db.execute("SELECT * FROM campaigns WHERE key = 'nov-news'").fetchone()
    assert campaign["status"] == "draft"
    assert count(db, "campaign_recipients") == 0
    assert {row["email"] for row in db.execute("SELECT email FROM test_sends WHERE campaign_id = %s",
                                               [campaign["id"]])} == {"me@example.com", "qa@example.net"}


def test_test_first_then_the_same_fields_without_addresses_sends_for_real(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])
    send_dag.test(run_conf=form(filters=[], subject="Hi tpyo", test_recipients=["me@example.com"]))
    send_dag.test(run_conf=form(filters=[], subject="Hi fixed", test_recipients=["me@example.com"]))

    dag_run = parse_dag("send_campaign").test(run_conf=form(filters=[], subject="Hi fixed"))

    assert dag_run.state == "success"
    assert subjects(sent_messages()) == ["Hi fixed", "[TEST] Hi fixed", "[TEST] Hi tpyo"]
    assert count(db, "campaigns") == 1


def test_test_first_with_a_send_time_stores_a_draft_and_schedules_nothing(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])

    dag_run = send_dag.test(run_conf=form(filters=[], when="at", send_date="2099-12-05", send_time="09:00",
                                          test_recipients=["me@example.com"]))

    assert dag_run.state == "success"
    row = db.execute("SELECT status, send_at FROM campaigns").fetchone()
    assert row == {"status": "draft", "send_at": None}


def test_a_stored_draft_is_tested_by_its_campaign_id(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])
    send_dag.test(run_conf=form(filters=[], dry_run=True))
    campaign_id = db.execute("SELECT id FROM campaigns").fetchone()["id"]

    dag_run = parse_dag("send_campaign").test(run_conf={"campaign_id": campaign_id,
                                                        "test_recipients": ["me@example.com"]})

    assert dag_run.state == "success"
    assert subjects(sent_messages()) == ["[TEST] Hi there"]
    assert count(db, "test_sends") == 1


def test_a_scheduled_send_from_the_form_is_stored_in_utc_and_not_sent(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])

    dag_run = send_dag.test(run_conf=form(filters=[], when="at", send_date="2099-12-05", send_time="09:00",
                                          timezone="Europe/Vienna"))

    assert dag_run.state == "success"
    row = db.execute("SELECT status, send_at FROM campaigns").fetchone()
    assert row["status"] == "scheduled"
    assert row["send_at"].isoformat() == "2099-12-05T08:00:00+00:00"
    assert sent_messages() == []


@pytest.mark.parametrize("bad", [
    {"subject": None},
    {"when": "at", "send_date": "2020-01-01", "send_time": "09:00"},
    {"filters": ["country DE"]},
    {"test_recipients": ["not an address"]},
])
def test_bad_form_input_fails_resolve_campaign_and_stores_nothing(send_dag, db, ses, bad):
    add_contacts(db, ["ana@example.org"])

    dag_run = send_dag.test(run_conf=form(**bad))

    assert dag_run.state == "failed"
    assert task_states(dag_run, "resolve_campaign") == ["failed"]
    assert count(db, "campaigns") == 0
    assert sent_messages() == []


@pytest.mark.parametrize(("bad", "problem"), [
    ({"lists": ["no-such-list"]}, "no-such-list"),
    ({"html": "<p>{% if %}</p>"}, "html"),
])
def test_a_list_that_does_not_exist_or_a_template_error_fails_preflight_with_nothing_sent(send_dag, db, ses, bad,
                                                                                         problem):
    add_contacts(db, ["ana@example.org"])

    dag_run = send_dag.test(run_conf=form(filters=[], **bad))

    assert dag_run.state == "failed"
    assert task_states(dag_run, "preflight") == ["failed"]
    campaign = db.execute("SELECT * FROM campaigns WHERE key = 'nov-news'").fetchone()
    assert campaign["status"] == "draft"  # stored whole, as a draft to fix and trigger again
    assert campaign["preflight"]["ok"] is False
    assert problem in str(campaign["preflight"]).lower()
    assert count(db, "campaign_recipients") == 0
    assert sent_messages() == []


def test_a_test_address_that_is_not_a_contact_renders_with_the_forms_samples_or_stand_ins(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])
    conf = form(subject="Hi {{ first_name }} from {{ city }}", filters=[], test_recipients=["me@example.com"],
                test_sample_values=["city: Graz"])

    dag_run = send_dag.test(run_conf=conf)

    assert dag_run.state == "success"
    # `city` as the form gave it; `first_name`, a field the address has no contact for, as a stand-in
    assert subjects(sent_messages()) == ["[TEST] Hi First Name from Graz"]
