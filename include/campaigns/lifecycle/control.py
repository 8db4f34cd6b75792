"""Pause, resume, cancel, release, start and release_unknown (the `campaign_control` DAG and the Campaigns view):
one guarded move, one audit row; and the view's other two acts, duplicating a campaign and recording a test send.

| action          | allowed from                            | to        | what else happens                           |
|-----------------|-----------------------------------------|-----------|---------------------------------------------|
| cancel          | draft, scheduled, held, running, paused | cancelled | pending rows -> cancelled, same transaction |
| pause           | running                                 | paused    | pending rows stay pending                   |
| resume          | paused                                  | running   | names a new send_campaign run               |
| release         | held                                    | running   | the same                                    |
| start           | draft, scheduled (not recurring)        | (running) | the same; the send run moves it to running  |
| release_unknown | sent                                    | running   | old unknown rows -> pending; names a run    |

Start leaves the state to the send run it names (its plan step moves the campaign to running, as for any run by
id), so a preflight that refuses the campaign leaves a draft a draft. A scheduled campaign's send_at becomes the
request time, and the campaign's run_id names the new run, which keeps the dispatcher's own run from taking it.

How sending stops: every send task re-reads the campaign's status at most every 0.5 s (sender.CampaignWatch) and
stops taking rows once it is not `running`; a send already past that check finishes (at most one limiter slot
later). A cancel also turns the pending rows into `cancelled` at once, so no send task can claim another one.
The run that was sending ends cleanly: its finalize sees `paused` or `cancelled` and leaves it so.

Resume and release move the campaign to `running` here, inside the same locked transaction that writes the
action row, and set `campaigns.run_id` to the send run they are about to start. That makes them exclusive: a
second resume finds the campaign running and is refused, and send_campaign's resolve step accepts the campaign
only for that run. The run id is derived from the action row, so a retried control run cannot start two sends.

Release_unknown is the analyst's explicit choice of at-least-once for the rows whose SES call may or may not have
happened (reconcile.py): only rows still `unknown`, older than UNKNOWN_SENDS_WINDOW_HOURS and without any SES event
go back to `pending`, in one guarded statement under the row lock, and the count is recorded in the action's detail.
With no such row left (all settled meanwhile, or released already) it is refused and changes nothing. The send run
it starts snapshots nothing again (the campaign's snapshot is taken) and plans only pages with pending rows, so it
sends exactly the released rows.

Every action writes one campaign_actions row (actor, run_id, old/new status, requested_at = the start of the
transaction, the clock the "within 5 seconds" promises are measured from). A refused action writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from campaigns import queries, states
from campaigns.config import get_settings
from campaigns.errors import CampaignDefinitionError, CampaignNotFound, IllegalTransition
from campaigns.lifecycle import reconcile
from campaigns.sending import ledger

log = logging.getLogger(__name__)

ACTOR = "campaign_control"
SEND_DAG_ID = "send_campaign"
CANCEL, PAUSE, RESUME, RELEASE, START = "cancel", "pause", "resume", "release", "start"
RELEASE_UNKNOWN = "release_unknown"
DUPLICATE, TEST_SEND = "duplicate", "test_send"
COPY_SUFFIX = "-copy"
MAX_KEY_LENGTH = 128


@dataclass(frozen=True)
class Action:
    """One control action: the states it may start from, the state it moves to, whether it starts a send run."""

    name: str
    allowed_from: frozenset[str]
    to: str  # where the campaign ends up: moved here at once, or by the send run (moves_now=False)
    starts_send_run: bool
    done: str  # past tense, for status_reason: "paused by campaign_control (run ...)"
    hint: str  # appended to the refusal: what the person probably wanted instead
    moves_now: bool = True
    # refusal tail while the campaign's last send run is still queued or running (None: not checked)
    waits_for_run: str | None = None


ACTIONS: dict[str, Action] = {
    CANCEL: Action(CANCEL, frozenset({states.DRAFT, states.SCHEDULED, states.HELD, states.RUNNING, states.PAUSED}),
                   states.CANCELLED, False, "cancelled", "a sent, failed or cancelled campaign is finished"),
    PAUSE: Action(PAUSE, frozenset({states.RUNNING}), states.PAUSED, False, "paused",
                  "only a running campaign can be paused (cancel a scheduled or held one instead)"),
    RESUME: Action(RESUME, frozenset({states.PAUSED}), states.RUNNING, True, "resumed",
                   "only a paused campaign can be resumed (a held one is released)",
                   waits_for_run="is still finishing (its send tasks stop within seconds of a pause); try again "
                                 "once that run has ended"),
    RELEASE: Action(RELEASE, frozenset({states.HELD}), states.RUNNING, True, "released",
                    "only a held campaign can be released (a paused one is resumed)"),
    START: Action(START, frozenset({states.DRAFT, states.SCHEDULED}), states.RUNNING, True, "started",
                  "only a draft or scheduled campaign can be started (a paused one is resumed, a held one released)",
                  moves_now=False,
                  waits_for_run="is still queued or running: the campaign is being started already"),
    RELEASE_UNKNOWN: Action(RELEASE_UNKNOWN, frozenset({states.SENT}), states.RUNNING, True,
                            "reopened",
                            "only a sent campaign's unknown recipients are released (a paused one is resumed first)",
                            waits_for_run="is still finishing; try again once that run has ended"),
}


@dataclass(frozen=True)
class ActionResult:
    """What an action did; `trigger_run_id` names the send_campaign run to start (resume and release only)."""

    action_id: int
    campaign_id: int
    action: str
    old_status: str
    new_status: str | None  # None: the state is left to the send run (start)
    requested_at: datetime
    trigger_run_id: str | None
    cancelled: int
    repeated: bool  # a retried control task found its own earlier action and did nothing again
    released: int = 0  # release_unknown: unknown rows made pending again

    def as_xcom(self) -> dict[str, Any]:
        """JSON-safe, for the DAG's XCom (the TriggerDagRunOperator reads trigger_run_id and send_conf)."""
        return {
            "action_id": self.action_id, "campaign_id": self.campaign_id, "action": self.action,
            "old_status": self.old_status, "new_status": self.new_status,
            "requested_at": self.requested_at.isoformat(), "trigger_run_id": self.trigger_run_id,
            "send_conf": {"campaign_id": self.campaign_id} if self.trigger_run_id else None,
            "cancelled": self.cancelled, "released": self.released, "repeated": self.repeated,
        }


def trigger_run_id_for(action: str, campaign_id: int, action_id: int, requested_at: datetime) -> str:
    """The send_campaign run id of a resume/release: derived from the action row, so it is the same on retry.

    The request time is part of it because ids restart when a campaign database is recreated while Airflow's
    run history stays: a reused id would make the trigger find an old run and start nothing.
    """
    stamp = requested_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{ACTOR}__{action}__campaign_{campaign_id}__action_{action_id}__{stamp}"


def parse_request(campaign_id: Any, action: Any) -> tuple[int, Action]:
    """Check a control request's two fields (the DAG's Params check them too; the REST API may not)."""
    if isinstance(campaign_id, bool) or not isinstance(campaign_id, int) or campaign_id < 1:
        raise CampaignDefinitionError(f"campaign_id must be a whole number of at least 1, got {campaign_id!r}")
    if action not in ACTIONS:
        raise CampaignDefinitionError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    return campaign_id, ACTIONS[action]


def apply_action(conn: psycopg.Connection, campaign_id: Any, action: Any, *, run_id: str | None = None,
                 actor: str = ACTOR, run_is_active: Callable[[str], bool] | None = None,
                 unknown_window: timedelta | None = None) -> ActionResult:
    """Apply one control action in one transaction; IllegalTransition (nothing changed) when it is not allowed.

    `run_is_active(run_id)` says whether a send_campaign run is still queued or running; resume refuses while the
    run that was paused is still winding down, because that run's finalize would otherwise settle the resumed
    campaign as its own. `unknown_window` (default UNKNOWN_SENDS_WINDOW_HOURS): how old the unknown rows
    release_unknown releases must be.
    """
    campaign_id, spec = parse_request(campaign_id, action)
    sql = queries.load("control")
    with conn.transaction():
        campaign = conn.execute(sql["lock-campaign"], {"campaign_id": campaign_id}).fetchone()
        if campaign is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        if run_id is not None:
            earlier = conn.execute(sql["action-of-run"], {"campaign_id": campaign_id, "action": spec.name,
                                                        "actor": actor, "run_id": run_id}).fetchone()
            if earlier is not None:
                log.info("campaign %s: %s was already applied by run %s (action %s); not applied again",
                         campaign_id, spec.name, run_id, earlier["id"])
                return _result(earlier, repeated=True)
        old = campaign["status"]
        name = f"campaign {campaign_id} ({campaign['key']!r})"
        if old not in spec.allowed_from:
            raise IllegalTransition(f"cannot {spec.name} {name}: it is {old}; {spec.hint}")
        if spec.name == START and campaign["recurrence"]:
            raise IllegalTransition(f"cannot start {name}: it recurs ({campaign['recurrence']}); each occurrence "
                                    "is its own campaign, started by dispatch_scheduled_campaigns")
        if spec.waits_for_run and campaign["run_id"] and run_is_active is not None \
                and run_is_active(campaign["run_id"]):
            raise IllegalTransition(f"cannot {spec.name} {name} yet: its previous send run {campaign['run_id']} "
                                    f"{spec.waits_for_run}")
        released = _release_unknown(conn, campaign_id, name, unknown_window) if spec.name == RELEASE_UNKNOWN else []
        reason = f"{spec.done} by {actor}" + (f" (run {run_id})" if run_id else "") + (
            f" to send {len(released)} unknown recipient(s) once more" if released else "")
        new_status = spec.to if spec.moves_now else None
        row = states.record_action(conn, campaign_id, action=spec.name, actor=actor, run_id=run_id, old_status=old,
                                   new_status=new_status, reason=reason)
        if spec.moves_now:
            states.move_campaign(conn, campaign_id, spec.to, expected=old,
                                 reason=None if spec.to == states.RUNNING else reason)
        elif old == states.SCHEDULED:
            conn.execute(sql["send-scheduled-now"], {"campaign_id": campaign_id})
        cancelled = ledger.cancel_pending(conn, campaign_id) if spec.name == CANCEL else 0
        trigger_run_id = None
        if spec.starts_send_run:
            trigger_run_id = trigger_run_id_for(spec.name, campaign_id, row["id"], row["requested_at"])
            conn.execute(sql["set-campaign-run"], {"campaign_id": campaign_id, "run_id": trigger_run_id})
        detail = {"cancelled": cancelled, "trigger_run_id": trigger_run_id, "previous_run_id": campaign["run_id"]}
        if spec.name == RELEASE_UNKNOWN:
            detail.update(released=len(released), released_sample=released[:reconcile.SAMPLE_SIZE])
        conn.execute(sql["set-action-detail"], {"id": row["id"], "detail": Jsonb(detail)})
    log.info("%s: %s -> %s by %s%s", name, old, new_status or f"{spec.to} (by its send run)", spec.name,
             f"; {cancelled} pending recipient(s) cancelled" if spec.name == CANCEL else
             f"; {len(released)} unknown recipient(s) pending again, send run {trigger_run_id}" if released else
             f"; send run {trigger_run_id}" if trigger_run_id else "")
    return ActionResult(action_id=row["id"], campaign_id=campaign_id, action=spec.name, old_status=old,
                        new_status=new_status, requested_at=row["requested_at"], trigger_run_id=trigger_run_id,
                        cancelled=cancelled, repeated=False, released=len(released))


def _release_unknown(conn: psycopg.Connection, campaign_id: int, name: str,
                     unknown_window: timedelta | None) -> list[int]:
    """release_unknown's rows, made pending in the action's transaction; refused when there is none to release."""
    window = unknown_window if unknown_window is not None else reconcile.window_for(get_settings())
    released = reconcile.release_unsettled(conn, campaign_id, window)
    if not released:
        raise IllegalTransition(f"cannot release unknown recipients of {name}: none is unknown for more than "
                                f"{reconcile.hours_text(window)} without an SES event (settled meanwhile, or "
                                "released already)")
    return released


def _result(row: dict[str, Any], *, repeated: bool) -> ActionResult:
    detail = row["detail"] or {}
    return ActionResult(action_id=row["id"], campaign_id=row["campaign_id"], action=row["action"],
                        old_status=row["old_status"], new_status=row["new_status"],
                        requested_at=row["requested_at"], trigger_run_id=detail.get("trigger_run_id"),
                        cancelled=detail.get("cancelled", 0), repeated=repeated,
                        released=detail.get("released", 0))


def copy_key(key: str, taken: set[str]) -> str:
    """The first free key of `<key>-copy`, `<key>-copy-2`, ...; the key's start is shortened to fit 128 characters."""
    number = 1
    while True:
        suffix = COPY_SUFFIX if number == 1 else f"{COPY_SUFFIX}-{number}"
        candidate = key[:MAX_KEY_LENGTH - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        number += 1


def duplicate_campaign(conn: psycopg.Connection, campaign_id: int, *, actor: str) -> dict[str, Any]:
    """A new draft with the campaign's content, audience and settings under a new key; an action row on both.

    The new campaign has no schedule, ledger or history: it is sent (or edited through send_campaign by its key)
    like any draft. Returns the new row (id, key, name, status).
    """
    sql = queries.load("control")
    with conn.transaction():
        source = conn.execute(sql["lock-campaign"], {"campaign_id": campaign_id}).fetchone()
        if source is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        base = source["key"][:MAX_KEY_LENGTH - len(COPY_SUFFIX)]
        taken = {row["key"] for row in conn.execute(sql["keys-starting-with"], {"prefix": base})}
        copy = conn.execute(sql["copy-campaign"], {"campaign_id": campaign_id,
                                                   "key": copy_key(source["key"], taken)}).fetchone()
        states.record_action(conn, campaign_id, action=DUPLICATE, actor=actor, old_status=source["status"],
                             new_status=None, reason=f"duplicated by {actor} as campaign {copy['id']} "
                                                     f"({copy['key']!r})", detail={"copy_id": copy["id"]})
        states.record_action(conn, copy["id"], action=DUPLICATE, actor=actor, old_status=None,
                             new_status=states.DRAFT, reason=f"created by {actor} as a copy of campaign "
                                                             f"{campaign_id} ({source['key']!r})",
                             detail={"source_id": campaign_id})
    log.info("campaign %s (%r) duplicated as %s (%r) by %s", campaign_id, source["key"], copy["id"], copy["key"],
             actor)
    return copy


def record_test_send(conn: psycopg.Connection, campaign_id: int, recipients: list[str], *, actor: str,
                     run_id: str) -> dict[str, Any]:
    """The campaign_actions row of a test send someone asked for (the send_test_email run `run_id` sends it)."""
    campaign = conn.execute(queries.load("states")["campaign-status"], {"campaign_id": campaign_id}).fetchone()
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    return states.record_action(conn, campaign_id, action=TEST_SEND, actor=actor, run_id=None,
                                old_status=campaign["status"], new_status=None,
                                reason=f"test email to {len(recipients)} address(es) asked for by {actor}",
                                detail={"test_run_id": run_id, "recipients": recipients})
