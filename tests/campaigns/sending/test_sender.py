"""The send loop against real PostgreSQL and Redis and moto's SES, with faults injected at the SES client.

Faults are injected with a botocore `before-call` handler on the client: the code under test is unchanged and
sees exactly what a real SES error answer looks like.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import boto3
import pytest
import redis as redis_lib
import requests

from campaigns import db as campaign_db
from campaigns.config import get_settings
from campaigns.errors import TemplateProblem
from campaigns.lifecycle import pipeline
from campaigns.sending.ledger import Attempt
from campaigns.sending.messages import composer_for
from campaigns.sending.plan import SendTask
from campaigns.sending.ratelimit import LimiterUnavailable, RateLimiter
from campaigns.sending.resources import SendResources
from campaigns.sending.sender import SendBatch, SlotQueue
from campaigns.sending.ses import SesTransport, client_config
from devstack.settings import SETTINGS
from tests.helpers import add_contacts, inline_campaign, sent_messages


class FakeHttp:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.content = b""


def inject(client, decide):
    """Answer SendEmail with an SES error whenever decide(recipient) returns (status, code); else send for real."""

    def before_call(params, **kwargs):
        body = json.loads(params["body"])
        verdict = decide(body["Destination"]["ToAddresses"][0])
        if verdict is None:
            return None
        status, code = verdict
        return FakeHttp(status), {"Error": {"Code": code, "Message": f"injected {code}"},
                                  "ResponseMetadata": {"HTTPStatusCode": status}}

    client.meta.events.register("before-call.sesv2.SendEmail", before_call)


@pytest.fixture
def limiter(redis_client):
    return RateLimiter(redis_client, "ses:rate:test:us-east-1", rate=2000, burst=5)


@pytest.fixture
def campaign(db, settings):
    """A running campaign with 40 recipients in pages of 10, planned as one send task."""
    add_contacts(db, [f"user{i}@example.org" for i in range(40)])
    campaign_id = pipeline.resolve_campaign({"campaign": inline_campaign()}, "run-1")
    pipeline.snapshot_recipients(campaign_id, {"batch_size": 10})
    [task] = pipeline.plan_batches(campaign_id, {"batch_size": 10}, "run-1", rate=1000)
    return campaign_id, SendTask.from_dict(task)


FIRST_TRY = Attempt("run-1", 0, 1)  # run-1/0/1 in the ledger


def batch(task, ses, limiter, *, attempt=FIRST_TRY, threads=4, client=None):
    with campaign_db.connect(SETTINGS.pg_dsn(SETTINGS.test_campaign_db)) as conn:
        campaign = conn.execute("SELECT * FROM campaigns WHERE id = %s", [task.campaign_id]).fetchone()
    return SendBatch(task, attempt=attempt, from_email="news@example.com",
                     builder=composer_for(campaign, get_settings()),
                     transport=SesTransport(client or ses, configuration_set="campaign-events"),
                     limiter=limiter, threads=threads,
                     connect=lambda: campaign_db.connect(SETTINGS.pg_dsn(SETTINGS.test_campaign_db), autocommit=True))


def statuses(db, campaign_id):
    rows = db.execute("SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = %s GROUP BY 1",
                      [campaign_id]).fetchall()
    return {row["status"]: row["n"] for row in rows}


def messages_per_recipient(messages=None):
    counts: Counter[str] = Counter()
    for message in sent_messages() if messages is None else messages:
        parsed = email.message_from_string(message.raw_data, policy=email.policy.default)
        counts[parsed["To"].addresses[0].addr_spec] += 1
    return counts


def test_every_pending_recipient_is_sent_once(campaign, ses, limiter, db):
    campaign_id, task = campaign

    report = batch(task, ses, limiter).run()

    assert report.counts["sent"] == 40
    assert statuses(db, campaign_id) == {"sent": 40}
    assert set(messages_per_recipient().values()) == {1}
    ids = db.execute("SELECT ses_message_id FROM campaign_recipients WHERE campaign_id = %s", [campaign_id])
    assert all(row["ses_message_id"] for row in ids)


def test_retry_never_resends_a_recipient_an_earlier_attempt_claimed(campaign, ses, limiter, db):
    campaign_id, task = campaign
    # An earlier attempt died (no cleanup ran) while these three were in flight.
    db.execute("""UPDATE campaign_recipients SET status = 'sending', attempt = 'run-1/0/1', claimed_at = now()
                  WHERE id IN (SELECT id FROM campaign_recipients WHERE campaign_id = %s ORDER BY id LIMIT 3)""",
               [campaign_id])

    report = batch(task, ses, limiter, attempt=Attempt("run-1", 0, 2)).run()

    assert report.settled_unknown == 3
    assert statuses(db, campaign_id) == {"sent": 37, "unknown": 3}
    assert sum(messages_per_recipient().values()) == 37
    assert set(messages_per_recipient().values()) == {1}


def test_retry_settles_a_row_ses_already_reported_on_as_sent_and_never_resends_it(campaign, ses, limiter, db):
    campaign_id, task = campaign
    # An earlier attempt died after SES accepted two of its three in-flight messages; SES's Send events for those
    # two arrived (matched by their tags) while the rows were still `sending`, so the webhook left them alone.
    rows = db.execute("""UPDATE campaign_recipients SET status = 'sending', attempt = 'run-1/0/1', claimed_at = now()
                          WHERE id IN (SELECT id FROM campaign_recipients WHERE campaign_id = %s ORDER BY id LIMIT 3)
                         RETURNING id, email""", [campaign_id]).fetchall()
    rows.sort(key=lambda row: row["id"])
    for i, row in enumerate(rows[:2]):
        db.execute("""INSERT INTO email_events (campaign_id, recipient_id, email, type, sns_message_id, ses_message_id,
                                                occurred_at)
                      VALUES (%s, %s, %s, 'send', %s, %s, now())""",
                   [campaign_id, row["id"], row["email"], f"sns-{i}", f"ses-accepted-{i}"])

    report = batch(task, ses, limiter, attempt=Attempt("run-1", 0, 2)).run()

    assert (report.settled_sent, report.settled_unknown) == (2, 1)
    settled = {row["id"]: (row["status"], row["ses_message_id"]) for row in db.execute(
        "SELECT id, status, ses_message_id FROM campaign_recipients WHERE id = ANY(%s)", [[r["id"] for r in rows]])}
    assert settled == {rows[0]["id"]: ("sent", "ses-accepted-0"), rows[1]["id"]: ("sent", "ses-accepted-1"),
                       rows[2]["id"]: ("unknown", None)}
    assert sum(messages_per_recipient().values()) == 37  # none of the three was sent again


def test_injected_throttling_is_retried_to_success(campaign, ses, limiter, db):
    campaign_id, task = campaign
    chance = random.Random(7)
    inject(ses, lambda to: (400, "TooManyRequestsException") if chance.random() < 0.3 else None)

    batch(task, ses, limiter).run()

    assert statuses(db, campaign_id) == {"sent": 40}
    assert set(messages_per_recipient().values()) == {1}
    assert len(messages_per_recipient()) == 40


def test_a_rejected_address_is_failed_with_the_reason_and_the_rest_go_out(campaign, ses, limiter, db):
    campaign_id, task = campaign
    inject(ses, lambda to: (400, "MessageRejected") if to == "user7@example.org" else None)

    report = batch(task, ses, limiter).run()

    assert report.counts["failed"] == 1
    assert statuses(db, campaign_id) == {"sent": 39, "failed": 1}
    row = db.execute("SELECT error FROM campaign_recipients WHERE email = 'user7@example.org'").fetchone()
    assert "MessageRejected" in row["error"]


class FailingBuilder:
    """The real composer, except that composing for `address` raises `error`."""

    def __init__(self, builder, address: str, error: Exception) -> None:
        self.builder, self.address, self.error = builder, address, error
        self.feedback_tags = builder.feedback_tags

    def compose(self, recipient_id, to_email, merge_data):
        if to_email == self.address:
            raise self.error
        return self.builder.compose(recipient_id, to_email, merge_data)


def test_a_template_problem_fails_only_that_recipient_and_the_rest_go_out(campaign, ses, limiter, db):
    campaign_id, task = campaign
    sender = batch(task, ses, limiter)
    sender.builder = FailingBuilder(sender.builder, "user7@example.org",
                                    TemplateProblem("html template, line 3: 'city' is undefined", part="html", line=3))

    report = sender.run()

    assert report.error is None
    assert report.counts["failed"] == 1
    assert statuses(db, campaign_id) == {"sent": 39, "failed": 1}
    row = db.execute("SELECT error FROM campaign_recipients WHERE email = 'user7@example.org'").fetchone()
    assert row["error"].startswith("compose: html template, line 3")


def test_a_plain_value_error_from_the_composer_is_a_bug_that_fails_the_task_not_the_recipient(campaign, ses,
                                                                                               limiter, db):
    campaign_id, task = campaign
    bug = ValueError("a programming mistake in the composer")
    sender = batch(task, ses, limiter, threads=1)
    sender.builder = FailingBuilder(sender.builder, "user7@example.org", bug)

    report = sender.run()

    assert report.error is bug
    assert report.counts["failed"] == 0
    counts = statuses(db, campaign_id)
    assert "failed" not in counts
    row = db.execute("SELECT status, error FROM campaign_recipients WHERE email = 'user7@example.org'").fetchone()
    assert row["status"] != "failed"
    assert row["error"] is None


def test_a_paused_account_stops_the_campaign_with_pending_rows_left(campaign, ses, limiter, db):
    campaign_id, task = campaign
    sent = Counter()

    def decide(to):
        sent["calls"] += 1
        return (400, "SendingPausedException") if sent["calls"] > 5 else None

    inject(ses, decide)

    result = pipeline.send_batch(task.as_dict(), attempt=FIRST_TRY,
                                 resources=SendResources(ses_client=ses, limiter=limiter, threads=1))

    row = db.execute("SELECT status, status_reason FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    assert row["status"] == "paused"
    assert "SendingPausedException" in row["status_reason"]
    assert result["account_stopped"]
    counts = statuses(db, campaign_id)
    assert counts["sent"] == 5
    assert counts["pending"] == 35
    assert "sending" not in counts


def test_an_address_suppressed_mid_campaign_is_skipped(campaign, ses, limiter, db):
    campaign_id, task = campaign
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('user3@example.org', 'unsubscribe', 't')")

    batch(task, ses, limiter).run()

    assert statuses(db, campaign_id) == {"sent": 39, "skipped": 1}
    assert "user3@example.org" not in messages_per_recipient()


def send_email_requests(task, ses, limiter, *, threads: int) -> list[dict]:
    """Run the task's batch; the parameters of every SendEmail it made."""
    captured = []
    ses.meta.events.register("provide-client-params.sesv2.SendEmail",
                             lambda params, **kwargs: captured.append(params))
    batch(task, ses, limiter, threads=threads).run()
    return captured


def test_send_email_carries_the_configuration_set_and_tags(campaign, ses, limiter, db):
    _, task = campaign
    captured = send_email_requests(task, ses, limiter, threads=1)

    assert len(captured) == 40
    first = captured[0]
    assert first["ConfigurationSetName"] == "campaign-events"
    tags = {tag["Name"]: tag["Value"] for tag in first["EmailTags"]}
    assert tags["campaign"] == str(task.campaign_id)
    assert tags["recipient"].isdigit()
    assert first["Destination"] == {"ToAddresses": ["user0@example.org"]}


def test_every_message_carries_the_list_id_and_the_feedback_id_tags_never_a_feedback_id_header(campaign, ses,
                                                                                                 limiter, db):
    _, task = campaign
    captured = send_email_requests(task, ses, limiter, threads=2)

    assert len(captured) == 40
    for params in captured:
        tags = {tag["Name"]: tag["Value"] for tag in params["EmailTags"]}
        # SES writes "Feedback-ID: nov-news:newsletter:<its id>:AmazonSES" from these two
        assert tags["ses:feedback-id-a"] == "nov-news"
        assert tags["ses:feedback-id-b"] == "newsletter"
        message = email.message_from_bytes(params["Content"]["Raw"]["Data"], policy=email.policy.default)
        assert message["List-Id"] == "newsletter <newsletter.example.com>"
        assert message["Feedback-ID"] is None


def test_redis_down_sends_nothing_and_says_why(campaign, ses, db):
    campaign_id, task = campaign
    dead = RateLimiter(redis_lib.Redis(port=1, socket_connect_timeout=0.5), "ses:rate:test:us-east-1", rate=10)

    sender = batch(task, ses, dead)
    sender.limiter_outage_seconds = 1.0  # longer than the task is willing to wait: it fails, saying why
    report = sender.run()

    assert isinstance(report.error, LimiterUnavailable)
    assert statuses(db, campaign_id) == {"pending": 40}
    assert sent_messages() == []


class FlakyLimiter:
    """The real limiter behind an outage: unreachable (LimiterUnavailable) until `up_at` (time.monotonic())."""

    def __init__(self, limiter, up_at: float) -> None:
        self.limiter, self.up_at = limiter, up_at
        self.refused = 0

    def reserve(self, count=1):
        if time.monotonic() < self.up_at:
            self.refused += 1
            raise LimiterUnavailable("Redis connection refused (simulated outage)")
        return self.limiter.reserve(count)

    def throttled(self, *args, **kwargs):
        return self.limiter.throttled(*args, **kwargs)


def test_a_short_limiter_outage_is_waited_out_without_sending(campaign, ses, limiter, db):
    campaign_id, task = campaign
    sends: list[float] = []
    ses.meta.events.register("before-call.sesv2.SendEmail", lambda **_: sends.append(time.monotonic()))
    flaky = FlakyLimiter(limiter, up_at=time.monotonic() + 1.5)

    report = batch(task, ses, flaky).run()

    assert report.error is None
    assert flaky.refused >= 4  # every thread met the outage
    assert sends
    assert min(sends) >= flaky.up_at  # not one message while the limiter was unreachable
    assert statuses(db, campaign_id) == {"sent": 40}
    assert messages_per_recipient() == {f"user{i}@example.org": 1 for i in range(40)}


def test_pause_stops_sending_within_a_second(campaign, ses, redis_client, db):
    campaign_id, task = campaign
    slow = RateLimiter(redis_client, "ses:rate:test:slow", rate=20)
    paused_at = {}

    def pause_after_some_sends():
        while statuses(db, campaign_id).get("sent", 0) < 5:
            time.sleep(0.05)
        paused_at["t"] = db.execute(
            "UPDATE campaigns SET status = 'paused' WHERE id = %s RETURNING clock_timestamp() AS t",
            [campaign_id]).fetchone()["t"]

    pauser = threading.Thread(target=pause_after_some_sends)
    pauser.start()
    report = batch(task, ses, slow).run()
    pauser.join()

    last_sent = db.execute("SELECT max(sent_at) AS t FROM campaign_recipients WHERE campaign_id = %s",
                           [campaign_id]).fetchone()["t"]
    assert report.stop_reason == "campaign is paused"
    assert (last_sent - paused_at["t"]).total_seconds() <= 1.0
    assert statuses(db, campaign_id)["pending"] > 0
    assert "sending" not in statuses(db, campaign_id)


CHILD = """
import json, sys
from campaigns import db
from campaigns.config import get_settings
from campaigns.sending.ledger import Attempt
from campaigns.sending.messages import composer_for
from campaigns.sending.plan import SendTask
from campaigns.sending.ratelimit import RateLimiter
from campaigns.sending.sender import SendBatch
from campaigns.sending.ses import SesTransport, client_config
import boto3, redis
args = json.loads(sys.argv[1])
task = SendTask.from_dict(args["task"])
client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=args["endpoint"], config=client_config())
connect = lambda: db.connect(args["dsn"], autocommit=True)
campaign = connect().execute("SELECT * FROM campaigns WHERE id = %s", [task.campaign_id]).fetchone()
SendBatch(task, attempt=Attempt("run-1", 0, args.get("try", 1)), from_email="news@example.com",
          builder=composer_for(campaign, get_settings()),
          transport=SesTransport(client), limiter=RateLimiter(redis.Redis.from_url(args["redis"]),
          "ses:rate:test:kill", rate=40), connect=connect, threads=4).run()
"""


@pytest.fixture
def moto_server():
    """moto in a thread of this process (the send processes reach it over HTTP): (endpoint, sesv2 client)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        requests.post(f"{endpoint}/moto-api/reset", timeout=10)  # the backends are per process: start empty
        client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=endpoint, config=client_config())
        client.create_email_identity(EmailIdentity="example.com")
        yield endpoint, client
    finally:
        server.stop()


def _killed_after(db, campaign_id, task, endpoint, *, sent: int, attempt: int = 1) -> dict:
    """Run the task in a child process and SIGKILL it (no cleanup runs) once `sent` rows are `sent`: the
    ledger's counts right after."""
    args = json.dumps({"task": task.as_dict(), "endpoint": endpoint, "try": attempt,
                       "dsn": SETTINGS.pg_dsn(SETTINGS.test_campaign_db),
                       "redis": SETTINGS.redis_url(SETTINGS.test_redis_db)})
    child = subprocess.Popen([sys.executable, "-c", CHILD, args], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while statuses(db, campaign_id).get("sent", 0) < sent and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return statuses(db, campaign_id)


def _moto_sends_per_recipient() -> Counter:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return messages_per_recipient(ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages)


def test_processes_killed_at_random_points_leave_no_more_sending_rows_than_sends_in_flight(
        campaign, db, redis_client, moto_server):
    """Four attempts SIGKILLed one after another, each at a random point of its sending; a fifth finishes. After
    every kill at most the 4 threads' rows are `sending` (each thread holds one: the row it is sending, or the one
    SES just accepted and its next claim records); nobody is sent twice and every row ends terminal."""
    campaign_id, task = campaign
    endpoint, client = moto_server
    rng = random.Random(19)
    for attempt in range(1, 5):
        already = statuses(db, campaign_id).get("sent", 0)
        counts = _killed_after(db, campaign_id, task, endpoint, sent=already + rng.randint(1, 6), attempt=attempt)
        assert counts.get("sending", 0) <= 4, (attempt, counts)
    batch(task, client, RateLimiter(redis_client, "ses:rate:test:kill", rate=1000),
          attempt=Attempt("run-1", 0, 5), client=client).run()

    after = statuses(db, campaign_id)
    assert set(after) <= {"sent", "unknown"}
    assert sum(after.values()) == 40
    per_recipient = _moto_sends_per_recipient()
    assert max(per_recipient.values()) == 1
    sent_rows = db.execute("SELECT email FROM campaign_recipients WHERE campaign_id = %s AND status = 'sent'",
                           [campaign_id]).fetchall()
    assert all(per_recipient[row["email"]] == 1 for row in sent_rows)


def test_sigkill_mid_batch_then_retry_sends_each_recipient_at_most_once(campaign, db, redis_client, moto_server):
    """A sending process is killed with SIGKILL (no cleanup runs); the retry settles and finishes the task."""
    campaign_id, task = campaign
    endpoint, client = moto_server
    before = _killed_after(db, campaign_id, task, endpoint, sent=12)
    assert 0 < before.get("pending", 0) < 40, before

    report = batch(task, client, RateLimiter(redis_client, "ses:rate:test:kill", rate=1000),
                   attempt=Attempt("run-1", 0, 2), client=client).run()

    after = statuses(db, campaign_id)
    assert set(after) <= {"sent", "unknown"}  # every row terminal
    assert after.get("unknown", 0) == report.settled_unknown == before.get("sending", 0)
    assert after.get("unknown", 0) <= 4  # at most the killed task's in-flight sends
    per_recipient = _moto_sends_per_recipient()
    assert max(per_recipient.values()) == 1  # nobody got the campaign twice
    sent_rows = db.execute("SELECT email FROM campaign_recipients WHERE campaign_id = %s AND status = 'sent'",
                           [campaign_id]).fetchall()
    assert all(per_recipient[row["email"]] == 1 for row in sent_rows)  # nobody marked sent was lost


def test_tracked_links_are_registered_before_the_first_message_leaves(campaign, ses, limiter, db):
    campaign_id, task = campaign
    inject(ses, lambda to: (400, "SendingPausedException"))  # nothing goes out at all

    pipeline.send_batch(task.as_dict(), attempt=FIRST_TRY,
                        resources=SendResources(ses_client=ses, limiter=limiter, threads=1))

    links = db.execute("SELECT link_id, url FROM campaign_links WHERE campaign_id = %s", [campaign_id]).fetchall()
    assert [(row["link_id"], row["url"]) for row in links] == [(0, "https://example.com/offer")]


def test_a_send_task_stops_when_another_run_drives_the_campaign(campaign, ses, limiter, db):
    campaign_id, task = campaign
    # campaign_control resumed the campaign for run-2 while this task of run-1 was still going
    db.execute("UPDATE campaigns SET run_id = 'run-2' WHERE id = %s", [campaign_id])

    report = batch(task, ses, limiter, attempt=FIRST_TRY).run()

    assert "under run run-2" in report.stop_reason
    assert statuses(db, campaign_id) == {"pending": 40}
    assert sent_messages() == []


def test_a_campaign_paused_before_its_resumed_run_starts_is_not_sent(campaign, db):
    campaign_id, _ = campaign
    db.execute("UPDATE campaigns SET status = 'paused', run_id = 'run-2' WHERE id = %s", [campaign_id])

    assert pipeline.resolve_campaign({"campaign_id": campaign_id}, "run-2") is None
    assert db.execute("SELECT status FROM campaigns WHERE id = %s", [campaign_id]).fetchone()["status"] == "paused"
    # another run may still resume it: the refusal is only for the run the pause overtook
    assert pipeline.resolve_campaign({"campaign_id": campaign_id}, "run-3") == campaign_id


def test_finalize_of_an_earlier_run_leaves_the_resumed_campaign_alone(campaign, db):
    campaign_id, _ = campaign
    db.execute("UPDATE campaigns SET run_id = 'run-2' WHERE id = %s", [campaign_id])

    summary = pipeline.finalize(campaign_id, "run-1")

    assert (summary["status"], summary["incomplete"]) == ("running", None)
    row = db.execute("SELECT status, run_id FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    assert (row["status"], row["run_id"]) == ("running", "run-2")
    # the run that drives it settles it as before: still pending rows -> paused, with the reason
    assert pipeline.finalize(campaign_id, "run-2")["status"] == "paused"


class ScriptedLimiter:
    """A limiter that hands out the given reservations (lists of time.monotonic() instants) in order."""

    def __init__(self, *reservations: list[float]) -> None:
        self.reservations = list(reservations)
        self.asked: list[int] = []

    def reserve(self, count=1):
        self.asked.append(count)
        return self.reservations.pop(0)

    def throttled(self, *args, **kwargs):
        return None


def test_slots_reserved_together_are_handed_out_in_order_one_round_trip_for_the_batch():
    now = time.monotonic()
    limiter = ScriptedLimiter([now + 1.0, now + 1.01, now + 1.02], [now + 1.03, now + 1.04, now + 1.05])
    slots = SlotQueue(limiter, batch=3)

    taken = [slots.next() for _ in range(4)]

    assert taken == [now + 1.0, now + 1.01, now + 1.02, now + 1.03]
    assert limiter.asked == [3, 3]


def test_a_queued_slot_already_late_by_more_than_its_spacing_is_dropped_never_sent_late():
    now = time.monotonic()
    late, on_time = [now - 1.0, now - 0.99, now - 0.98], [now + 0.5, now + 0.51, now + 0.52]
    limiter = ScriptedLimiter(late, on_time)
    slots = SlotQueue(limiter, batch=3, lateness=0.015)

    first = slots.next()  # a fresh reservation's first slot is handed out whatever its instant
    second = slots.next()  # the rest of the late batch is dropped

    assert first == late[0]
    assert second == on_time[0]


def test_a_bad_slot_batch_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="slot batch must"):
        SlotQueue(ScriptedLimiter(), batch=0)


def test_a_request_that_misses_its_slot_goes_out_once_at_a_new_one(campaign, ses, redis_client, db):
    """Signing that takes longer than the slot allows (a loaded machine) costs the send its slot, not its place:
    it takes the next one, and every recipient still gets exactly one message."""
    campaign_id, task = campaign
    calls = []

    def slow_third_signing(**kwargs) -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:  # by then the rate binds: the slot was still ahead when the thread took it
            time.sleep(0.2)  # 50 ms slots at 20/s: ready long after its slot

    ses.meta.events.register("before-sign.sesv2.SendEmail", slow_third_signing)
    report = batch(task, ses, RateLimiter(redis_client, "ses:rate:test:missed", rate=20)).run()

    assert report.counts["slot_missed"] >= 1
    assert report.counts["sent"] == 40
    assert statuses(db, campaign_id) == {"sent": 40}
    assert set(messages_per_recipient().values()) == {1}
