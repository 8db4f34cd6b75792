"""Test sends (the `send_test_email` DAG): a campaign's email to up to 20 addresses, before or while it is sent.

- Merge data: an address that is a contact renders with that contact's data (attributes, email and names, as the
  ledger would freeze them); any other address renders with the request's sample values (plus its own `email`).
- Subject prefixed `[TEST] `. Same composer, same SES transport, same Redis limiter as the real send.
- Recorded in `test_sends` (one row per recipient, sent/failed, SES MessageId). Never touches the ledger, the
  campaign's state or its counters, so it never counts in stats.
- Tracking: a test email has no ledger row, so its links are not rewritten (they point straight at their targets)
  and it carries no open pixel; registering its links would also freeze a draft's link ids before the analyst has
  finished editing. The unsubscribe link and the List-Unsubscribe header are there, so the layout is the real one,
  but they carry recipient id 0 (no ledger row has it): the tracking service answers "not valid" and never
  suppresses the tester. SES events of a test send (tagged `test_send=true`) match no ledger row: a bounce or
  complaint still suppresses the address, as it should, but nothing is counted for the campaign.
- A suppressed address (bounce, complaint, unsubscribe, manual) is refused, with its reason, before anything is
  sent: SES would count a bounce against the account again, and sending to someone who unsubscribed is what
  suppression exists to prevent. Remove the suppression first if the address should receive mail.
- Everything is checked and rendered before the first message leaves; any problem refuses the whole request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from campaigns import queries
from campaigns.config import Settings, get_settings
from campaigns.errors import (
    AccountStopped,
    AddressProblem,
    CampaignNotFound,
    SendError,
    TestSendRefused,
    Throttled,
)
from campaigns.lifecycle import definitions
from campaigns.sending.compose import normalize_address
from campaigns.sending.messages import composer_for

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 20
SUBJECT_PREFIX = "[TEST] "
# Ledger row ids start at 1: tokens for id 0 verify but name no row, so the tracking service records nothing.
TEST_RECIPIENT_ID = 0
MAX_THROTTLE_RETRIES = 5
SENT, FAILED = "sent", "failed"


@dataclass(frozen=True)
class TestSendRequest:
    """A checked request: which campaign, which addresses (normalized, de-duplicated), which sample values."""

    __test__ = False

    campaign_id: int | None
    campaign_key: str | None
    recipients: tuple[str, ...]
    sample_values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, conf: dict[str, Any]) -> TestSendRequest:
        campaign_id, key = conf.get("campaign_id"), conf.get("campaign_key")
        if (campaign_id is None) == (key is None or key == ""):
            raise TestSendRefused("give exactly one of `campaign_id` or `campaign_key`")
        if campaign_id is not None and (isinstance(campaign_id, bool) or not isinstance(campaign_id, int)
                                        or campaign_id < 1):
            raise TestSendRefused(f"campaign_id must be a whole number of at least 1, got {campaign_id!r}")
        if key is not None and not isinstance(key, str):
            raise TestSendRefused(f"campaign_key must be a string, got {key!r}")
        raw = conf.get("recipients")
        if not isinstance(raw, list) or not raw:
            raise TestSendRefused("recipients must be a list of 1 to 20 email addresses")
        if len(raw) > MAX_RECIPIENTS:
            raise TestSendRefused(f"at most {MAX_RECIPIENTS} test recipients per run, got {len(raw)}")
        recipients: list[str] = []
        seen: set[str] = set()
        problems: list[str] = []
        for value in raw:
            try:
                address = normalize_address(value, "test recipient")
            except AddressProblem as exc:
                problems.append(str(exc))
                continue
            if address.lower() not in seen:  # the same person twice gets one test email
                seen.add(address.lower())
                recipients.append(address)
        if problems:
            raise TestSendRefused("invalid test recipients: " + "; ".join(problems))
        sample = conf.get("sample_values") or {}
        if not isinstance(sample, dict) or not all(isinstance(name, str) for name in sample):
            raise TestSendRefused("sample_values must be an object of merge field names to values")
        return cls(campaign_id=campaign_id, campaign_key=key or None, recipients=tuple(recipients),
                   sample_values=dict(sample))


def load_campaign(conn: psycopg.Connection, request: TestSendRequest) -> dict[str, Any]:
    if request.campaign_id is not None:
        return definitions.load_campaign(conn, request.campaign_id)
    campaign = conn.execute(queries.load("testsend")["campaign-by-key"], {"key": request.campaign_key}).fetchone()
    if campaign is None:
        raise CampaignNotFound(f"campaign {request.campaign_key!r} does not exist")
    return campaign


def composer_for_test(campaign: dict[str, Any], settings: Settings):
    """The campaign's composer with the `[TEST] ` subject, links left as written and no open pixel."""
    options = {**(campaign.get("settings") or {}), "track_opens": False, "track_clicks": False}
    return composer_for({**campaign, "subject": SUBJECT_PREFIX + campaign["subject"], "settings": options},
                        settings)


def sample_values(campaign: dict[str, Any], settings: Settings, given: dict[str, str]) -> dict[str, str]:
    """Merge values for rendering without a contact: the non-empty ones given, and a readable stand-in
    (`first_name` -> "First Name") for each field the templates use without a default; a field they guard
    (`| default('there')`) is left out, so its default shows, as it would for a contact without it."""
    return _with_stand_ins(_template_fields(campaign, settings)[1], given)


def sample_form_values(campaign: dict[str, Any], settings: Settings, given: dict[str, str]) -> dict[str, str]:
    """Every merge field the templates use, for a form of sample values: what `sample_values` renders with, ""
    where the template's default applies."""
    fields, required = _template_fields(campaign, settings)  # one Composer for both
    values = _with_stand_ins(required, given)
    return {name: values.get(name, "") for name in sorted(fields | set(values))}


def _with_stand_ins(required: frozenset[str], given: dict[str, str]) -> dict[str, str]:
    values = {name: value for name, value in given.items() if value != ""}
    for name in required - set(values):
        values[name] = name.replace("_", " ").title()
    return dict(sorted(values.items()))


def _template_fields(campaign: dict[str, Any], settings: Settings) -> tuple[frozenset[str], frozenset[str]]:
    """(every merge field the templates use, those used without a default); none when they do not compile (the
    send, or the preview, says why)."""
    try:
        composer = composer_for(campaign, settings)
    except ValueError:
        return frozenset(), frozenset()
    return composer.fields, composer.required_fields


def parse_sample_lines(lines: list[str]) -> dict[str, str]:
    """`name: value` lines (a form's sample values) as a dict; a line with no value is left out (the template's
    default, or a stand-in, applies)."""
    pairs = (line.partition(":") for line in lines)
    return {name.strip(): value.strip() for name, _, value in pairs if name.strip() and value.strip()}


def merge_data(contact: dict[str, Any] | None, address: str, sample: dict[str, Any]) -> dict[str, Any]:
    """A contact's data as the ledger would freeze it, else the sample values; `email` is always the address."""
    if contact is None:
        return {**sample, "email": address}
    fields = dict(contact["attributes"] or {})
    for name in ("first_name", "last_name"):
        if contact[name] is not None:
            fields[name] = contact[name]
    fields["email"] = contact["email"]
    return fields


def send_test(conn: psycopg.Connection, request: TestSendRequest, *, run_id: str | None, transport, limiter,
              settings: Settings | None = None) -> dict[str, Any]:
    """Check, render, then send one test email per recipient; returns what happened to each (also in test_sends).

    TestSendRefused (nothing sent, nothing recorded) for an unknown campaign, a suppressed address or a template
    that does not render for a recipient.
    """
    settings = settings or get_settings()
    campaign = load_campaign(conn, request)
    lowered = [address.lower() for address in request.recipients]
    sql = queries.load("testsend")
    suppressed = conn.execute(sql["suppressed-addresses"], {"emails": lowered}).fetchall()
    if suppressed:
        listed = ", ".join(f"{row['email']} ({row['reason']})" for row in suppressed)
        raise TestSendRefused(f"suppressed addresses are never sent to, not even a test: {listed}; "
                              "remove them from the request (or the suppression, if it is wrong)")
    contacts = {row["email"].lower(): row for row in conn.execute(sql["contacts-by-address"], {"emails": lowered})}
    try:
        builder = composer_for_test(campaign, settings)
    except ValueError as exc:  # TemplateProblem, AddressProblem, a bad tracking base URL
        raise TestSendRefused(f"campaign {campaign['key']!r} cannot be rendered: {exc}") from exc

    messages: list[tuple[str, dict[str, Any] | None, bytes]] = []
    problems: list[str] = []
    for address in request.recipients:
        contact = contacts.get(address.lower())
        try:
            raw = builder.compose(TEST_RECIPIENT_ID, address,
                                  merge_data(contact, address, request.sample_values))
        except ValueError as exc:
            source = "contact data" if contact else "sample values"
            problems.append(f"{address} (rendered with {source}): {exc}")
            continue
        messages.append((address, contact, raw))
    if problems:
        raise TestSendRefused("the test email does not render; nothing was sent:\n  - " + "\n  - ".join(problems))

    results = []
    tags = {**builder.feedback_tags, "campaign": str(campaign["id"]), "test_send": "true"}
    for address, contact, raw in messages:
        message_id, error = _send(transport, limiter, raw=raw, from_email=builder.from_email, to=address, tags=tags)
        row = conn.execute(sql["insert-test-send"], {
            "campaign_id": campaign["id"], "email": address, "contact_id": contact["id"] if contact else None,
            "status": SENT if message_id else FAILED, "ses_message_id": message_id, "error": error,
            "run_id": run_id}).fetchone()
        results.append({"email": address, "status": SENT if message_id else FAILED, "ses_message_id": message_id,
                        "error": error, "rendered_with": "contact" if contact else "sample_values",
                        "test_send_id": row["id"]})
        log.info("test email of campaign %s to %s: %s", campaign["id"], address,
                 f"sent ({message_id})" if message_id else f"failed: {error}")
    return {"campaign_id": campaign["id"], "key": campaign["key"], "results": results,
            "sent": sum(r["status"] == SENT for r in results), "failed": sum(r["status"] == FAILED for r in results)}


def _send(transport, limiter, **message) -> tuple[str | None, str | None]:
    """(MessageId, None) or (None, the error); throttling is retried through the limiter a few times."""
    for retry in range(MAX_THROTTLE_RETRIES + 1):
        limiter.acquire()
        try:
            return transport.send(**message), None
        except Throttled as exc:
            limiter.throttled()
            if retry == MAX_THROTTLE_RETRIES:
                return None, f"still throttled after {retry} retries: {exc}"
            time.sleep(min(2.0, 0.1 * 2 ** retry))  # back off on top of the lowered rate
        except AccountStopped as exc:
            return None, f"SES stopped sending for the account: {exc}"
        except SendError as exc:  # rejected, not sent, or outcome unknown: a test email is not retried
            return None, f"{type(exc).__name__}: {exc}"
    return None, "not sent"  # unreachable: the loop returns on its last retry
