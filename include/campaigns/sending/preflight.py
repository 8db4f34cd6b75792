"""Preflight: everything that can be known before the first email leaves, checked before it does.

Refuses on: template errors (syntax, sandbox violations, per-recipient render failures), missing merge fields
without a default, an audience naming a list (in `lists` or `exclude_lists`) that does not exist, a missing
unsubscribe link when the automatic footer is off, a tracking base URL that is not https (RFC 8058 needs an https
List-Unsubscribe URI), an empty audience, no signing key, or a sending rate above the account's maximum (from SES,
or from SES_LOCAL_MAX_SEND_RATE when the SES endpoint is local).

Given the SES client, it also runs the cheap part of ses_doctor (the reads in ses_account.py) and refuses a
campaign SES would not send: sending disabled for the account, more recipients than the 24-hour quota has left, a
sandbox account with recipients that are not verified identities, a sender that is not a verified identity (or
whose custom MAIL FROM makes SES reject every send), a configuration set that does not exist or does not send. An
account that cannot be read (no permission for GetAccount) is reported, not refused: the send path's own error
handling still holds.

It also checks the From domain's authentication (authentication.py: Easy DKIM, MAIL FROM, SPF, DMARC alignment). A
campaign of more than BULK_SENDER_THRESHOLD sendable recipients is refused when DKIM does not sign for the domain or
DMARC is missing or misaligned, since the mailbox providers' bulk-sender rules reject or junk such mail; a smaller
one is warned (logged and in the report's `sender_authentication`). DNS that cannot answer only ever warns.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import psycopg
from email_validator import EmailNotValidError, validate_email

from campaigns.audience.filters import Audience
from campaigns.config import Settings
from campaigns.errors import PreflightFailed
from campaigns.sending import ledger
from campaigns.sending.authentication import PASS, DnsResolver, Finding, Resolver, assess, refusals
from campaigns.states import Row

log = logging.getLogger(__name__)
RENDER_CAP = 20_000  # recipients rendered in full; the snapshot sends to all of them, so this is the sample size
MAX_EXAMPLES = 5


def run(conn: psycopg.Connection, campaign: dict[str, Any], *, composer_factory, settings: Settings,
        account_max_rate: float | None = None, ses_client: Any = None,
        resolver: Resolver | None = None) -> dict[str, Any]:
    """Check the campaign; return the report, or raise PreflightFailed carrying it.

    `ses_client` (a boto3 sesv2 client) turns on the account, sender, sender authentication and configuration set
    checks; `resolver` answers their DNS lookups (default: the system's, with SENDER_DNS_TIMEOUT_SECONDS).
    """
    problems: list[str] = []
    report: dict[str, Any] = {"campaign_id": campaign["id"], "problems": problems}
    account = _read_account(ses_client, settings, report) if ses_client is not None else None
    if account_max_rate is None and account is not None:
        account_max_rate = account.max_send_rate

    if urlsplit(settings.tracking_base_url).scheme != "https":
        problems.append(f"TRACKING_BASE_URL must be https (RFC 8058 one-click unsubscribe needs an https URI), "
                        f"got {settings.tracking_base_url!r}")
    if not settings.tracking_secret_keys:
        problems.append("TRACKING_SECRET_KEYS is empty: tracking and unsubscribe links cannot be signed")
    for field in ("from_email", "reply_to"):
        if campaign.get(field):
            try:
                validate_email(campaign[field], check_deliverability=False)
            except EmailNotValidError as exc:
                problems.append(f"{field} {campaign[field]!r} is not a valid address: {exc}")

    rate = settings.sending_rate
    report["sending_rate"] = rate
    report["account_max_send_rate"] = account_max_rate
    if rate is not None and account_max_rate is not None and account_max_rate > 0 and rate > account_max_rate:
        problems.append(f"SES_SENDING_RATE {rate}/s is above the account's maximum send rate {account_max_rate}/s")

    composer = None
    try:
        composer = composer_factory(campaign)
        report["tracked_links"] = list(getattr(composer, "links", []))
    except (ValueError, TypeError) as exc:
        problems.append(f"template: {exc}")

    audience = Audience.parse(campaign["audience"])
    problems.extend(_list_problems(conn, audience))
    rows, sendable = ledger.preview(conn, audience, RENDER_CAP)
    counts = ledger.audience_counts(conn, audience)
    report["audience"] = {"sendable": sendable, "rendered": len(rows), "recipients": counts["recipients"],
                          "skipped_by_reason": counts["skipped_by_reason"]}
    if sendable == 0:
        problems.append(f"the audience is empty: nobody sendable on lists {', '.join(audience.lists)}"
                        + (" with the given filters" if audience.where else ""))

    if composer is not None and rows:
        missing, failures = _render_all(composer, rows)
        report["missing_fields"] = missing
        report["render_failures"] = failures
        for field, info in missing.items():
            problems.append(f"merge field {field!r} is missing for {info['count']} recipient(s) "
                            f"(e.g. {', '.join(info['examples'])}); add the data or use | default('...')")
        for message, info in failures.items():
            problems.append(f"{info['count']} recipient(s) fail to render: {message}")

    if ses_client is not None:
        resolver = resolver or DnsResolver(settings.sender_dns_timeout_seconds)
        problems.extend(_ses_problems(conn, campaign, settings, ses_client, account, rows, sendable, report,
                                      resolver))

    report["ok"] = not problems
    if problems:
        raise PreflightFailed("preflight refused the campaign:\n  - " + "\n  - ".join(problems), report)
    return report


def _list_problems(conn: psycopg.Connection, audience: Audience) -> list[str]:
    """Each audience field naming a list that does not exist (a typo would otherwise send to fewer people, or
    exclude nobody)."""
    return [f"audience.{field}: no list named {', '.join(repr(name) for name in names)}"
            for field, names in ledger.missing_lists(conn, audience).items()]


def _read_account(ses_client, settings: Settings, report: dict[str, Any]):
    from botocore.exceptions import BotoCoreError, ClientError

    from campaigns.sending.ses_account import read_account

    try:
        account = read_account(ses_client, settings)
    except (BotoCoreError, ClientError, NotImplementedError) as exc:
        # NotImplementedError: moto's in-process mock has no GetAccount. Not refused: the campaign itself may be fine.
        log.warning("could not read the SES account (%s: %s); its limits are not checked", type(exc).__name__, exc)
        report["account"] = {"checked": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
        return None
    report["account"] = {"checked": True, **account.as_dict()}
    return account


def _ses_problems(conn: psycopg.Connection, campaign: dict[str, Any], settings: Settings, ses_client, account,
                  rows: list[dict[str, Any]], sendable: int, report: dict[str, Any],
                  resolver: Resolver) -> list[str]:
    """The cheap part of ses_doctor: what would make SES refuse this campaign's sends."""
    from botocore.exceptions import BotoCoreError, ClientError

    from campaigns.sending import ses_account
    from campaigns.sending.ses import endpoint_is_local

    problems: list[str] = []
    local = endpoint_is_local(ses_client)
    if account is not None:
        if account.sending_enabled is False:
            problems.append("SES sending is disabled for the account in this region "
                            f"(enforcement status {account.enforcement_status}); run ses_doctor for the fix")
        remaining = account.remaining_24h
        to_send = _still_to_send(conn, campaign, sendable)
        report["to_send"] = to_send
        if remaining is not None and to_send > remaining:
            source = "SES_LOCAL_MAX_24H_SEND" if account.local else "SES"
            problems.append(f"{to_send} recipient(s) to send but only {remaining:g} sends left in the 24-hour quota "
                            f"({source}: Max24HourSend {account.max_24h_send:g}, sent in the last 24 h "
                            f"{account.sent_last_24h:g}); ask AWS for a higher quota or split the audience")
        if account.production_access is False:
            problems.extend(_sandbox_problems(ses_client, rows, report))
    try:
        own, domain = ses_account.sender_identities(ses_client, campaign["from_email"])
        sender = ses_account.sender_problem(campaign["from_email"], own, domain)
        if sender is not None:
            problems.append(f"sender: {sender.detail}; fix: {sender.fix}")
        findings = assess(campaign["from_email"], own, domain, resolver, local=local)
        problems.extend(_authentication_problems(findings, sendable, settings, report))
        # A local SES accepts any name. No configuration set only loses events (ses_doctor reports that); a named
        # one that does not exist fails every send. (Its SendingEnabled flag is left to ses_doctor: moto, which the
        # tests run against, always reports it false.)
        name = settings.configuration_set
        if name and not local and ses_account.read_configuration_set(ses_client, name) is None:
            problems.append(f"configuration set {name!r} (SES_CONFIGURATION_SET) does not exist in SES, so every "
                            "send would fail; create it: aws sesv2 create-configuration-set "
                            f"--configuration-set-name {name}")
    except (BotoCoreError, ClientError) as exc:
        log.warning("could not check the sender identity or configuration set (%s); not refused", exc)
        report["identity_not_checked"] = f"{type(exc).__name__}: {exc}"[:300]
    return problems


def _authentication_problems(findings: list[Finding], expected: int, settings: Settings,
                             report: dict[str, Any]) -> list[str]:
    """Refusals for a bulk campaign (its sendable audience above BULK_SENDER_THRESHOLD); every other finding that is
    not a pass is a warning, logged and kept in the report."""
    threshold = settings.bulk_sender_threshold
    refused = refusals(findings, expected, threshold)
    warnings = [f"{f.name}: {f.status}: {f.detail}" + (f" (fix: {f.fix})" if f.fix else "")
                for f in findings if f.status != PASS and f not in refused]
    for warning in warnings:
        log.warning("sender authentication, %s", warning)
    report["sender_authentication"] = {"expected": expected, "threshold": threshold, "warnings": warnings,
                                       "refused": [f.name for f in refused],
                                       "checks": [f.as_dict() for f in findings]}
    return [f"sender authentication ({f.name}): {f.detail}; {expected:,} recipients is above BULK_SENDER_THRESHOLD "
            f"({threshold:,}), where Gmail, Yahoo and Outlook.com require DKIM and an aligned DMARC record; fix: "
            f"{f.fix}" for f in refused]


def _still_to_send(conn: psycopg.Connection, campaign: dict[str, Any], sendable: int) -> int:
    """Recipients this run will send to: the pending ledger rows once there is a snapshot (a resumed campaign),
    otherwise the whole sendable audience."""
    if campaign.get("snapshot") is None:
        return sendable
    return ledger.summarize(ledger.status_counts(conn, campaign["id"]))[Row.PENDING]


def _sandbox_problems(ses_client, rows: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """In the SES sandbox every recipient must be a verified identity (address or domain)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from campaigns.sending.ses_account import SIMULATOR_DOMAIN

    try:
        verified = _verified_identities(ses_client)
    except (BotoCoreError, ClientError) as exc:
        return [f"the SES account is in the sandbox and its verified identities cannot be listed ({exc}); allow "
                "ses:ListEmailIdentities or request production access (docs/aws-setup.md)"]
    unverified = [row["email"] for row in rows
                  if row["email"].lower() not in verified
                  and row["email"].rpartition("@")[2].lower() not in verified | {SIMULATOR_DOMAIN}]
    report["sandbox_unverified"] = len(unverified)
    if not unverified:
        return []
    return [f"the SES account is in the sandbox, which sends only to verified identities, and {len(unverified)} of "
            f"{len(rows)} checked recipient(s) are not verified (e.g. {', '.join(unverified[:MAX_EXAMPLES])}); "
            "request production access (docs/aws-setup.md, 'Leave the sandbox') or verify them: "
            "aws sesv2 create-email-identity --email-identity ADDRESS"]


def _verified_identities(ses_client) -> set[str]:
    names: set[str] = set()
    token = None
    while True:
        page = ses_client.list_email_identities(PageSize=1000, **({"NextToken": token} if token else {}))
        for identity in page.get("EmailIdentities", []):
            if identity.get("VerificationStatus", "SUCCESS" if identity.get("SendingEnabled") else "") == "SUCCESS":
                names.add(identity["IdentityName"].lower())
        token = page.get("NextToken")
        if not token:
            return names


def _render_all(composer, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Render every previewed recipient strictly; group missing fields and failures with counts and examples."""
    missing: Counter[str] = Counter()
    missing_examples: dict[str, list[str]] = {}
    failures: Counter[str] = Counter()
    failure_examples: dict[str, list[str]] = {}
    for row in rows:
        merge_data = ledger.merge_fields(row)
        fields = composer.missing_fields(merge_data)
        for field in sorted(fields):
            missing[field] += 1
            examples = missing_examples.setdefault(field, [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(row["email"])
        if fields:
            continue
        try:
            composer.compose(row["id"], row["email"], merge_data)
        except Exception as exc:  # noqa: BLE001 - every failure kind is reported, grouped by its message
            message = f"{type(exc).__name__}: {exc}"[:300]
            failures[message] += 1
            examples = failure_examples.setdefault(message, [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(row["email"])
    return (
        {f: {"count": n, "examples": missing_examples[f]} for f, n in missing.most_common()},
        {m: {"count": n, "examples": failure_examples[m]} for m, n in failures.most_common()},
    )
