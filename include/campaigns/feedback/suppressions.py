"""Suppressions managed by a person (the `manage_suppressions` DAG): add, remove, export.

- add: each address becomes a `manual` suppression with the given reason as its detail. An address that is already
  suppressed keeps its entry (a hard bounce stays a hard bounce) and is reported as such.
- remove: needs a reason. Each removal is audited with the reason the suppression had; an address that is not
  suppressed is reported. Removing a suppression does not re-subscribe anyone to a list. Each address is then
  looked up on the SES account-level suppression list (GetSuppressedDestination), because SES drops mail to an
  address on it whatever the product says; with `remove_from_ses` it is also removed there
  (DeleteSuppressedDestination). The answer per address is in the log and the result's `ses_account_list`.
- export: a CSV (email, reason, source, detail, created_at) of every suppression into the export folder.

Every add and remove writes a `suppression_changes` row (actor, run id, reason, old reason) in the same statement.
Bad input (an invalid address, a missing reason, emails given to export) fails the request before anything
changes, with a message naming each problem.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from campaigns import queries
from campaigns.audience.addresses import EmailNotValidError, suppression_address
from campaigns.config import Settings
from campaigns.errors import SuppressionRequestError

log = logging.getLogger(__name__)

ADD, REMOVE, EXPORT = "add", "remove", "export"
ACTIONS = (ADD, REMOVE, EXPORT)
SOURCE = "manage_suppressions"
DEFAULT_ADD_REASON = "added manually"
MAX_ADDRESSES = 10_000  # one request, one transaction; a bigger list is an import, not a form
MAX_REASON = 500
EXPORT_COLUMNS = ("email", "reason", "source", "detail", "created_at")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Request:
    """A validated request: the action, normalised unique addresses in the order given, the reason, and whether a
    remove also removes the addresses from the SES account list."""

    action: str
    emails: tuple[str, ...]
    reason: str
    remove_from_ses: bool = False

    @classmethod
    def parse(cls, action: Any, emails: Any, reason: Any, remove_from_ses: Any = False) -> Request:
        """Validate everything up front and name every problem at once."""
        if action not in ACTIONS:
            raise SuppressionRequestError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if not isinstance(remove_from_ses, bool):
            raise SuppressionRequestError(f"remove_from_ses must be true or false, got {remove_from_ses!r}")
        if remove_from_ses and action != REMOVE:
            raise SuppressionRequestError(f"remove_from_ses applies to remove only, not to {action}")
        if emails is None:
            emails = []
        if not isinstance(emails, list | tuple) or not all(isinstance(e, str) for e in emails):
            raise SuppressionRequestError("emails must be a list of addresses")
        reason = reason.strip() if isinstance(reason, str) else ""
        if len(reason) > MAX_REASON:
            raise SuppressionRequestError(f"reason is {len(reason)} characters; at most {MAX_REASON}")
        raw = [e.strip() for e in emails if e.strip()]  # the form's textarea leaves blank lines
        if action == EXPORT:
            if raw:
                raise SuppressionRequestError("export writes every suppression; leave emails empty")
            return cls(EXPORT, (), reason)
        if not raw:
            raise SuppressionRequestError(f"{action} needs at least one address in emails")
        if len(raw) > MAX_ADDRESSES:
            raise SuppressionRequestError(f"{len(raw)} addresses in one request; at most {MAX_ADDRESSES}")
        if action == REMOVE and not reason:
            raise SuppressionRequestError("remove needs a reason (it is kept with the change)")
        valid, invalid = normalise(raw)
        if invalid:
            listed = "; ".join(f"{address!r}: {why}" for address, why in invalid)
            raise SuppressionRequestError(f"{len(invalid)} invalid address(es), nothing changed: {listed}")
        return cls(action, tuple(valid), reason or DEFAULT_ADD_REASON, remove_from_ses)


def normalise(addresses: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(unique normalised lower-case addresses in order, [(address, why it is invalid)]), as contacts are stored."""
    valid: list[str] = []
    invalid: list[tuple[str, str]] = []
    for address in addresses:
        try:
            email = suppression_address(address)
        except EmailNotValidError as exc:
            invalid.append((address[:320], str(exc)))
            continue
        if email not in valid:
            valid.append(email)
    return valid, invalid


def add(conn: psycopg.Connection, request: Request, *, actor: str, run_id: str | None) -> dict[str, Any]:
    """Suppress the addresses (manual); returns what was added and what was already suppressed (and why)."""
    sql = queries.load("suppressions")
    with conn.transaction():
        existing = {row["email"]: row for row in conn.execute(sql["existing"], {"emails": list(request.emails)})}
        added = {row["email"] for row in conn.execute(sql["add"], {
            "emails": list(request.emails), "source": SOURCE, "reason": request.reason, "actor": actor,
            "run_id": run_id})}
    already = [{"email": email, "reason": existing[email]["reason"] if email in existing else "suppressed meanwhile",
                "since": existing[email]["created_at"].isoformat() if email in existing else None}
               for email in request.emails if email not in added]
    result = {"action": ADD, "added": [e for e in request.emails if e in added], "already_suppressed": already}
    log.info("suppressed %d address(es) (%s); %d already suppressed", len(result["added"]), request.reason,
             len(already))
    for entry in already:
        log.info("already suppressed, left as it is: %s (%s)", entry["email"], entry["reason"])
    return result


def remove(conn: psycopg.Connection, request: Request, *, actor: str, run_id: str | None,
           ses: Any) -> dict[str, Any]:
    """Lift the suppressions; returns what was removed (with its old reason), what was not suppressed, and what the
    SES account list says about each address (`ses`: a sesv2 client)."""
    sql = queries.load("suppressions")
    with conn.transaction():
        removed = {row["email"]: row["old_reason"] for row in conn.execute(sql["remove"], {
            "emails": list(request.emails), "reason": request.reason, "actor": actor, "run_id": run_id})}
    result = {"action": REMOVE,
              "removed": [{"email": e, "old_reason": removed[e]} for e in request.emails if e in removed],
              "not_suppressed": [e for e in request.emails if e not in removed]}
    log.info("removed %d suppression(s) (%s); %d address(es) were not suppressed", len(removed), request.reason,
             len(result["not_suppressed"]))
    for entry in result["removed"]:
        if entry["old_reason"] in ("complaint", "unsubscribe"):
            # The person asked not to be mailed; lifting that needs their consent, which the reason should record.
            log.warning("removed a %s suppression for %s: make sure the person asked to be mailed again",
                        entry["old_reason"], entry["email"])
    for email in result["not_suppressed"]:
        log.warning("not suppressed, nothing to remove: %s", email)
    # After the commit: the product's removal stands even when SES cannot be asked, and the answer says so.
    result["ses_account_list"] = [ses_account_status(ses, email, remove=request.remove_from_ses)
                                  for email in request.emails]
    return result


def ses_account_status(ses: Any, email: str, *, remove: bool) -> dict[str, Any]:
    """Whether `email` is on the SES account-level suppression list (and, with `remove`, take it off), logged.

    {"email", "on_list": bool | None (None: SES could not be asked), "reason", "since", "removed", "error"}.
    """
    answer: dict[str, Any] = {"email": email, "on_list": None, "reason": None, "since": None, "removed": False,
                              "error": None}
    try:
        entry = ses.get_suppressed_destination(EmailAddress=email)["SuppressedDestination"]
        answer.update(on_list=True, reason=entry.get("Reason"), since=_iso(entry.get("LastUpdateTime")))
        if remove:
            ses.delete_suppressed_destination(EmailAddress=email)
            answer.update(on_list=False, removed=True)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "NotFoundException":  # SES's answer for "not on the list" (also: gone meanwhile)
            answer["on_list"] = False
        else:
            answer["error"] = f"{error.get('Code')}: {error.get('Message', '')}"
    except BotoCoreError as exc:  # endpoint unreachable, no credentials: say so, the removal above stands
        answer["error"] = str(exc)
    _log_status(answer)
    return answer


def _iso(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def _log_status(answer: dict[str, Any]) -> None:
    email = answer["email"]
    if answer["error"]:
        log.error("could not ask the SES account suppression list about %s: %s", email, answer["error"])
    elif answer["removed"]:
        log.info("removed from the SES account suppression list too: %s (was %s since %s)", email,
                 answer["reason"], answer["since"])
    elif answer["on_list"]:
        log.warning("still on the SES account suppression list (%s since %s): SES drops mail to %s; run remove "
                    "with remove_from_ses to lift it there too", answer["reason"], answer["since"], email)
    else:
        log.info("not on the SES account suppression list: %s", email)


def export_dir(settings: Settings) -> Path:
    """SUPPRESSIONS_EXPORT_DIR, or <AIRFLOW_HOME>/exports (AIRFLOW_HOME defaults to ~/airflow, as in Airflow)."""
    if settings.suppressions_export_dir:
        return Path(settings.suppressions_export_dir)
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "exports"


def export(conn: psycopg.Connection, folder: Path, *, run_id: str | None) -> dict[str, Any]:
    """Write every suppression to a new CSV in `folder`; returns its path and the row count."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"suppressions-{stamp}" + (f"-{_UNSAFE_FILE_CHARS.sub('_', run_id)[:100]}" if run_id else "")
    path = folder / f"{name}.csv"
    partial = folder / f".{name}.csv.partial"
    # Written beside the target and renamed at the end, so a reader never sees a half-written export.
    with partial.open("wb") as out, conn.cursor() as cur:
        with cur.copy(queries.load("suppressions")["export"]) as copy:
            for chunk in copy:
                out.write(chunk)
        count = cur.rowcount
    partial.replace(path)
    log.info("exported %d suppression(s) to %s", count, path)
    return {"action": EXPORT, "path": str(path), "count": count, "columns": list(EXPORT_COLUMNS)}


def manage(conn: psycopg.Connection, request: Request, *, actor: str, run_id: str | None,
           settings: Settings, ses: Any = None) -> dict[str, Any]:
    """Carry out one validated request; `ses` (a sesv2 client) is needed by remove only."""
    if request.action == ADD:
        return add(conn, request, actor=actor, run_id=run_id)
    if request.action == REMOVE:
        return remove(conn, request, actor=actor, run_id=run_id, ses=ses)
    return export(conn, export_dir(settings), run_id=run_id)
