"""The local SES's events: AWS's configuration-set event shapes, by the mailbox simulator's rules."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest

from devstack.local_ses.events import EICAR, EventBuilder, EventRules, new_message_id, simulator_mailbox
from devstack.local_ses.message import AcceptedMessage

RECEIVED = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def accepted(to: str = "ann@example.com", *, raw: bytes | None = None, configuration_set: str | None = "events",
             tags: dict[str, str] | None = None, **headers: str) -> AcceptedMessage:
    """A message as the local SES accepts it from the send path (raw MIME, one recipient, EmailTags)."""
    if raw is None:
        mime = EmailMessage()
        mime["From"] = "Example News <news@example.com>"
        mime["To"] = to
        mime["Subject"] = "Hallo Jürgen"
        for name, value in headers.items():
            mime[name.replace("_", "-")] = value
        mime.set_content("Hello")
        mime.add_alternative("<p>Hello</p>", subtype="html")
        raw = mime.as_bytes()
    return AcceptedMessage(message_id=new_message_id(RECEIVED), received_at=RECEIVED,
                           source="Example News <news@example.com>", destinations=(to,), raw=raw,
                           tags={"campaign": "7", "recipient": "42"} if tags is None else tags,
                           configuration_set=configuration_set)


def events(message: AcceptedMessage, **rules) -> list:
    return EventBuilder(EventRules(**rules)).events_for(message)


def types(message: AcceptedMessage, **rules) -> list[str]:
    return [event.event_type for event in events(message, **rules)]


@pytest.mark.parametrize(("address", "expected"), [
    ("success@simulator.amazonses.com", ["Send", "Delivery"]),
    ("bounce@simulator.amazonses.com", ["Send", "Bounce"]),
    ("ooto@simulator.amazonses.com", ["Send", "Delivery", "Bounce"]),
    ("complaint@simulator.amazonses.com", ["Send", "Delivery", "Complaint"]),
    ("suppressionlist@simulator.amazonses.com", ["Send", "Bounce"]),
    ("bounce+list-7@simulator.amazonses.com", ["Send", "Bounce"]),
    ("Complaint+x@Simulator.AmazonSES.com", ["Send", "Delivery", "Complaint"]),
    ("ann@example.com", ["Send", "Delivery"]),
    ("nobody@simulator.amazonses.com", ["Send", "Delivery"]),
])
def test_each_simulator_address_gets_the_events_aws_documents_in_time_order(address, expected):
    found = events(accepted(address))
    assert [e.event_type for e in found] == expected
    assert [e.at for e in found] == sorted(e.at for e in found)
    assert found[0].at == RECEIVED  # Send at receive time, the rest later or at the same instant


def test_the_plus_label_forms_are_the_same_mailboxes():
    assert simulator_mailbox("ooto+newsletter-2026@simulator.amazonses.com") == "ooto"
    assert simulator_mailbox("ooto@example.com") is None


def detail(message: AcceptedMessage, event_type: str, **rules) -> dict:
    [event] = [e for e in events(message, **rules) if e.event_type == event_type]
    return event.body


def test_bounce_is_a_permanent_general_bounce_with_an_smtp_diagnostic():
    bounce = detail(accepted("bounce+a@simulator.amazonses.com"), "Bounce")["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "General")
    assert bounce["bouncedRecipients"] == [{"emailAddress": "bounce+a@simulator.amazonses.com", "action": "failed",
                                            "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]
    assert bounce["reportingMTA"].startswith("dsn; ")
    assert bounce["feedbackId"].endswith("-000000")


def test_ooto_is_delivered_then_bounces_transient_like_an_auto_reply():
    message = accepted("ooto@simulator.amazonses.com")
    bounce = detail(message, "Bounce")["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Transient", "General")
    assert bounce["bouncedRecipients"] == [{"emailAddress": "ooto@simulator.amazonses.com"}]
    delivery = detail(message, "Delivery")["delivery"]
    assert delivery["timestamp"] < bounce["timestamp"]


def test_complaint_is_delivered_then_an_abuse_complaint_from_the_simulator():
    complaint = detail(accepted("complaint@simulator.amazonses.com"), "Complaint")["complaint"]
    assert complaint["complaintFeedbackType"] == "abuse"
    assert complaint["complainedRecipients"] == [{"emailAddress": "complaint@simulator.amazonses.com"}]
    assert complaint["userAgent"] == "Amazon SES Mailbox Simulator"
    assert {"timestamp", "feedbackId", "arrivalDate"} <= complaint.keys()


def test_suppressionlist_bounces_on_the_account_suppression_list_from_ses_itself():
    bounce = detail(accepted("suppressionlist@simulator.amazonses.com"), "Bounce")["bounce"]
    assert (bounce["bounceType"], bounce["bounceSubType"]) == ("Permanent", "OnAccountSuppressionList")
    [recipient] = bounce["bouncedRecipients"]
    assert (recipient["action"], recipient["status"]) == ("failed", "5.1.1")
    assert "suppression list for your account" in recipient["diagnosticCode"]
    assert bounce["reportingMTA"] == "dns; amazonses.com"


def test_delivery_names_the_recipient_and_comes_after_the_configured_delay():
    message = accepted()
    [send, delivery] = events(message, delivery_after=timedelta(seconds=2))
    assert send.body["send"] == {}
    assert delivery.at == RECEIVED + timedelta(seconds=2)
    assert delivery.body["delivery"]["recipients"] == ["ann@example.com"]
    assert delivery.body["delivery"]["processingTimeMillis"] == 2000
    assert delivery.body["delivery"]["timestamp"] == "2026-03-04T05:06:09.890Z"


def test_mail_carries_the_senders_email_tags_and_ses_own_tags():
    mail = detail(accepted(tags={"campaign": "7", "recipient": "42"}), "Send", caller_identity="sender-role")["mail"]
    assert mail["tags"] == {
        "campaign": ["7"], "recipient": ["42"], "ses:configuration-set": ["events"], "ses:source-ip": ["127.0.0.1"],
        "ses:from-domain": ["example.com"], "ses:caller-identity": ["sender-role"]}
    assert mail["timestamp"] == "2026-03-04T05:06:07.890Z"
    assert mail["sendingAccountId"] == "123456789012"
    assert mail["sourceArn"] == "arn:aws:ses:us-east-1:123456789012:identity/example.com"
    assert mail["destination"] == ["ann@example.com"]
    assert mail["headersTruncated"] is False


def test_common_headers_come_from_the_raw_mime_with_ses_message_id():
    message = accepted(Reply_To="Desk <desk@example.com>")
    mail = detail(message, "Send")["mail"]
    assert mail["commonHeaders"]["from"] == ["Example News <news@example.com>"]
    assert mail["commonHeaders"]["replyTo"] == ["Desk <desk@example.com>"]
    assert mail["commonHeaders"]["to"] == ["ann@example.com"]
    assert mail["commonHeaders"]["subject"] == "Hallo Jürgen"  # RFC 2047 decoded
    assert mail["commonHeaders"]["messageId"] == message.message_id
    assert mail["commonHeaders"]["date"] == "Wed, 04 Mar 2026 05:06:07 +0000"  # SES dates a message without one
    names = [h["name"] for h in mail["headers"]]
    assert names[:3] == ["From", "To", "Subject"]
    assert names[-2:] == ["Date", "Message-ID"]  # added by SES, as the send path writes neither
    assert {"name": "Message-ID", "value": f"<{message.message_id}@email.amazonses.com>"} in mail["headers"]
    subject = next(h["value"] for h in mail["headers"] if h["name"] == "Subject")
    assert "=?utf-8?" in subject  # the header list shows the raw text


def test_a_date_the_sender_wrote_is_kept():
    mail = detail(accepted(Date="Tue, 03 Mar 2026 10:00:00 +0100"), "Send")["mail"]
    assert mail["commonHeaders"]["date"] == "Tue, 03 Mar 2026 10:00:00 +0100"
    assert [h["name"] for h in mail["headers"]].count("Date") == 1


def test_no_configuration_set_means_no_events_unless_a_default_applies():
    assert types(accepted(configuration_set=None)) == []
    found = events(accepted(configuration_set=None), default_configuration_set="fallback")
    assert [e.event_type for e in found] == ["Send", "Delivery"]
    assert found[0].body["mail"]["tags"]["ses:configuration-set"] == ["fallback"]


def test_a_message_with_a_virus_is_rejected_and_not_sent():
    [reject] = events(accepted(raw=b"From: news@example.com\r\nTo: ann@example.com\r\n\r\n" + EICAR + b"\r\n"))
    assert reject.event_type == "Reject"
    assert reject.body["reject"] == {"reason": "Bad content"}


def test_the_rendering_failure_event_has_awss_shape():
    event = EventBuilder().rendering_failure(accepted(), "MyTemplate", "Attribute 'x' is not present")
    assert event.body["eventType"] == "Rendering Failure"
    assert event.body["failure"] == {"errorMessage": "Attribute 'x' is not present", "templateName": "MyTemplate"}


def test_realism_is_off_by_default_so_every_other_address_is_delivered():
    builder = EventBuilder()
    outcomes = {e.event_type for i in range(100) for e in builder.events_for(accepted(f"r{i}@example.com"))}
    assert outcomes == {"Send", "Delivery"}


def test_soft_bounce_share_gives_transient_bounces_and_delay_share_delays_before_delivery():
    soft = detail(accepted(), "Bounce", soft_bounce_share=1.0)["bounce"]
    assert (soft["bounceType"], soft["bounceSubType"]) == ("Transient", "General")
    assert soft["bouncedRecipients"][0]["status"].startswith("4.")
    assert types(accepted(), delivery_delay_share=1.0) == ["Send", "DeliveryDelay", "Delivery"]
    delay = detail(accepted(), "DeliveryDelay", delivery_delay_share=1.0)["deliveryDelay"]
    assert delay["delayType"] == "TransientCommunicationFailure"
    assert delay["delayedRecipients"][0]["emailAddress"] == "ann@example.com"
    # the simulator's own addresses keep their documented answers whatever the shares
    assert types(accepted("success@simulator.amazonses.com"), soft_bounce_share=1.0) == ["Send", "Delivery"]


def test_the_realism_choices_are_seeded_so_a_run_repeats():
    rules = EventRules(soft_bounce_share=0.3, delivery_delay_share=0.3, seed=11)

    def run(rules: EventRules) -> list[list[str]]:
        builder = EventBuilder(rules)
        return [[e.event_type for e in builder.events_for(accepted(f"r{i}@example.com"))] for i in range(60)]

    first = run(rules)
    assert first == run(rules)
    assert first != run(replace(rules, seed=12))
    assert {tuple(kinds) for kinds in first} == {("Send", "Delivery"), ("Send", "Bounce"),
                                                 ("Send", "DeliveryDelay", "Delivery")}


def test_the_sns_message_is_the_event_json_with_a_trailing_newline():
    event = events(accepted())[0]
    text = event.message()
    assert text.endswith("}\n")
    assert json.loads(text) == event.body
    assert "Jürgen" in text  # UTF-8 as is, not \\u escapes
