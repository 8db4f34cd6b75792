"""The SES account-level suppression list, synced both ways with the product's suppressions (DAG
`sync_ses_suppressions`).

- import: ListSuppressedDestinations, paged with NextToken, from the last successful run's high-water mark (the
  newest LastUpdateTime it saw) minus OVERLAP. BOUNCE becomes `hard_bounce`, COMPLAINT `complaint`, with source
  `ses-account` and an audit row in `suppression_changes`; an existing suppression is never downgraded. An entry
  that cannot be used (no valid address, an unknown reason) is reported in the result and the log, never dropped
  silently.
- push (SES_SUPPRESSION_PUSH): PutSuppressedDestination for the product's own hard bounces and complaints that SES
  does not have yet (neither imported from it nor pushed before).

Why here, in feedback: the account list is SES's own feedback about addresses, and `suppressions.remove` (same
part) answers whether a removed address is still on it. The code needs nothing but a sesv2 client, which the DAG
passes in (built by the Amazon provider's hook in sending.resources), so feedback still never imports sending.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from botocore.exceptions import ClientError

from campaigns import queries
from campaigns.feedback.suppressions import normalise

log = logging.getLogger(__name__)

SOURCE = "ses-account"
ACTOR = "sync_ses_suppressions"
FROM_SES = {"BOUNCE": "hard_bounce", "COMPLAINT": "complaint"}
TO_SES = {reason: ses_reason for ses_reason, reason in FROM_SES.items()}
PAGE_SIZE = 1000  # SES's maximum: fewest calls against the suppression API's low request rate
# Read again on every run: an entry SES stamps just before a run may become visible only after it (the list is
# eventually consistent), and clocks differ. Re-reading an hour costs a page; importing is idempotent.
OVERLAP = timedelta(hours=1)
# Per-address problems SES answers with (the address is refused, not the call): reported, the rest carries on.
REFUSED = {"BadRequestException", "InvalidParameterValue"}


@dataclass(frozen=True)
class Entry:
    """One usable account-list entry: the normalised address, the product's reason and the audit text."""

    email: str
    reason: str
    updated_at: datetime

    @property
    def detail(self) -> str:
        return f"SES account suppression list: {TO_SES[self.reason]}, last updated {self.updated_at.isoformat()}"


def parse_entry(summary: Mapping[str, Any]) -> Entry | str:
    """The Entry of one SuppressedDestinationSummary, or why it cannot be used."""
    raw, ses_reason, updated = summary.get("EmailAddress"), summary.get("Reason"), summary.get("LastUpdateTime")
    if not isinstance(raw, str) or not raw.strip():
        return "no EmailAddress"
    valid, invalid = normalise([raw])
    if invalid:
        return f"invalid EmailAddress: {invalid[0][1]}"
    if ses_reason not in FROM_SES:
        return f"unknown Reason {ses_reason!r} (expected {' or '.join(FROM_SES)})"
    if not isinstance(updated, datetime):
        return f"no LastUpdateTime (got {updated!r})"
    return Entry(valid[0], FROM_SES[ses_reason], updated.astimezone(UTC))


def list_pages(ses: Any, since: datetime | None, page_size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
    """ListSuppressedDestinations page by page (botocore has no paginator for it), from `since` on."""
    params: dict[str, Any] = {"PageSize": page_size}
    if since is not None:
        params["StartDate"] = since
    while True:
        answer = ses.list_suppressed_destinations(**params)
        yield answer.get("SuppressedDestinationSummaries") or []
        if not answer.get("NextToken"):
            return
        params["NextToken"] = answer["NextToken"]


def import_account_list(conn: psycopg.Connection, ses: Any, *, run_id: str | None, full: bool = False,
                        page_size: int = PAGE_SIZE) -> dict[str, Any]:
    """Import what was added to the SES account list since the last successful run (`full`: the whole list).

    Each page is stored in its own transaction; the high-water mark moves only once every page is in, so a run
    that fails half-way is read again from the old mark by the next one (importing twice changes nothing).
    """
    sql = queries.load("account_suppressions")
    state = conn.execute(sql["high-water"]).fetchone()
    mark = state["high_water"] if state else None
    since = None if full or mark is None else mark - OVERLAP
    result: dict[str, Any] = {"since": since.isoformat() if since else None, "pages": 0, "read": 0, "added": 0,
                              "upgraded": 0, "kept": 0, "problems": []}
    newest = None
    for page in list_pages(ses, since, page_size):
        result["pages"] += 1
        result["read"] += len(page)
        entries = _usable(page, result["problems"])
        if entries:
            newest = max(newest or entries[0].updated_at, *(e.updated_at for e in entries))
            _store(conn, sql, entries, run_id, result)
    saved = conn.execute(sql["save-high-water"], {"high_water": newest, "run_id": run_id}).fetchone()["high_water"]
    result["high_water"] = saved.isoformat() if saved else None
    log.info("SES account list since %s: %d entries in %d page(s); %d added, %d upgraded to the SES reason, %d "
             "already suppressed (kept as they were)", result["since"] or "the beginning", result["read"],
             result["pages"], result["added"], result["upgraded"], result["kept"])
    for problem in result["problems"]:
        log.warning("SES account list entry not imported: %s (%s)", problem["entry"], problem["problem"])
    return result


def _usable(page: list[dict[str, Any]], problems: list[dict[str, Any]]) -> list[Entry]:
    """The page's usable entries, each address once (the last SES listed wins); the rest go to `problems`."""
    entries: dict[str, Entry] = {}
    for summary in page:
        parsed = parse_entry(summary)
        if isinstance(parsed, str):
            problems.append({"entry": {k: str(v) for k, v in summary.items()}, "problem": parsed})
        else:
            entries[parsed.email] = parsed
    return list(entries.values())


def _store(conn: psycopg.Connection, sql: Mapping[str, str], entries: list[Entry], run_id: str | None,
           result: dict[str, Any]) -> None:
    with conn.transaction():
        rows = conn.execute(sql["import"], {
            "emails": [e.email for e in entries], "reasons": [e.reason for e in entries],
            "details": [e.detail for e in entries], "actor": ACTOR, "run_id": run_id}).fetchall()
    for row in rows:
        if not row["changed"]:
            result["kept"] += 1
        elif row["old_reason"] is None:
            result["added"] += 1
        else:
            result["upgraded"] += 1


def push_product_suppressions(conn: psycopg.Connection, ses: Any) -> dict[str, Any]:
    """PutSuppressedDestination for each hard bounce and complaint SES does not have yet; each is marked once SES
    took it. An address SES refuses is reported and tried again next run; any other error stops the run (retried)."""
    sql = queries.load("account_suppressions")
    pushed: list[str] = []
    problems: list[dict[str, str]] = []
    for row in conn.execute(sql["to-push"]).fetchall():
        try:
            ses.put_suppressed_destination(EmailAddress=row["email"], Reason=TO_SES[row["reason"]])
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") not in REFUSED:
                raise
            problems.append({"email": row["email"], "problem": f"{error.get('Code')}: {error.get('Message', '')}"})
            log.warning("SES refused to add %s to the account list: %s", row["email"], problems[-1]["problem"])
            continue
        conn.execute(sql["mark-listed"], {"email": row["email"]})
        pushed.append(row["email"])
    log.info("added %d of the product's hard bounces and complaints to the SES account list; %d refused",
             len(pushed), len(problems))
    return {"pushed": len(pushed), "problems": problems}
