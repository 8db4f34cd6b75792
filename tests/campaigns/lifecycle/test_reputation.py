"""The reputation guard and the SES account guard.

SES feedback reaches the guard the way it does in production: signed SNS notifications posted to the tracking
service's `POST /webhooks/ses`, which joins them to ledger rows by the SES message id. The end-to-end cases run
send_campaign with dag.test() at a low rate while a feedback thread posts the events for the first messages sent.
GetAccount (not implemented by moto) is answered by botocore's Stubber.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from dataclasses import replace

import boto3
import psycopg
import pytest
from botocore.stub import Stubber
from psycopg.rows import dict_row

from campaigns import states
from campaigns.config import ConfigError, Settings
from campaigns.lifecycle.reputation import ReputationGuard, Thresholds, campaign_outcomes, guard_account
from tests.helpers import add_contacts, inline_campaign, insert_campaign, parse_dag, sent_messages
from tests.sns_signing import TOPIC, new_key, self_signed_cert, signed_message
from tracking_service import create_app

THRESHOLDS = Thresholds(min_sample=20, max_bounce_rate=0.05, max_complaint_rate=0.001)


# --- SES feedback through the webhook ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key():
    return new_key()


@pytest.fixture
def webhook(tmp_path, key):
    """The tracking service's test client, verifying SNS signatures against the local test certificate."""
    cert = tmp_path / "sns-test-cert.pem"
    cert.write_bytes(self_signed_cert(key))
    settings = replace(Settings.from_env(), sns_topic_arns=(TOPIC,), sns_test_cert_pem=str(cert))
    app = create_app(test_config={"TESTING": True, "SETTINGS": settings, "TRACKING_DRAINER": False})
    return Feedback(app.test_client(), key)


class Feedback:
    """Posts SES events for ledger rows as signed SNS notifications, the way SNS delivers them."""

    def __init__(self, client, key) -> None:
        self.client = client
        self.key = key

    def post(self, event: dict) -> None:
        message = signed_message(self.key, kind="Notification", version="2", message_id=str(uuid.uuid4()),
                                 body=json.dumps(event))
        response = self.client.post("/webhooks/ses", data=json.dumps(message), content_type="text/plain",
                                    headers={"x-amz-sns-message-type": "Notification"})
        assert response.status_code == 200, response.get_data(as_text=True)

    @staticmethod
    def _event(event_type: str, row: dict, detail_key: str, detail: dict) -> dict:
        now = dt.datetime.now(dt.UTC).isoformat()
        mail = {"timestamp": now, "messageId": row["ses_message_id"], "source": "news@example.com",
                "destination": [row["email"]],
                "tags": {"campaign": [str(row["campaign_id"])], "recipient": [str(row["id"])]}}
        return {"eventType": event_type, "mail": mail, detail_key: {"timestamp": now, **detail}}

    def delivery(self, row: dict) -> None:
        self.post(self._event("Delivery", row, "delivery", {"recipients": [row["email"]], "smtpResponse": "250 ok"}))

    def bounce(self, row: dict, bounce_type: str = "Permanent", subtype: str = "General") -> None:
        self.post(self._event("Bounce", row, "bounce", {
            "bounceType": bounce_type, "bounceSubType": subtype, "feedbackId": str(uuid.uuid4()),
            "bouncedRecipients": [{"emailAddress": row["email"], "action": "failed", "status": "5.1.1"}]}))

    def complaint(self, row: dict) -> None:
        self.post(self._event("Complaint", row, "complaint", {
            "complaintFeedbackType": "abuse", "feedbackId": str(uuid.uuid4()),
            "complainedRecipients": [{"emailAddress": row["email"]}]}))


def test_thresholds_come_from_the_settings_and_a_percentage_is_refused_by_name():
    settings = Settings.from_env({"REPUTATION_MIN_SAMPLE": "500", "REPUTATION_MAX_BOUNCE_RATE": "0.02",
                                  "REPUTATION_MAX_COMPLAINT_RATE": "0.0005"})
    assert Thresholds.from_settings(settings) == Thresholds(500, 0.02, 0.0005)
    assert Thresholds.from_settings(Settings.from_env({})) == Thresholds(200, 0.05, 0.001)
    with pytest.raises(ConfigError, match="REPUTATION_MAX_BOUNCE_RATE must be a fraction"):
        Settings.from_env({"REPUTATION_MAX_BOUNCE_RATE": "5"})  # meant 5 %, would never trip


# --- the guard's rules, on a running campaign with sent ledger rows ---------------------------------------------

@pytest.fixture
def sent_rows(db):
    """A running campaign with 40 sent ledger rows (ses-msg-0..39), as a send task leaves them."""
    campaign_id = insert_campaign(db, "spring")
    db.execute("UPDATE campaigns SET status = 'running' WHERE id = %s", [campaign_id])
    return [db.execute(
        "INSERT INTO campaign_recipients (campaign_id, email, status, ses_message_id, sent_at)"
        " VALUES (%s, %s, 'sent', %s, now()) RETURNING id, campaign_id, email, ses_message_id",
        [campaign_id, f"user{i}@example.org", f"ses-msg-{i}"]).fetchone() for i in range(40)]


def guard(campaign_id: int, run_id: str = "run-1") -> ReputationGuard:
    return ReputationGuard(campaign_id, THRESHOLDS, interval=0, run_id=run_id)


def campaign(db, campaign_id: int) -> dict:
    return db.execute("SELECT status, status_reason FROM campaigns WHERE id = %s", [campaign_id]).fetchone()


def actions(db, campaign_id: int) -> list[dict]:
    return db.execute("SELECT * FROM campaign_actions WHERE campaign_id = %s ORDER BY id", [campaign_id]).fetchall()


def test_rates_are_not_judged_before_the_minimum_sample(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:10]:
        webhook.bounce(row)
    for row in sent_rows[10:19]:
        webhook.delivery(row)

    assert guard(campaign_id).check(db) is None  # 10 hard bounces of 19: half, but below the sample of 20
    assert campaign(db, campaign_id)["status"] == "running"

    webhook.delivery(sent_rows[19])

    assert guard(campaign_id).check(db) == (
        "bounce rate 50% (10 hard bounces of 20 delivered or bounced) exceeds the 5% threshold")
    assert campaign(db, campaign_id)["status"] == "paused"


def test_soft_and_account_suppressed_bounces_count_in_the_sample_not_the_bounce_rate(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:15]:
        webhook.delivery(row)
    for row in sent_rows[15:18]:
        webhook.bounce(row, "Transient", "MailboxFull")
    webhook.bounce(sent_rows[18], "Undetermined", "Undetermined")
    webhook.bounce(sent_rows[19], "Permanent", "OnAccountSuppressionList")
    webhook.bounce(sent_rows[20], "Permanent", "General")

    assert guard(campaign_id).check(db) is None  # 1 hard bounce of 21 = 4.76%
    outcomes = campaign_outcomes(db, campaign_id)
    assert (outcomes.delivered, outcomes.bounced, outcomes.hard_bounced) == (15, 6, 1)

    webhook.bounce(sent_rows[21], "Permanent", "NoEmail")

    assert guard(campaign_id).check(db) == (
        "bounce rate 9.09% (2 hard bounces of 22 delivered or bounced) exceeds the 5% threshold")


def test_a_rate_equal_to_the_threshold_does_not_pause_and_a_repeated_event_counts_once(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:19]:
        webhook.delivery(row)
    webhook.bounce(sent_rows[19])
    webhook.bounce(sent_rows[19])  # the same bounce again under another SNS id (e.g. also an identity notification)

    assert guard(campaign_id).check(db) is None  # 1 of 20 = exactly 5%: "exceeds" means above
    assert campaign(db, campaign_id)["status"] == "running"


def test_a_complaint_over_the_rate_pauses_with_the_reason_and_an_audit_row(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:25]:
        webhook.delivery(row)
    webhook.complaint(sent_rows[3])

    reason = guard(campaign_id, run_id="manual__2026").check(db)

    assert reason == "complaint rate 4% (1 complaint of 25 delivered or bounced) exceeds the 0.1% threshold"
    assert campaign(db, campaign_id) == {"status": "paused", "status_reason": reason}
    [action] = actions(db, campaign_id)
    assert (action["action"], action["actor"], action["run_id"], action["old_status"], action["new_status"],
            action["reason"]) == ("pause", "reputation_guard", "manual__2026", "running", "paused", reason)
    assert action["detail"]["outcomes"]["complained"] == 1
    assert action["detail"]["thresholds"]["max_complaint_rate"] == 0.001


def test_two_send_tasks_seeing_the_same_rates_pause_the_campaign_once(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:20]:
        webhook.bounce(row)

    verdicts = [guard(campaign_id).check(db), guard(campaign_id).check(db)]

    assert verdicts[0] is not None
    assert verdicts[1] is None
    assert len(actions(db, campaign_id)) == 1


def test_after_a_resume_only_feedback_since_the_pause_is_judged(db, webhook, sent_rows):
    campaign_id = sent_rows[0]["campaign_id"]
    for row in sent_rows[:20]:
        webhook.bounce(row)
    assert guard(campaign_id).check(db) is not None
    states.move_campaign(db, campaign_id, states.RUNNING, expected=states.PAUSED)  # a person resumes it

    assert guard(campaign_id).check(db) is None  # no new evidence yet: no instant second pause
    assert campaign(db, campaign_id)["status"] == "running"
    for row in sent_rows[20:40]:
        webhook.delivery(row)
    outcomes = campaign_outcomes(db, campaign_id)
    assert (outcomes.delivered, outcomes.bounced) == (20, 0)
    assert guard(campaign_id).check(db) is None


# --- while a campaign is really sending -------------------------------------------------------------------------

@pytest.fixture
def send_dag():
    return parse_dag("send_campaign")


@pytest.fixture
def slow_sending(settings_env, redis_client):
    """20 sends/s, so 200 recipients take 10 s; rates judged from 20 messages on, counted every 0.5 s."""
    settings_env(SES_SENDING_RATE=20, REPUTATION_MIN_SAMPLE=20, REPUTATION_CHECK_SECONDS=0.5)


class FeedbackThread(threading.Thread):
    """Waits until the first `n` messages are sent, then posts their SES feedback through the webhook."""

    def __init__(self, dsn: str, webhook: Feedback, n: int, post) -> None:
        super().__init__(name="ses-feedback", daemon=True)
        self.dsn, self.webhook, self.n, self.post_feedback = dsn, webhook, n, post
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
                deadline = time.monotonic() + 60
                rows: list[dict] = []
                while len(rows) < self.n:  # waits for a condition (rows sent), bounded by the deadline
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"fewer than {self.n} messages were sent within 60 s")
                    time.sleep(0.05)
                    rows = conn.execute(
                        "SELECT id, campaign_id, email, ses_message_id FROM campaign_recipients"
                        " WHERE status = 'sent' ORDER BY sent_at, id LIMIT %s", [self.n]).fetchall()
                self.post_feedback(self.webhook, rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc


def hard_bounces(webhook: Feedback, rows: list[dict]) -> None:
    for row in rows[:18]:
        webhook.delivery(row)
    for row in rows[18:]:
        webhook.bounce(row)


def complaint(webhook: Feedback, rows: list[dict]) -> None:
    for row in rows:
        webhook.delivery(row)
    webhook.complaint(rows[0])


@pytest.mark.parametrize(("feedback", "reason"), [
    (hard_bounces, "bounce rate 10% (2 hard bounces of 20 delivered or bounced) exceeds the 5% threshold"),
    (complaint, "complaint rate 5% (1 complaint of 20 delivered or bounced) exceeds the 0.1% threshold"),
], ids=["bounce_rate", "complaint_rate"])
def test_a_sending_campaign_is_paused_soon_after_its_rate_crosses_the_threshold(
        send_dag, db, ses, dsn, webhook, slow_sending, feedback, reason):
    add_contacts(db, [f"user{i:03d}@example.org" for i in range(200)])
    thread = FeedbackThread(dsn, webhook, 20, feedback)
    thread.start()

    dag_run = send_dag.test(run_conf={"campaign": inline_campaign(), "batch_size": 50})
    thread.join(timeout=30)

    assert thread.error is None, thread.error
    assert dag_run.state == "success"  # a pause is not a failure: the run ends, the campaign waits for a person
    row = db.execute("SELECT id, status, status_reason FROM campaigns WHERE key = 'nov-news'").fetchone()
    assert (row["status"], row["status_reason"]) == ("paused", reason)
    [action] = actions(db, row["id"])
    assert (action["actor"], action["action"], action["reason"], action["run_id"]) == (
        "reputation_guard", "pause", reason, dag_run.run_id)
    counts = {r["status"]: r["n"] for r in db.execute(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s GROUP BY status", [row["id"]])}
    assert set(counts) == {"sent", "pending"}  # the rest stays pending, to be resumed or cancelled
    assert counts["pending"] >= 100
    assert len(sent_messages()) == counts["sent"]
    # From recorded timestamps: paused within 2 s of the threshold being crossed (0.5 s check cadence, 0.5 s status
    # re-read, and slack for a busy machine), and no send claimed more than 1 s after the pause (a thread that read
    # the status just before the pause still takes its limiter slot: 0.1 s at this rate, plus slack).
    # The threshold was crossed by the last event recorded (the ones before it are below the sample or the rate).
    crossed_at = db.execute("SELECT max(created_at) AS t FROM email_events WHERE campaign_id = %s",
                            [row["id"]]).fetchone()["t"]
    last_claim = db.execute("SELECT max(claimed_at) AS t FROM campaign_recipients WHERE campaign_id = %s",
                            [row["id"]]).fetchone()["t"]
    assert (action["requested_at"] - crossed_at).total_seconds() <= 2.0
    assert (last_claim - action["requested_at"]).total_seconds() <= 1.0


# --- the SES account guard ----------------------------------------------------------------------------------------

def account(*, enabled: bool = True, status: str = "HEALTHY") -> dict:
    """A GetAccount answer as SES gives it."""
    return {"SendingEnabled": enabled, "EnforcementStatus": status, "ProductionAccessEnabled": True,
            "DedicatedIpAutoWarmupEnabled": False,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 120.0}}


@pytest.fixture
def stubbed_ses():
    client = boto3.client("sesv2", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber


@pytest.fixture
def campaigns_by_status(db):
    ids = {}
    for status in ("running", "running2", "paused", "draft", "sent"):
        ids[status] = insert_campaign(db, status)
        db.execute("UPDATE campaigns SET status = %s WHERE id = %s", [status.rstrip("2"), ids[status]])
    return ids


def statuses(db) -> dict[str, tuple[str, str | None]]:
    return {row["key"]: (row["status"], row["status_reason"])
            for row in db.execute("SELECT key, status, status_reason FROM campaigns")}


@pytest.mark.parametrize(("answer", "problem"), [
    (account(status="PROBATION"), "the account's enforcement status is PROBATION, not HEALTHY"),
    (account(enabled=False), "sending is disabled for the account (SendingEnabled false)"),
    (account(enabled=False, status="SHUTDOWN"), "sending is disabled for the account (SendingEnabled false); "
                                                "the account's enforcement status is SHUTDOWN, not HEALTHY"),
], ids=["probation", "sending_disabled", "shutdown"])
def test_an_unhealthy_account_pauses_every_running_campaign(db, stubbed_ses, campaigns_by_status, answer, problem):
    client, stubber = stubbed_ses
    stubber.add_response("get_account", answer, {})

    result = guard_account(db, client, run_id="scheduled__1")

    stubber.assert_no_pending_responses()
    reason = f"SES account guard: {problem}"
    assert result["problem"] == problem
    assert sorted(result["paused"]) == sorted([campaigns_by_status["running"], campaigns_by_status["running2"]])
    assert statuses(db) == {"running": ("paused", reason), "running2": ("paused", reason),
                            "paused": ("paused", None), "draft": ("draft", None), "sent": ("sent", None)}
    rows = db.execute("SELECT campaign_id, actor, action, run_id, reason FROM campaign_actions ORDER BY id").fetchall()
    assert [(r["campaign_id"], r["actor"], r["action"], r["run_id"], r["reason"]) for r in rows] == [
        (campaigns_by_status[key], "ses_account_guard", "pause", "scheduled__1", reason)
        for key in ("running", "running2")]


def test_a_healthy_account_changes_nothing(db, stubbed_ses, campaigns_by_status):
    client, stubber = stubbed_ses
    stubber.add_response("get_account", account(), {})
    before = statuses(db)

    result = guard_account(db, client)

    stubber.assert_no_pending_responses()
    assert result["problem"] is None
    assert result["paused"] == []
    assert statuses(db) == before
    assert actions(db, campaigns_by_status["running"]) == []


def test_a_local_ses_endpoint_is_not_checkable_and_pauses_nothing(db, campaigns_by_status):
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url="http://127.0.0.1:25500")
    with Stubber(client) as stubber:  # no responses queued: any call would fail the test
        before = statuses(db)

        result = guard_account(db, client)

        stubber.assert_no_pending_responses()
    assert result == {"checked": False, "problem": None, "paused": [], "note": "not checkable locally"}
    assert statuses(db) == before
