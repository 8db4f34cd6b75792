"""send_test_email through dag.test() (real PostgreSQL and Redis, moto for SES), and its request checks."""

from __future__ import annotations

import email
import email.policy

import pytest

from campaigns.config import get_settings
from campaigns.feedback.tokens import UNSUBSCRIBE, TokenCodec
from campaigns.lifecycle import definitions
from campaigns.lifecycle.testsend import TestSendRefused, TestSendRequest
from tests.helpers import add_contacts, inline_campaign, parse_dag, sent_messages

pytestmark = pytest.mark.usefixtures("fast_rate")  # no waiting on the limiter (tested on its own)


@pytest.fixture
def test_email_dag():
    return parse_dag("send_test_email")


@pytest.fixture
def campaign(db):
    """A draft campaign on the newsletter list, with contact ana@example.org (first name First0)."""
    add_contacts(db, ["ana@example.org"])
    definition = definitions.CampaignDefinition.parse(inline_campaign())
    return definitions.upsert_campaign(db, definition)


def parsed(message):
    return email.message_from_string(message.raw_data, policy=email.policy.default)


def by_recipient(messages):
    return {parsed(m)["To"].addresses[0].addr_spec: parsed(m) for m in messages}


def test_sends(db):
    return db.execute("SELECT * FROM test_sends ORDER BY id").fetchall()


test_sends.__test__ = False  # a helper, not a test


def untouched(db, campaign_id):
    """What a test send must never change: the campaign's state and counters, the ledger, the event log."""
    row = db.execute("SELECT status, snapshot, summary, run_id, updated_at FROM campaigns WHERE id = %s",
                     [campaign_id]).fetchone()
    ledger = db.execute("SELECT count(*) AS n FROM campaign_recipients").fetchone()["n"]
    links = db.execute("SELECT count(*) AS n FROM campaign_links").fetchone()["n"]
    return row, ledger, links


def test_contact_gets_own_data_others_get_sample_values_with_a_test_subject(test_email_dag, db, ses, campaign):
    before = untouched(db, campaign["id"])

    dag_run = test_email_dag.test(run_conf={
        "campaign_key": "nov-news", "recipients": ["Ana@Example.org", "qa@example.net"],
        "sample_values": {"first_name": "Sample"}})

    assert dag_run.state == "success"
    messages = by_recipient(sent_messages())
    assert messages["Ana@Example.org"]["Subject"] == "[TEST] Hi First0"
    assert "Hello First0!" in messages["Ana@Example.org"].get_body(("html",)).get_content()
    assert messages["qa@example.net"]["Subject"] == "[TEST] Hi Sample"
    rows = test_sends(db)
    assert [(r["email"], r["status"], r["run_id"]) for r in rows] == [
        ("Ana@Example.org", "sent", dag_run.run_id), ("qa@example.net", "sent", dag_run.run_id)]
    assert rows[0]["contact_id"] is not None  # rendered with the contact's data
    assert rows[1]["contact_id"] is None  # rendered with the sample values
    assert {r["ses_message_id"] for r in rows} == {m.id for m in sent_messages()}
    assert untouched(db, campaign["id"]) == before  # no ledger rows, no stats, no state change


def test_links_are_not_tracked_and_the_unsubscribe_link_never_unsubscribes_the_tester(db, ses, campaign, settings,
                                                                                      redis_client):
    from campaigns.lifecycle.testsend import send_test
    from campaigns.sending.ses import SesTransport
    from tracking_service import create_app

    report = send_test(db, TestSendRequest.parse({"campaign_id": campaign["id"], "recipients": ["ana@example.org"]}),
                       run_id=None, transport=SesTransport(ses), limiter=Unlimited())

    assert report["sent"] == 1
    [message] = [parsed(m) for m in sent_messages()]
    html = message.get_body(("html",)).get_content()
    assert 'href="https://example.com/offer"' in html  # straight to the target
    assert "/c/" not in html  # no click redirect
    assert "/o/" not in html  # no open pixel
    unsubscribe_url = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe_url in html  # the footer link is there, as in the real email
    token = unsubscribe_url.rsplit("/", 1)[1]
    payload = TokenCodec(settings.tracking_secret_keys).decode(UNSUBSCRIBE, token)
    assert (payload.campaign_id, payload.recipient_id) == (campaign["id"], 0)
    client = create_app({"TESTING": True, "TRACKING_DRAINER": False}).test_client()
    response = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 404
    assert db.execute("SELECT count(*) AS n FROM suppressions").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM list_members WHERE status = 'unsubscribed'").fetchone()["n"] == 0


class Unlimited:
    """A limiter that never waits (the limiter's own behaviour is tested in test_ratelimit)."""

    def acquire(self, stop=None):
        return 0.0

    def throttled(self, factor=0.5, seconds=30.0):
        raise AssertionError("not throttled in these tests")


def test_test_sends_take_their_slots_from_the_shared_redis_limiter(test_email_dag, db, ses, campaign, monkeypatch,
                                                                   redis_client):
    monkeypatch.setenv("SES_SENDING_RATE", "4")
    get_settings.cache_clear()

    dag_run = test_email_dag.test(run_conf={"campaign_id": campaign["id"],
                                            "recipients": ["a@example.net", "b@example.net", "c@example.net"],
                                            "sample_values": {"first_name": "Sample"}})

    assert dag_run.state == "success"
    times = [r["sent_at"] for r in test_sends(db)]
    assert (times[-1] - times[0]).total_seconds() >= 2 / 4 * 0.9  # three sends at 4/s span at least 0.5 s
    assert redis_client.keys("ses:rate:*")  # the account's limiter key, the one campaign sends use


def test_a_suppressed_address_is_refused_with_its_reason_and_nothing_is_sent(test_email_dag, db, ses, campaign):
    from campaigns.lifecycle.testsend import send_test
    from campaigns.sending.ses import SesTransport

    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('gone@example.net', 'complaint', 't')")
    request = TestSendRequest.parse({"campaign_id": campaign["id"], "recipients": ["ok@example.net",
                                                                                  "Gone@Example.net"]})

    with pytest.raises(TestSendRefused, match=r"gone@example.net \(complaint\)"):
        send_test(db, request, run_id=None, transport=SesTransport(ses), limiter=Unlimited())
    dag_run = test_email_dag.test(run_conf={"campaign_id": campaign["id"],
                                            "recipients": ["ok@example.net", "Gone@Example.net"]})

    assert dag_run.state == "failed"
    assert sent_messages() == []
    assert test_sends(db) == []


def test_a_template_that_does_not_render_for_a_recipient_sends_nothing(db, ses, campaign):
    from campaigns.lifecycle.testsend import send_test
    from campaigns.sending.ses import SesTransport

    db.execute("UPDATE campaigns SET html = '<p>Hi from {{ city }}</p>' WHERE id = %s", [campaign["id"]])
    request = TestSendRequest.parse({"campaign_id": campaign["id"], "recipients": ["qa@example.net"],
                                     "sample_values": {"first_name": "Sample"}})

    with pytest.raises(TestSendRefused, match=r"qa@example.net \(rendered with sample values\).*city"):
        send_test(db, request, run_id=None, transport=SesTransport(ses), limiter=Unlimited())

    assert sent_messages() == []
    assert test_sends(db) == []


def test_unknown_campaign_key_is_refused(db, ses):
    from campaigns.lifecycle.testsend import send_test
    from campaigns.sending.ses import SesTransport

    with pytest.raises(TestSendRefused, match="campaign 'nope' does not exist"):
        send_test(db, TestSendRequest.parse({"campaign_key": "nope", "recipients": ["a@example.net"]}),
                  run_id=None, transport=SesTransport(ses), limiter=Unlimited())


@pytest.mark.parametrize(("conf", "message"), [
    ({"recipients": ["a@example.net"]}, "exactly one of `campaign_id` or `campaign_key`"),
    ({"campaign_id": 1, "campaign_key": "k", "recipients": ["a@example.net"]}, "exactly one of"),
    ({"campaign_id": 1, "recipients": []}, "recipients must be a list of 1 to 20"),
    ({"campaign_id": 1, "recipients": [f"a{i}@example.net" for i in range(21)]}, "at most 20 test recipients"),
    ({"campaign_id": 1, "recipients": ["not-an-address", "a@example.net", "x\r\nBcc: y@example.net"]},
     "invalid test recipients: .*'not-an-address' is not an email address; .*line break"),
    ({"campaign_id": 1, "recipients": ["a@example.net"], "sample_values": ["x"]}, "sample_values must be an object"),
])
def test_bad_requests_are_refused_naming_the_problem(conf, message):
    with pytest.raises(TestSendRefused, match=message):
        TestSendRequest.parse(conf)


def test_the_same_address_twice_gets_one_test_email():
    request = TestSendRequest.parse({"campaign_id": 1, "recipients": ["a@example.net", "A@Example.NET"]})
    assert request.recipients == ("a@example.net",)


@pytest.mark.parametrize(("name", "value"), [
    ("recipients", [f"a{i}@example.net" for i in range(21)]),
    ("recipients", []),
    ("recipients", "a@example.net"),
    ("campaign_id", "42"),
    ("sample_values", "first_name=Ana"),
])
def test_param_schema_rejects_bad_values_at_trigger_time(test_email_dag, name, value):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(test_email_dag.params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value
