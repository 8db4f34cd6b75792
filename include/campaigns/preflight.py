"""Preflight: everything that can be known before the first email leaves, checked before it does.

Refuses on: template errors (syntax, sandbox violations, per-recipient render failures), missing merge fields
without a default, a missing unsubscribe link when the automatic footer is off, a tracking base URL that is not
https (RFC 8058 needs an https List-Unsubscribe URI), an empty audience, no signing key, or a sending rate above
the account's maximum (from SES, or from SES_LOCAL_MAX_SEND_RATE when the SES endpoint is local).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import psycopg
from email_validator import EmailNotValidError, validate_email

from campaigns import ledger
from campaigns.audience import Audience
from campaigns.config import Settings
from campaigns.errors import PreflightFailed

log = logging.getLogger(__name__)
RENDER_CAP = 20_000  # recipients rendered in full; the snapshot sends to all of them, so this is the sample size
MAX_EXAMPLES = 5


def run(conn: psycopg.Connection, campaign: dict[str, Any], *, composer_factory, settings: Settings,
        account_max_rate: float | None) -> dict[str, Any]:
    """Check the campaign; return the report, or raise PreflightFailed carrying it."""
    problems: list[str] = []
    report: dict[str, Any] = {"campaign_id": campaign["id"], "problems": problems}

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
    rows, sendable = ledger.preview(conn, audience, RENDER_CAP)
    report["audience"] = {"sendable": sendable, "rendered": len(rows)}
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

    report["ok"] = not problems
    if problems:
        raise PreflightFailed("preflight refused the campaign:\n  - " + "\n  - ".join(problems), report)
    return report


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
