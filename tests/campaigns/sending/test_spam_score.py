"""What SpamAssassin says about the messages a campaign sends: every one scores below 1.0.

Debian's `spamassassin` scores with the rules its package ships and no network tests (`-L`). The message is
scored as it leaves SES: sent through the real send path (snapshot -> SendBatch -> SesTransport) to the local SES,
taken as SES delivers it (its Feedback-ID, Date and Message-ID: AcceptedMessage.delivered) and given a
DKIM-Signature shaped like SES's. Left out, by name, are only the rules that judge Received headers (SES adds
those on the way out) and DKIM validity (the key lives in DNS): EXCLUDED_RULES. The test installs SpamAssassin
where it can (devstack.services.ensure_spamassassin) and fails, never skips, when it cannot score.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass

import boto3
import pytest

from campaigns import db as campaign_db
from campaigns.config import get_settings
from campaigns.lifecycle import pipeline
from campaigns.sending.ledger import Attempt
from campaigns.sending.messages import composer_for
from campaigns.sending.plan import SendTask
from campaigns.sending.ratelimit import RateLimiter
from campaigns.sending.sender import SendBatch
from campaigns.sending.ses import SesTransport
from devstack.demo import DEMO_CAMPAIGN
from devstack.local_ses.server import create_app, serving
from devstack.services import ensure_spamassassin
from devstack.settings import SETTINGS
from tests.helpers import add_contacts

MAX_SCORE = 1.0
# Rules about what SES adds on the way out and only the network can judge: no other rule is left out.
EXCLUDED_RULES = (
    "NO_RECEIVED",  # Received headers: SES's MTAs add them
    "NO_RELAYS",  # ... and the relays they describe
    "DKIM_SIGNED",  # DKIM validity: the public key is a DNS record, and -L makes no DNS queries
    "DKIM_INVALID",
    "DKIM_VALID",
    "DKIM_VALID_AU",
    "DKIM_VALID_EF",
)
_RULE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")
_SCORE = re.compile(rb"^X-Spam-Status: \w+, score=(-?\d+(?:\.\d+)?)", re.M)


@dataclass(frozen=True)
class Verdict:
    score: float
    rules: list[tuple[float, str, str]]  # (points, rule, description) of every rule that hit

    def __str__(self) -> str:
        return f"score {self.score}: " + (", ".join(f"{name} {points}" for points, name, _ in self.rules) or "no rule")


def score(message: bytes, home) -> Verdict:
    """SpamAssassin's verdict on `message`, offline, with EXCLUDED_RULES switched off by name."""
    executable = ensure_spamassassin()
    argv = [executable, "-L", "-t", *(f"--cf=score {rule} 0" for rule in EXCLUDED_RULES)]
    result = subprocess.run(argv, input=message, capture_output=True, env={**os.environ, "HOME": str(home)},
                            timeout=300, check=False)
    found = _SCORE.search(result.stdout)
    assert result.returncode == 0, f"spamassassin failed: {result.stderr.decode()[-2000:]}"
    assert found, f"spamassassin gave no score: {result.stderr.decode()[-2000:]}"
    report = result.stdout.decode("utf-8", "replace").split("Content analysis details:", 1)[-1]
    rules = [(float(m[1]), m[2], m[3].strip()) for line in report.splitlines() if (m := _RULE_LINE.match(line))]
    return Verdict(float(found[1]), rules)


def dkim_signed(message: bytes, domain: str) -> bytes:
    """`message` with a DKIM-Signature as SES adds one: a real body hash, a signature of the right size.

    The signature cannot be checked offline (the key would be a DNS record), so it is random bytes; the header is
    otherwise what a verifier parses: version, algorithm, canonicalization, selector, signed headers, bh and b.
    """
    head, _, body = message.partition(b"\r\n\r\n")
    body_hash = base64.b64encode(hashlib.sha256(body.rstrip(b"\r\n") + b"\r\n").digest()).decode()  # c=.../simple
    names = [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n") if line and line[:1] not in b" \t"]
    signature = base64.b64encode(os.urandom(256)).decode()  # an RSA-2048 signature's size
    tags = [f"v=1; a=rsa-sha256; q=dns/txt; c=relaxed/simple; s=224i4yxa5dv7c2xz3womw6peuasteono; d={domain};",
            f"t={int(time.time())};", f"h={':'.join(names)};", f"bh={body_hash};",
            "b=" + "\r\n\t".join(signature[i:i + 72] for i in range(0, len(signature), 72))]
    return b"DKIM-Signature: " + "\r\n\t".join(tags).encode("ascii") + b"\r\n" + message


@pytest.fixture(scope="module")
def local_ses():
    """The local SES served in this process: (its message store, a sesv2 client with example.com verified)."""
    app, store = create_app()
    with serving(app) as url:
        # moto's backends live as long as the process: start from none, as `python -m devstack.local_ses` does
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()
        client = boto3.client("sesv2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        client.create_email_identity(EmailIdentity="example.com")
        client.create_configuration_set(ConfigurationSetName="campaign-events")
        yield store, client


def send_as_ses_delivers(definition: dict, contact: dict, *, db, local_ses, redis_client) -> bytes:
    """Send `definition` to one real contact through the real send path; the message as SES delivers it."""
    store, client = local_ses
    store.clear()  # campaign ids start again in every test's database
    list_name = definition["audience"]["lists"][0]
    [contact_id] = add_contacts(db, [contact["email"]], list_name, attributes=contact.get("attributes"))
    db.execute("UPDATE contacts SET first_name = %s, last_name = %s WHERE id = %s",
               [contact.get("first_name"), contact.get("last_name"), contact_id])
    campaign_id = pipeline.resolve_campaign({"campaign": definition}, "spam-run")
    pipeline.snapshot_recipients(campaign_id, {})
    [task] = pipeline.plan_batches(campaign_id, {}, "spam-run", rate=100)
    dsn = SETTINGS.pg_dsn(SETTINGS.test_campaign_db)
    campaign = db.execute("SELECT * FROM campaigns WHERE id = %s", [campaign_id]).fetchone()
    report = SendBatch(SendTask.from_dict(task), attempt=Attempt("spam-run", 0, 1),
                       from_email=campaign["from_email"], builder=composer_for(campaign, get_settings()),
                       transport=SesTransport(client, configuration_set="campaign-events"),
                       limiter=RateLimiter(redis_client, "ses:rate:test:us-east-1", rate=100, burst=5),
                       connect=lambda: campaign_db.connect(dsn, autocommit=True), threads=1).run()
    assert dict(report.counts) == {"sent": 1}, report.as_dict()
    [message] = store.all()
    return dkim_signed(message.delivered(), campaign["from_email"].rpartition("@")[2])


NEWSLETTER_ARTICLES = [
    ("Spring collection: linen, light and made to last",
     "Our designers spent the winter in Porto with the weavers who make our linen. The result is twelve pieces cut "
     "for warm days and cool evenings, in colours taken from the coast: sand, slate and a soft sea green.",
     "https://shop.example.com/collections/spring", "https://cdn.example.com/news/2026-03/spring.jpg"),
    ("How we repair instead of replace",
     "Every jacket we sell can come back to us for a free repair in its first two years. Last month our workshop "
     "mended 1,240 pieces; here is what they fixed most often, and how you can care for yours at home.",
     "https://blog.example.com/repairs-2026", "https://cdn.example.com/news/2026-03/workshop.jpg"),
    ("Members' evening in Vienna on 14 March",
     "Join us at the Neubau store for an evening with the team behind the collection: a short talk, drinks and a "
     "first look at the summer samples. Places are limited; reply from your account page to save one.",
     "https://shop.example.com/events/vienna-members-evening", "https://cdn.example.com/news/2026-03/vienna.jpg"),
    ("From our readers",
     "Thank you for the photos of your favourite pieces in the wild. This month's picks come from Lisbon, Graz and "
     "a very windy beach in Denmark. Send yours and we may feature it in a coming issue.",
     "https://blog.example.com/readers-march", "https://cdn.example.com/news/2026-03/readers.jpg"),
]
_ARTICLE = """
  <tr><td style="padding:0 32px 28px">
    <img src="{image}" width="536" height="300" alt="{title}" style="display:block;width:100%;height:auto;border:0;
         border-radius:6px">
    <h2 style="margin:18px 0 8px;font:bold 20px/26px Georgia,serif;color:#1f2937">{title}</h2>
    <p style="margin:0 0 14px;font:16px/24px Helvetica,Arial,sans-serif;color:#374151">{body}</p>
    <a href="{link}" style="font:bold 15px/20px Helvetica,Arial,sans-serif;color:#1d4ed8">Read more</a>
  </td></tr>"""
NEWSLETTER_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Example Outfitters: the March letter</title>
</head>
<body style="margin:0;padding:0;background:#f3f4f6">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="background:#f3f4f6">
<tr><td align="center" style="padding:24px 12px">
<table role="presentation" width="600" cellpadding="0" cellspacing="0" style="background:#ffffff;border-radius:8px">
  <tr><td style="padding:28px 32px 12px">
    <img src="https://cdn.example.com/brand/logo-2x.png" width="160" height="40" alt="Example Outfitters"
         style="display:block;border:0">
  </td></tr>
  <tr><td style="padding:8px 32px 24px;font:16px/24px Helvetica,Arial,sans-serif;color:#374151">
    <p style="margin:0 0 12px">Hello {{ first_name | default('there') }},</p>
    <p style="margin:0">spring is arriving in {{ city | default('your city') }}, and so is our new collection. Here
    is what happened in the workshop this month, and what is coming next.</p>
  </td></tr>""" + "".join(_ARTICLE.format(title=t, body=b, link=link, image=image)
                          for t, b, link, image in NEWSLETTER_ARTICLES) + """
  <tr><td style="padding:8px 32px 32px;font:13px/20px Helvetica,Arial,sans-serif;color:#6b7280;
                 border-top:1px solid #e5e7eb">
    <p style="margin:16px 0 8px">You receive the Example Outfitters letter because you subscribed at
    example.com with {{ email }}. We write once a month.</p>
    <p style="margin:0 0 8px">Example Outfitters GmbH, Neubaugasse 12, 1070 Vienna, Austria.
    <a href="https://www.example.com/privacy" style="color:#6b7280">Privacy policy</a> &middot;
    <a href="https://www.example.com/contact" style="color:#6b7280">Contact us</a></p>
    <p style="margin:0"><a href="{{ unsubscribe_url }}" style="color:#6b7280">Unsubscribe</a> at any time, in one
    click.</p>
  </td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""
NEWSLETTER_TEXT = """Hello {{ first_name | default('there') }},

spring is arriving in {{ city | default('your city') }}, and so is our new collection. Here is what happened in
the workshop this month, and what is coming next.

""" + "".join(f"{title}\n{body}\nRead more: {link}\n\n" for title, body, link, _ in NEWSLETTER_ARTICLES) + """--
You receive the Example Outfitters letter because you subscribed at example.com with {{ email }}. We write once a
month.
Example Outfitters GmbH, Neubaugasse 12, 1070 Vienna, Austria.
Privacy policy: https://www.example.com/privacy
Unsubscribe at any time, in one click: {{ unsubscribe_url }}
"""
NEWSLETTER = {
    "key": "march-letter-2026",
    "name": "The March letter",
    "subject": "{{ first_name | default('Hello') }}, the March letter: spring linen and a members' evening",
    "preheader": "Twelve new pieces, free repairs, and an evening in Vienna.",
    "from_email": "letter@example.com",
    "from_name": "Example Outfitters",
    "reply_to": "hello@example.com",
    "html": NEWSLETTER_HTML,
    "text": NEWSLETTER_TEXT,
    "audience": {"lists": ["Monthly letter"]},
    "settings": {"track_opens": True, "track_clicks": True},
}
READER = {"email": "maria.huber@example.org", "first_name": "Maria", "last_name": "Huber",
          "attributes": {"city": "Graz", "country": "AT"}}


def test_a_newsletter_sized_html_campaign_scores_below_one(db, redis_client, local_ses, tmp_path, settings):
    message = send_as_ses_delivers(NEWSLETTER, READER, db=db, local_ses=local_ses, redis_client=redis_client)
    assert len(message) > 9_000  # newsletter-sized: four articles with images, a text part, tracked links
    assert b"\r\nList-Id: The March letter <monthly-letter.example.com>\r\n" not in message  # the list names it
    assert b"\r\nList-Id: Monthly letter <monthly-letter.example.com>\r\n" in message
    assert message.startswith(b"DKIM-Signature: ")
    assert b"\r\nFeedback-ID: march-letter-2026:monthly-letter:1.us-east-1." in message

    verdict = score(message, tmp_path)
    print(f"newsletter: {verdict}")
    for points, rule, description in verdict.rules:
        print(f"  {points:5.1f} {rule:24} {description}")
    assert verdict.score < MAX_SCORE, str(verdict)


def test_the_demo_campaign_scores_below_one(db, redis_client, local_ses, tmp_path, settings):
    reader = {"email": "reader7@example.org", "first_name": "Greta", "attributes": {"country": "AT", "plan": "pro"}}
    message = send_as_ses_delivers({**DEMO_CAMPAIGN, "key": "demo-welcome-spam-check"}, reader, db=db,
                                   local_ses=local_ses, redis_client=redis_client)

    verdict = score(message, tmp_path)
    print(f"demo: {verdict}")
    for points, rule, description in verdict.rules:
        print(f"  {points:5.1f} {rule:24} {description}")
    assert verdict.score < MAX_SCORE, str(verdict)
