"""A campaign end to end on the real scheduler, driven the way a user drives it.

REST API token -> import a 1,000-contact CSV (import_contacts) -> send_campaign with an inline campaign (batch size
100) through POST /api/v2/dags/send_campaign/dagRuns -> exactly one well-formed message per recipient in the local
SES -> open pixel, click and one-click unsubscribe taken from real messages -> signed SNS hard bounce and complaint
-> a second campaign to the same list skips exactly the suppressed and unsubscribed addresses.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest

from devstack.processes import poll
from tests.e2e.helpers import https, messages_to, post_ses_event, ses_event

CONTACTS = 1000
pytestmark = pytest.mark.timeout(900)


def _write_contacts(path: Path, stamp: str) -> list[str]:
    addresses = [f"e2e-{stamp}-{i}@example.org" for i in range(CONTACTS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "last_name", "country"])
        for i, address in enumerate(addresses):
            writer.writerow([address, f"Reader{i}", f"Last{i}", "DE" if i % 2 else "AT"])
    return addresses


def _campaign(key: str, list_name: str) -> dict:
    return {
        "key": key,
        "name": f"End to end {key}",
        "subject": "Hello {{ first_name }}",
        "from_email": "news@example.com",
        "from_name": "Example News",
        "html": "<html><body><p>Dear {{ first_name }} {{ last_name }} from {{ country }},</p>"
                "<p><a href=\"https://example.com/offer?src=e2e\">See the offer</a></p></body></html>",
        "audience": {"lists": [list_name]},
    }


def test_campaign_end_to_end_through_the_rest_api(stack, api, stack_db, tls):
    stamp = uuid.uuid4().hex[:10]
    list_name = f"e2e-{stamp}"
    addresses = _write_contacts(stack.state_dir / "e2e" / f"contacts-{stamp}.csv", stamp)
    for dag_id in ("import_contacts", "send_campaign"):
        api.wait_for_dag(dag_id)

    imported = api.run("import_contacts", {"path": str(stack.state_dir / "e2e" / f"contacts-{stamp}.csv"),
                                           "list": list_name}, timeout=300)
    assert imported["state"] == "success"

    first = api.run("send_campaign", {"campaign": _campaign(f"e2e-{stamp}-1", list_name), "batch_size": 100},
                    timeout=600)
    assert first["state"] == "success"
    campaign = stack_db.execute("SELECT id, status, summary FROM campaigns WHERE key = %s",
                                [f"e2e-{stamp}-1"]).fetchone()
    assert campaign["status"] == "sent"
    assert campaign["summary"]["sent"] == CONTACTS

    # exactly one well-formed message per recipient
    received = messages_to(stack, set(addresses))
    assert Counter(len(v) for v in received.values()) == {1: CONTACTS}
    for address, (message,) in received.items():
        i = addresses.index(address)
        assert message.get_content_type() == "multipart/alternative"
        assert str(message["Subject"]) == f"Hello Reader{i}"
        assert re.fullmatch(r"<https://[^>]+/u/[^>]+>", str(message["List-Unsubscribe"]))
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        assert f"Dear Reader{i} Last{i} from {'DE' if i % 2 else 'AT'}," in html
        assert f"Reader{i}" in text
        for body in (html, text, str(message["Subject"])):
            assert not re.search(r"{{|{%|%}|}}", body)

    # the open pixel, a click and the unsubscribe URL of real messages
    ledger = {row["email"]: row for row in stack_db.execute(
        "SELECT id, email, ses_message_id FROM campaign_recipients WHERE campaign_id = %s", [campaign["id"]])}
    opener, unsubscriber, bounced, complainer = addresses[0], addresses[1], addresses[2], addresses[3]
    html = received[opener][0].get_body(("html",)).get_content()
    pixel = re.search(r'<img[^>]+src="(https://[^"]+/o/[^"]+\.gif)"', html).group(1)
    click = re.search(r'href="(https://[^"]+/c/[^"]+)"', html).group(1)
    status, headers, body = https(pixel, tls, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox"})
    assert (status, headers["Content-Type"], body[:6]) == (200, "image/gif", b"GIF89a")
    status, headers, _ = https(click, tls, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox"})
    assert (status, headers["Location"]) == (302, "https://example.com/offer?src=e2e")
    unsubscribe = str(received[unsubscriber][0]["List-Unsubscribe"]).strip("<>")
    status, _, _ = https(unsubscribe, tls, method="POST", body=b"List-Unsubscribe=One-Click",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200

    def tracked():
        rows = stack_db.execute(
            # the local SES's own Send and Delivery events for this message are in email_events too
            "SELECT type, count(*) AS n FROM email_events WHERE recipient_id = %s AND subtype IS NULL "
            "AND type IN ('open', 'click') GROUP BY type", [ledger[opener]["id"]]).fetchall()
        return {r["type"]: r["n"] for r in rows} == {"open": 1, "click": 1}

    poll(tracked, what="the open and the click in email_events (drained from the spool)", timeout=60, interval=0.5)
    assert stack_db.execute("SELECT reason FROM suppressions WHERE email = %s",
                            [unsubscriber]).fetchone() == {"reason": "unsubscribe"}

    # signed SNS notifications: a hard bounce and a complaint, for messages the local SES accepted
    bounce = ses_event("Bounce", ledger[bounced], bounce={
        "bounceType": "Permanent", "bounceSubType": "General", "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "bouncedRecipients": [{"emailAddress": bounced, "action": "failed", "status": "5.1.1"}]})
    complaint = ses_event("Complaint", ledger[complainer], complaint={
        "complainedRecipients": [{"emailAddress": complainer}], "complaintFeedbackType": "abuse",
        "timestamp": dt.datetime.now(dt.UTC).isoformat()})
    for event in (bounce, complaint):
        status, body = post_ses_event(event, tls)
        assert status == 200, body
    suppressed = {r["email"]: r["reason"] for r in stack_db.execute(
        "SELECT email, reason FROM suppressions WHERE email = ANY(%s)", [[unsubscriber, bounced, complainer]])}
    assert suppressed == {unsubscriber: "unsubscribe", bounced: "hard_bounce", complainer: "complaint"}

    # a second campaign to the same list skips exactly those three
    second = api.run("send_campaign", {"campaign": _campaign(f"e2e-{stamp}-2", list_name), "batch_size": 100},
                     timeout=600)
    assert second["state"] == "success"
    rows = stack_db.execute(
        """SELECT r.email, r.status, r.skip_reason FROM campaign_recipients r JOIN campaigns c ON c.id = r.campaign_id
            WHERE c.key = %s""", [f"e2e-{stamp}-2"]).fetchall()
    skipped = {r["email"]: r["skip_reason"] for r in rows if r["status"] == "skipped"}
    assert skipped == {unsubscriber: "suppressed:unsubscribe", bounced: "suppressed:hard_bounce",
                       complainer: "suppressed:complaint"}
    assert Counter(r["status"] for r in rows) == {"sent": CONTACTS - 3, "skipped": 3}
    received = messages_to(stack, set(addresses))
    assert sum(len(v) for v in received.values()) == 2 * CONTACTS - 3
    assert all(len(received[a]) == 1 for a in (unsubscriber, bounced, complainer))
