"""send_campaign end to end through dag.test(): real PostgreSQL and Redis, moto for SES."""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.helpers import add_contacts, inline_campaign, parse_dag, sent_messages

pytestmark = pytest.mark.usefixtures("fast_rate")  # no waiting on the limiter (tested on its own)


@pytest.fixture
def send_dag():
    """A freshly parsed DAG per test: dag.test() runs in-process and would carry one run's params to the next."""
    return parse_dag("send_campaign")


def run(dag, conf):
    return dag.test(run_conf=conf)


def campaign_row(db, key):
    return db.execute("SELECT * FROM campaigns WHERE key = %s", [key]).fetchone()


def ledger(db, campaign_id):
    return db.execute("SELECT * FROM campaign_recipients WHERE campaign_id = %s ORDER BY id", [campaign_id]).fetchall()


def recipients_of(messages):
    counts: dict[str, int] = {}
    for message in messages:
        parsed = email.message_from_string(message.raw_data, policy=email.policy.default)
        to = parsed["To"].addresses[0].addr_spec.lower()
        counts[to] = counts.get(to, 0) + 1
    return counts


def test_inline_campaign_sends_exactly_one_message_per_recipient(send_dag, db, ses):
    emails = [f"user{i}@example.org" for i in range(23)]
    add_contacts(db, emails)

    dag_run = run(send_dag, {"campaign": inline_campaign(), "batch_size": 5})

    assert dag_run.state == "success"
    campaign = campaign_row(db, "nov-news")
    assert campaign["status"] == "sent"
    rows = ledger(db, campaign["id"])
    assert {row["status"] for row in rows} == {"sent"}
    assert len({row["page_no"] for row in rows}) == 5
    assert recipients_of(sent_messages()) == {address: 1 for address in emails}
    assert campaign["summary"]["sent"] == 23


def test_messages_are_well_formed_with_one_click_unsubscribe(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])

    run(send_dag, {"campaign": inline_campaign()})

    [message] = sent_messages()
    parsed = email.message_from_string(message.raw_data, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed["List-Unsubscribe"].startswith("<https://track.example.test/u/")
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Subject"] == "Hi First0"
    html = parsed.get_body(("html",)).get_content()
    assert "Hello First0!" in html
    assert "https://track.example.test/c/" in html
    assert "{{" not in html
    assert "{%" not in html


def test_retriggering_the_same_key_never_creates_a_second_campaign_or_resends(send_dag, db, ses):
    add_contacts(db, ["ana@example.org", "bo@example.org"])
    run(send_dag, {"campaign": inline_campaign()})

    second = run(send_dag, {"campaign": inline_campaign()})

    assert second.state == "failed"  # a sent campaign cannot be sent again
    assert db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"] == 1
    assert len(sent_messages()) == 2


def test_dry_run_stops_after_plan_and_sends_nothing(send_dag, db, ses):
    add_contacts(db, ["ana@example.org", "bo@example.org"])

    dag_run = run(send_dag, {"campaign": inline_campaign(), "dry_run": True})

    assert dag_run.state == "success"
    campaign = campaign_row(db, "nov-news")
    assert campaign["status"] == "draft"
    assert campaign["preflight"]["ok"] is True
    assert {row["status"] for row in ledger(db, campaign["id"])} == {"pending"}
    assert sent_messages() == []


def test_both_campaign_id_and_inline_campaign_fail_before_anything_is_sent(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])

    dag_run = run(send_dag, {"campaign_id": 1, "campaign": inline_campaign()})

    assert dag_run.state == "failed"
    assert sent_messages() == []
    assert db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"] == 0


def test_template_reaching_python_internals_fails_preflight(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"])
    campaign = inline_campaign(html="<p>{{ ''.__class__.__mro__[1].__subclasses__() }}</p>")

    dag_run = run(send_dag, {"campaign": campaign})

    assert dag_run.state == "failed"
    row = campaign_row(db, "nov-news")
    assert row["status"] == "draft"
    assert row["preflight"]["ok"] is False
    assert sent_messages() == []


def test_missing_merge_field_is_reported_per_field_and_blocks_sending(send_dag, db, ses):
    add_contacts(db, ["ana@example.org", "bo@example.org"], attributes=lambda i: {"city": "Graz"} if i == 0 else {})
    campaign = inline_campaign(html="<p>Hello from {{ city }}</p>")

    dag_run = run(send_dag, {"campaign": campaign})

    assert dag_run.state == "failed"
    report = campaign_row(db, "nov-news")["preflight"]
    assert report["missing_fields"]["city"]["count"] == 1
    assert report["missing_fields"]["city"]["examples"] == ["bo@example.org"]
    assert sent_messages() == []


def test_empty_audience_fails_preflight(send_dag, db, ses):
    add_contacts(db, ["ana@example.org"], list_name="other")

    dag_run = run(send_dag, {"campaign": inline_campaign()})

    assert dag_run.state == "failed"
    assert "audience is empty" in " ".join(campaign_row(db, "nov-news")["preflight"]["problems"])


def test_where_filter_selects_by_attribute_with_bound_values(send_dag, db, ses):
    add_contacts(db, ["de@example.org", "at@example.org", "fr@example.org"],
                 attributes=lambda i: {"country": ["DE", "AT", "FR"][i]})
    campaign = inline_campaign(audience={"lists": ["newsletter"], "where": {"country": ["DE", "AT'; DROP TABLE x"]}})

    run(send_dag, {"campaign": campaign})

    assert recipients_of(sent_messages()) == {"de@example.org": 1}


def test_suppressed_unsubscribed_and_duplicate_case_addresses_are_skipped_by_reason(send_dag, db, ses):
    add_contacts(db, ["ok@example.org", "Bounced@Example.org"])
    add_contacts(db, ["gone@example.org"], status="unsubscribed")
    add_contacts(db, ["OK@example.org"], list_name="second")  # same person on a second list
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('bounced@example.org', 'hard_bounce', 't')")

    run(send_dag, {"campaign": inline_campaign(audience={"lists": ["newsletter", "second"]})})

    summary = campaign_row(db, "nov-news")["summary"]
    assert summary["sent"] == 1
    assert summary["skipped_by_reason"] == {"suppressed:hard_bounce": 1, "unsubscribed": 1}
    assert recipients_of(sent_messages()) == {"ok@example.org": 1}


@pytest.mark.parametrize(("name", "value"), [
    ("batch_size", "five hundred"),
    ("batch_size", 0),
    ("campaign_id", "42"),
])
def test_param_schema_rejects_wrong_types_and_values_at_trigger_time(send_dag, name, value):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(send_dag.params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value


# `campaign` is a plain conf key now (not a form field): the same schema refuses it in resolve_campaign, before
# anything is stored, with the field named. (Moved from the Param test above when `campaign` left the params.)
@pytest.mark.parametrize(("value", "message"), [
    ({"key": "x", "subject": "s", "html": "<p>h</p>", "audience": {"lists": []}},
     r"campaign\.audience\.lists: \[\] should be non-empty"),
    ({"key": "bad key!", "subject": "s", "html": "<p>h</p>", "audience": {"lists": ["a"]}},
     r"campaign\.key: 'bad key!' does not match"),
    ({"key": "k", "subject": "s", "html": "<p>h</p>", "audience": {"lists": ["a"]}, "sql": "x"},
     r"campaign: Additional properties are not allowed \('sql' was unexpected\)"),
    ({"key": "k", "subject": 5, "html": "<p>h</p>", "audience": {"lists": ["a"]}},
     r"campaign\.subject: 5 is not of type 'string'"),
])
def test_inline_campaign_schema_refuses_wrong_types_and_values_naming_the_field(db, settings, value, message):
    from campaigns.errors import CampaignDefinitionError
    from campaigns.lifecycle.pipeline import resolve_campaign

    with pytest.raises(CampaignDefinitionError, match=message):
        resolve_campaign({"campaign": value}, "manual__1")

    assert db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"] == 0


def test_an_inline_campaign_of_the_wrong_type_fails_the_run_and_stores_nothing(send_dag, db, ses):
    dag_run = run(send_dag, {"campaign": {"key": "k", "subject": ["s"], "html": "<p>h</p>",
                                          "audience": {"lists": ["newsletter"]}}})

    assert dag_run.state == "failed"
    assert db.execute("SELECT count(*) AS n FROM campaigns").fetchone()["n"] == 0
    assert sent_messages() == []


def test_param_schema_accepts_the_documented_conf(send_dag):
    from airflow.sdk.definitions.param import ParamsDict

    from campaigns.lifecycle.definitions import validate_inline

    params = ParamsDict(send_dag.params)
    params["batch_size"] = 500
    params["campaign_id"] = None
    assert params.validate()["batch_size"] == 500
    validate_inline(inline_campaign(audience={"lists": ["newsletter"], "where": {"country": ["DE", "AT"]}}))


def test_header_injection_through_a_merge_value_fails_preflight_with_the_reason(send_dag, db, ses):
    add_contacts(db, ["eve@example.org"])
    db.execute("UPDATE contacts SET first_name = %s", ["Eve\r\nBcc: victim@example.net"])

    dag_run = run(send_dag, {"campaign": inline_campaign(subject="Hi {{ first_name }}")})

    assert dag_run.state == "failed"
    failures = campaign_row(db, "nov-news")["preflight"]["render_failures"]
    assert next(iter(failures.values()))["examples"] == ["eve@example.org"]
    assert sent_messages() == []


def test_idn_domain_is_sent_punycoded_and_html_in_merge_values_is_escaped(send_dag, db, ses):
    add_contacts(db, ["ana@bücher.example"])
    db.execute("UPDATE contacts SET first_name = %s", ["<script>alert(1)</script>"])

    run(send_dag, {"campaign": inline_campaign()})

    [message] = sent_messages()
    parsed = email.message_from_string(message.raw_data, policy=email.policy.default)
    assert parsed["To"].addresses[0].domain == "xn--bcher-kva.example"
    html = parsed.get_body(("html",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
