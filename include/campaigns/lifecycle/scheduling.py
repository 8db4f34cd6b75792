"""Scheduled and recurring campaigns: send_at and cron recurrences, the dispatcher's pass, late-run holds.

A campaign with `send_at` is `scheduled` until the `dispatch_scheduled_campaigns` DAG (every minute) finds it due
and triggers `send_campaign` with a run id made from the campaign id and its send_at (`dispatch_run_id`), so two
dispatcher runs can never start the same campaign twice: the second trigger finds the run and is skipped.

A recurring campaign (a *template*) carries a cron `recurrence` with a timezone and stays `scheduled`; its
`send_at` holds its next occurrence. When that comes, the dispatcher creates an *instance*: its own campaign
(key `<template key>:<occurrence, UTC>`, parent_id, occurrence_at) with the template's content, scheduled at the
occurrence, dispatched like any other scheduled campaign; its audience is frozen when its own run snapshots it.

Downtime: a campaign found more than SCHEDULE_HOLD_AFTER_HOURS past its send_at becomes `held` (with the reason
and a campaign_actions row) and waits for a person to release or cancel it. For a template only the LATEST missed
occurrence becomes an instance (held too when it is that late); the earlier ones are skipped and recorded on the
template, so a long outage never sends a burst of stale newsletters.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from croniter import CroniterError, croniter

from campaigns import queries, states
from campaigns.errors import CampaignDefinitionError

log = logging.getLogger(__name__)

ACTOR = "dispatcher"
# At most this many send runs are triggered per dispatcher run: the mapped trigger task must stay under Airflow's
# max_map_length (1024); the rest are due a minute later.
DISPATCH_LIMIT = 500
# Counting skipped occurrences of a very frequent cron after a long outage is bounded; beyond it we say "at least".
MISSED_COUNT_LIMIT = 10_000
_STORED = re.compile(r"^CRON_TZ=(?P<tz>\S+) (?P<cron>.+)$")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_CLOCK = re.compile(r"\d{1,2}:\d{2}(:\d{2})?")


def utc_text(moment: datetime) -> str:
    """An ISO 8601 UTC timestamp for logs, keys and run conf (microseconds only when there are any)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_send_at(raw: Any, *, field: str = "campaign.send_at") -> datetime:
    """An ISO 8601 timestamp WITH a timezone; a naive one is refused (whose 09:00 would it be?)."""
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str) and raw.strip():
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise CampaignDefinitionError(
                f"{field} must be an ISO 8601 timestamp with a timezone, e.g. 2026-12-01T09:00:00+01:00 or "
                f"2026-12-01T08:00:00Z; got {raw!r}") from exc
    else:
        raise CampaignDefinitionError(f"{field} must be an ISO 8601 timestamp string with a timezone, got {raw!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CampaignDefinitionError(
            f"{field} {raw!r} has no timezone: add one, e.g. {moment.isoformat()}+01:00 or {moment.isoformat()}Z")
    return moment.astimezone(UTC)


def zone_named(name: Any, *, field: str) -> ZoneInfo:
    """The IANA time zone called `name`; the error names the field it came from."""
    if not isinstance(name, str) or not name.strip():
        raise CampaignDefinitionError(f"{field} is required: an IANA name such as 'Europe/Vienna' or 'UTC'")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CampaignDefinitionError(
            f"{field} {name!r} is not a known IANA timezone (e.g. 'Europe/Vienna', 'UTC')") from exc


def wall_clock(day: Any, clock: Any, zone: str) -> datetime:
    """`day` (2026-12-05) at `clock` (09:00, 9:00 or 09:00:00) on the clock of `zone`, in UTC: the form's Send on/at.

    A clock time that a DST change skips (02:30 on the spring-forward night) is refused; one it repeats is the
    first of the two (fold 0), as cron does.
    """
    tz = zone_named(zone, field="timezone")
    if not isinstance(day, str) or not _DAY.fullmatch(day.strip()):
        raise CampaignDefinitionError(f"send_date is required: the day to send on, e.g. 2026-12-05; got {day!r}")
    if not isinstance(clock, str) or not _CLOCK.fullmatch(clock.strip()):
        raise CampaignDefinitionError(f"send_time is required: the time of day, e.g. 09:00; got {clock!r}")
    day, clock = day.strip(), clock.strip()
    if clock.index(":") == 1:  # 9:00 -> 09:00
        clock = "0" + clock
    try:
        naive = datetime.fromisoformat(f"{day}T{clock}")
    except ValueError as exc:
        raise CampaignDefinitionError(f"send_date/send_time {day} {clock} is not a date and time: {exc}") from exc
    moment = naive.replace(tzinfo=tz)
    if moment.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != naive:
        raise CampaignDefinitionError(f"send_time {clock} does not exist on {day} in {zone} (the clocks skip it "
                                      "for summer time): pick another time")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Recurrence:
    """A 5-field cron expression evaluated in an IANA timezone (so 09:00 stays 09:00 across DST changes).

    Stored in campaigns.recurrence as `CRON_TZ=<timezone> <cron>`, the prefix cronie and Kubernetes CronJobs use.
    """

    cron: str
    timezone: str

    @classmethod
    def parse(cls, raw: Any, *, field: str = "campaign.recurrence") -> Recurrence:
        """From a definition: {"cron": "0 9 * * MON", "timezone": "Europe/Vienna"}; errors name `field`.cron/.timezone.

        field="" names the parts alone, as the send_campaign form calls its fields `cron` and `timezone`.
        """
        example = '{"cron": "0 9 * * MON", "timezone": "Europe/Vienna"}'
        cron_field, zone_field = (f"{field}.cron", f"{field}.timezone") if field else ("cron", "timezone")
        if not isinstance(raw, dict) or set(raw) != {"cron", "timezone"}:
            raise CampaignDefinitionError(f"{field or 'recurrence'} must be an object like {example}")
        cron, zone = raw["cron"], raw["timezone"]
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise CampaignDefinitionError(
                f"{cron_field} must have 5 fields (minute hour day-of-month month day-of-week), got {cron!r}")
        cron = " ".join(cron.split())
        if not croniter.is_valid(cron):
            raise CampaignDefinitionError(f"{cron_field} {cron!r} is not a valid cron expression")
        zone_named(zone, field=zone_field)
        recurrence = cls(cron=cron, timezone=zone.strip())
        try:
            recurrence.next_after(datetime.now(UTC))
        except CroniterError as exc:  # valid fields that never meet, e.g. 30 February
            raise CampaignDefinitionError(f"{cron_field} {cron!r} never occurs") from exc
        return recurrence

    @classmethod
    def from_stored(cls, text: str) -> Recurrence:
        match = _STORED.match(text or "")
        if match is None:
            raise CampaignDefinitionError(f"stored recurrence {text!r} is not 'CRON_TZ=<timezone> <cron>'")
        return cls.parse({"cron": match["cron"], "timezone": match["tz"]})

    def stored(self) -> str:
        return f"CRON_TZ={self.timezone} {self.cron}"

    def as_dict(self) -> dict[str, str]:
        return {"cron": self.cron, "timezone": self.timezone}

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment`, in UTC."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        return croniter(self.cron, local).get_next(datetime).astimezone(UTC)

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last occurrence at or before `moment`, in UTC (croniter's get_prev alone excludes `moment`)."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        previous = croniter(self.cron, local).get_prev(datetime)
        following = croniter(self.cron, previous).get_next(datetime)
        return (following if following <= local else previous).astimezone(UTC)

    def count_between(self, first: datetime, before: datetime) -> int:
        """Occurrences in [first, before), counted up to MISSED_COUNT_LIMIT."""
        count, moment = 0, first - timedelta(microseconds=1)
        while count < MISSED_COUNT_LIMIT:
            moment = self.next_after(moment)
            if moment >= before:
                break
            count += 1
        return count


def occurrence_key(template_key: str, occurrence_at: datetime) -> str:
    return f"{template_key}:{occurrence_at.astimezone(UTC):%Y%m%dT%H%MZ}"


def dispatch_run_id(campaign_id: int, send_at: datetime) -> str:
    """The send_campaign run id for a campaign at its send_at: the same inputs always give the same id.

    send_at is part of it so that a rescheduled campaign gets a new run even when an earlier one exists.
    """
    stamp = send_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if send_at.microsecond:
        stamp += f".{send_at.microsecond:06d}"
    return f"dispatch__campaign-{campaign_id}__{stamp}Z"


def hold_after_text(hold_after: timedelta) -> str:
    hours = hold_after.total_seconds() / 3600
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def create_due_occurrences(conn: psycopg.Connection, now: datetime, *, run_id: str | None) -> list[dict[str, Any]]:
    """For each template whose next occurrence has come: create the instance for its LATEST due occurrence.

    Earlier occurrences missed while nothing dispatched are skipped and recorded on the template. Call inside a
    transaction (the templates stay locked until it commits).
    """
    created = []
    for template in conn.execute(queries.load("scheduling")["due-recurring"], {"now": now}).fetchall():
        recurrence = Recurrence.from_stored(template["recurrence"])
        expected = template["send_at"]
        latest = recurrence.latest_at_or_before(now)
        if latest < expected:  # the recurrence changed under an old send_at: nothing is due, move on
            latest = None
        if latest is not None:
            row = conn.execute(queries.load("scheduling")["create-occurrence"], {
                "key": occurrence_key(template["key"], latest), "occurrence_at": latest,
                "template_id": template["id"]}).fetchone()
            if row is not None:
                created.append({**row, "template_id": template["id"]})
                log.info("recurring campaign %s (%r): created occurrence %s (%r)", template["id"], template["key"],
                         utc_text(latest), row["key"])
            missed = recurrence.count_between(expected, latest)
            if missed:
                reason = (f"{missed}{'+' if missed >= MISSED_COUNT_LIMIT else ''} occurrence(s) from "
                          f"{utc_text(expected)} on were missed while nothing dispatched; only the latest, "
                          f"{utc_text(latest)}, was created")
                states.record_action(conn, template["id"], action="skip_occurrences", actor=ACTOR, run_id=run_id,
                                     old_status=states.SCHEDULED, new_status=states.SCHEDULED, reason=reason,
                                     detail={"missed": missed, "first_missed": utc_text(expected),
                                             "created": utc_text(latest)})
                log.warning("recurring campaign %s (%r): %s", template["id"], template["key"], reason)
        conn.execute(queries.load("scheduling")["advance-recurring"], {
            "template_id": template["id"], "send_at": expected, "next_at": recurrence.next_after(now)})
    return created


def hold_stale(conn: psycopg.Connection, now: datetime, *, hold_after: timedelta, run_id: str | None,
               campaign_id: int | None = None, found_by: str = "the dispatcher") -> list[dict[str, Any]]:
    """scheduled -> held for campaigns more than `hold_after` past their send_at; one action row each."""
    held = conn.execute(queries.load("scheduling")["hold-stale"], {
        "now": now, "hold_after": hold_after, "hold_after_text": hold_after_text(hold_after),
        "campaign_id": campaign_id, "actor": ACTOR, "run_id": run_id, "found_by": found_by}).fetchall()
    for row in held:
        log.warning("campaign %s held: %s", row["campaign_id"], row["reason"])
    return held


def dispatch_due(conn: psycopg.Connection, now: datetime, *, hold_after: timedelta, run_id: str | None = None,
                 limit: int = DISPATCH_LIMIT) -> list[dict[str, Any]]:
    """One dispatcher pass at `now`: create due occurrences, hold stale campaigns, list the due ones.

    Returns TriggerDagRunOperator kwargs, one per due campaign: the deterministic run id, the conf
    ({"campaign_id", "scheduled_for"}) and run_after = send_at (the run shows when it was scheduled for).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    with conn.transaction():
        create_due_occurrences(conn, now, run_id=run_id)
        hold_stale(conn, now, hold_after=hold_after, run_id=run_id)
        due = conn.execute(queries.load("scheduling")["due-campaigns"], {"now": now, "limit": limit}).fetchall()
    triggers = []
    for row in due:
        triggers.append({
            "trigger_run_id": dispatch_run_id(row["id"], row["send_at"]),
            "conf": {"campaign_id": row["id"], "scheduled_for": utc_text(row["send_at"])},
            "run_after": utc_text(row["send_at"]),
        })
        log.info("due: campaign %s (%r), send_at %s", row["id"], row["key"], utc_text(row["send_at"]))
    return triggers


def skip_reason(conn: psycopg.Connection, campaign: dict[str, Any], *, run_id: str, now: datetime,
                scheduled_for: datetime | None, timed_definition: bool, hold_after: timedelta) -> str | None:
    """Why this send run must not send the campaign now (None: go ahead); takes a due scheduled campaign.

    `scheduled_for`: set on runs the dispatcher started; such a run sends only the campaign still scheduled for
    that time and not taken by another run. `timed_definition`: the run's inline definition carries send_at.
    Errors (a recurring template asked to send by id) raise CampaignDefinitionError.
    """
    status, key = campaign["status"], campaign["key"]
    if campaign["recurrence"] is not None:
        if not timed_definition:
            raise CampaignDefinitionError(
                f"campaign {key!r} is recurring ({campaign['recurrence']}); it is never sent itself: each "
                "occurrence is its own campaign, created and sent by dispatch_scheduled_campaigns")
        return (f"campaign {key!r} recurs ({campaign['recurrence']}); next occurrence "
                f"{utc_text(campaign['send_at'])}, sent by dispatch_scheduled_campaigns")
    if scheduled_for is not None:
        if status == states.RUNNING and campaign["run_id"] == run_id:
            return None  # this run already took it (a cleared, re-run resolve step)
        if status != states.SCHEDULED:
            hint = "; release it to send it" if status == states.HELD else ""
            return f"campaign {key!r} is {status}, no longer scheduled: this scheduled run does nothing{hint}"
        if campaign["send_at"] != scheduled_for:
            return (f"campaign {key!r} was rescheduled to {utc_text(campaign['send_at'])}; this run for "
                    f"{utc_text(scheduled_for)} does nothing")
    if status == states.HELD and (timed_definition or scheduled_for is not None):
        return f"campaign {key!r} is held ({campaign['status_reason']}); release it to send it"
    if status != states.SCHEDULED:
        return None
    if campaign["send_at"] > now:
        return f"campaign {key!r} is scheduled for {utc_text(campaign['send_at'])}; it is not sent now"
    # The dispatcher triggered it in time, but the run itself started too late (e.g. send_campaign was paused).
    late = scheduled_for is not None and now - campaign["send_at"] > hold_after
    if late and hold_stale(conn, now, hold_after=hold_after, run_id=run_id, campaign_id=campaign["id"],
                           found_by=f"send run {run_id}"):
        return f"campaign {key!r} is more than {hold_after_text(hold_after)} late; held for a person to release"
    claimed = conn.execute(queries.load("scheduling")["claim-scheduled"], {
        "campaign_id": campaign["id"], "run_id": run_id, "send_at": campaign["send_at"],
        # A dispatched run never takes a campaign another run has; a person's run (inline or by id) does.
        "exclusive": scheduled_for is not None}).fetchone()
    if claimed is None:
        return f"campaign {key!r} is already being started by run {campaign['run_id']}; this run does nothing"
    return None
