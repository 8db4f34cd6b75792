"""Campaign and ledger states, and the campaign state machine (DESIGN.md): one table, guarded moves."""

from __future__ import annotations

from typing import Any

import psycopg

from campaigns import queries
from campaigns.errors import CampaignNotFound, IllegalTransition

# Campaign states
DRAFT, SCHEDULED, HELD, RUNNING, PAUSED, SENT, CANCELLED, FAILED = (
    "draft", "scheduled", "held", "running", "paused", "sent", "cancelled", "failed")


class Row:
    """Ledger (campaign_recipients) states: pending -> sending -> sent | failed | skipped | cancelled | unknown."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    ALL = (PENDING, SENDING, SENT, FAILED, SKIPPED, CANCELLED, UNKNOWN)


CAMPAIGN_MOVES: dict[str, frozenset[str]] = {
    DRAFT: frozenset({SCHEDULED, RUNNING, CANCELLED}),
    SCHEDULED: frozenset({RUNNING, HELD, CANCELLED}),
    HELD: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({PAUSED, SENT, CANCELLED, FAILED}),
    PAUSED: frozenset({RUNNING, CANCELLED}),
    # The one way out of sent: an analyst releases its `unknown` rows for one more send (control.RELEASE_UNKNOWN).
    SENT: frozenset({RUNNING}),
    CANCELLED: frozenset(),
    FAILED: frozenset(),
}
TERMINAL = frozenset(state for state, moves in CAMPAIGN_MOVES.items() if not moves)


def can_move(old: str, new: str) -> bool:
    return new in CAMPAIGN_MOVES.get(old, frozenset())


def move_campaign(conn: psycopg.Connection, campaign_id: int, new: str, *, reason: str | None = None,
                  expected: str | set[str] | None = None) -> dict[str, Any]:
    """Move a campaign to `new` with one UPDATE guarded by the old state; IllegalTransition changes nothing."""
    row = conn.execute(queries.load("states")["campaign-status"], {"campaign_id": campaign_id}).fetchone()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    old = row["status"]
    allowed = {expected} if isinstance(expected, str) else set(expected or CAMPAIGN_MOVES)
    if old not in allowed or not can_move(old, new):
        raise IllegalTransition(f"campaign {campaign_id} is {old}; it cannot move to {new}")
    updated = conn.execute(queries.load("states")["move-campaign"],
                           {"new": new, "reason": reason, "id": campaign_id, "old": old}).fetchone()
    if updated is None:  # someone else moved it between our read and our write
        raise IllegalTransition(f"campaign {campaign_id} changed state while moving {old} -> {new}; try again")
    return updated


def record_action(conn: psycopg.Connection, campaign_id: int, *, action: str, actor: str, old_status: str | None,
                  new_status: str | None, reason: str | None = None, run_id: str | None = None,
                  detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the campaign_actions row of a state action (call it in the move's transaction); returns its id and
    requested_at."""
    from psycopg.types.json import Jsonb

    return conn.execute(queries.load("states")["record-action"], {
        "campaign_id": campaign_id, "action": action, "actor": actor, "run_id": run_id, "old_status": old_status,
        "new_status": new_status, "reason": reason, "detail": Jsonb(detail or {})}).fetchone()
