"""The reputation guard: pause a campaign whose bounce or complaint rate would put the SES account under review.

Two guards, both ending in the same guarded `running -> paused` move with a reason and a campaign_actions row:

- **Campaign rates** (`ReputationGuard`), checked by every send task of the campaign every
  `REPUTATION_CHECK_SECONDS` (the send loop's reputation step, CampaignWatch.check_reputation, calls it). Once at
  least `REPUTATION_MIN_SAMPLE` of the campaign's messages were delivered or bounced, the campaign is paused when
  hard bounces / sample > `REPUTATION_MAX_BOUNCE_RATE` or complaints / sample > `REPUTATION_MAX_COMPLAINT_RATE`.
  Only hard bounces (bounceType Permanent) count, as in SES's own review; soft bounces (Transient, Undetermined)
  are in the sample but not in the numerator: a full mailbox says nothing about list quality, and addresses that
  keep soft-bouncing are suppressed by the SOFT_BOUNCE_LIMIT rule instead.
- **Account state** (`guard_account`), run by the `ses_account_guard` DAG: when SES GetAccount says sending is
  disabled or the enforcement status is not HEALTHY, every running campaign is paused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from campaigns import queries, states
from campaigns.config import Settings
from campaigns.errors import IllegalTransition

log = logging.getLogger(__name__)

REPUTATION_ACTOR = "reputation_guard"
ACCOUNT_ACTOR = "ses_account_guard"
HEALTHY = "HEALTHY"


def _percent(fraction: float) -> str:
    # 0.05 -> "5%", 0.001 -> "0.1%", 0.0652 -> "6.52%": thresholds read as configured, rates to two decimals.
    return f"{round(fraction * 100, 2):g}%"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Thresholds:
    """When a campaign's rates are judged (min_sample) and what is too high (fractions, 0.05 = 5 %)."""

    min_sample: int = 200
    max_bounce_rate: float = 0.05
    max_complaint_rate: float = 0.001

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(min_sample=settings.reputation_min_sample, max_bounce_rate=settings.reputation_max_bounce_rate,
                   max_complaint_rate=settings.reputation_max_complaint_rate)


@dataclass(frozen=True)
class Outcomes:
    """What SES reported so far for a campaign's messages (since the guard last paused it)."""

    delivered: int
    bounced: int
    hard_bounced: int
    complained: int

    @property
    def sample(self) -> int:
        """Messages whose fate is known: delivered or bounced (hard or soft)."""
        return self.delivered + self.bounced

    @property
    def bounce_rate(self) -> float:
        return self.hard_bounced / self.sample if self.sample else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.sample if self.sample else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sample": self.sample, "bounce_rate": round(self.bounce_rate, 6),
                "complaint_rate": round(self.complaint_rate, 6)}


def campaign_outcomes(conn: psycopg.Connection, campaign_id: int) -> Outcomes:
    """Count the campaign's delivery, bounce and complaint events since the guard's last pause of it."""
    row = conn.execute(queries.load("reputation")["campaign-outcomes"], {"campaign_id": campaign_id}).fetchone()
    return Outcomes(delivered=row["delivered"], bounced=row["bounced"], hard_bounced=row["hard_bounced"],
                    complained=row["complained"])


def verdict(outcomes: Outcomes, thresholds: Thresholds) -> str | None:
    """Why the campaign must be paused (which rate, its value, the threshold), or None while it may send on."""
    if outcomes.sample < thresholds.min_sample:
        return None
    if outcomes.bounce_rate > thresholds.max_bounce_rate:
        return (f"bounce rate {_percent(outcomes.bounce_rate)} ({_count(outcomes.hard_bounced, 'hard bounce')} "
                f"of {outcomes.sample} delivered or bounced) exceeds the {_percent(thresholds.max_bounce_rate)} "
                "threshold")
    if outcomes.complaint_rate > thresholds.max_complaint_rate:
        return (f"complaint rate {_percent(outcomes.complaint_rate)} ({_count(outcomes.complained, 'complaint')} "
                f"of {outcomes.sample} delivered or bounced) exceeds the {_percent(thresholds.max_complaint_rate)} "
                "threshold")
    return None


def pause_campaign(conn: psycopg.Connection, campaign_id: int, *, reason: str, actor: str,
                   run_id: str | None = None, detail: dict[str, Any] | None = None) -> bool:
    """Move a running campaign to paused and write its campaign_actions row, in one transaction.

    Returns False (and changes nothing) when the campaign is no longer running: another send task or a person
    moved it first, which is not an error for a guard.
    """
    try:
        with conn.transaction():
            moved = states.move_campaign(conn, campaign_id, states.PAUSED, reason=reason, expected=states.RUNNING)
            states.record_action(conn, campaign_id, action="pause", actor=actor, run_id=run_id,
                                 old_status=states.RUNNING, new_status=moved["status"], reason=reason, detail=detail)
    except IllegalTransition as exc:
        log.info("campaign %s not paused by %s: %s", campaign_id, actor, exc)
        return False
    return True


class ReputationGuard:
    """One send task's view of its campaign's rates: counts at most every `interval` seconds, pauses when too high.

    Not thread-safe on its own: CampaignWatch calls it under its lock, with its connection.
    """

    def __init__(self, campaign_id: int, thresholds: Thresholds, *, interval: float, run_id: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.campaign_id = campaign_id
        self.thresholds = thresholds
        self.interval = interval
        self.run_id = run_id
        self._clock = clock
        self._checked: float | None = None
        self.paused_reason: str | None = None

    @classmethod
    def from_settings(cls, campaign_id: int, settings: Settings, *, run_id: str | None = None) -> ReputationGuard:
        return cls(campaign_id, Thresholds.from_settings(settings), interval=settings.reputation_check_seconds,
                   run_id=run_id)

    def due(self) -> bool:
        return self._checked is None or self._clock() - self._checked >= self.interval

    def check(self, conn: psycopg.Connection) -> str | None:
        """Count and judge; returns the reason when this check paused the campaign, else None."""
        self._checked = self._clock()
        outcomes = campaign_outcomes(conn, self.campaign_id)
        reason = verdict(outcomes, self.thresholds)
        if reason is None:
            return None
        detail = {"outcomes": outcomes.as_dict(), "thresholds": asdict(self.thresholds)}
        if not pause_campaign(conn, self.campaign_id, reason=reason, actor=REPUTATION_ACTOR, run_id=self.run_id,
                              detail=detail):
            return None
        log.error("campaign %s paused by the reputation guard: %s", self.campaign_id, reason)
        self.paused_reason = reason
        return reason


def account_problem(account: dict[str, Any]) -> str | None:
    """What in an SES GetAccount answer means "stop sending", or None for a healthy account."""
    problems = []
    if account.get("SendingEnabled") is False:
        problems.append("sending is disabled for the account (SendingEnabled false)")
    status = account.get("EnforcementStatus")
    if status != HEALTHY:
        # PROBATION: SES is reviewing the account (bounce or complaint rate); SHUTDOWN: sending was stopped.
        problems.append(f"the account's enforcement status is {status or 'missing'}, not {HEALTHY}")
    return "; ".join(problems) or None


def guard_account(conn: psycopg.Connection, ses_client: Any, *, run_id: str | None = None) -> dict[str, Any]:
    """Read the SES account's state once; when it is not fit to send, pause every running campaign.

    A local SES endpoint (moto) cannot report the account's state, so nothing is checked or paused there. A failing
    GetAccount call raises: the task fails and retries, visibly, rather than pausing campaigns on a network blip.
    """
    from campaigns.sending.ses import endpoint_is_local

    if endpoint_is_local(ses_client):
        log.info("the SES endpoint is local: the account's state is not checkable locally")
        return {"checked": False, "problem": None, "paused": [], "note": "not checkable locally"}
    running = conn.execute(queries.load("reputation")["running-campaigns"]).fetchall()
    account = ses_client.get_account()
    problem = account_problem(account)
    result: dict[str, Any] = {"checked": True, "problem": problem, "paused": [],
                              "sending_enabled": account.get("SendingEnabled"),
                              "enforcement_status": account.get("EnforcementStatus"),
                              "running": [row["id"] for row in running]}
    if problem is None:
        log.info("SES account is healthy; %d campaign(s) running", len(running))
        return result
    reason = f"SES account guard: {problem}"
    detail = {"SendingEnabled": account.get("SendingEnabled"), "EnforcementStatus": account.get("EnforcementStatus")}
    for row in running:
        if pause_campaign(conn, row["id"], reason=reason, actor=ACCOUNT_ACTOR, run_id=run_id, detail=detail):
            result["paused"].append(row["id"])
            log.error("campaign %s (%r) paused: %s", row["id"], row["key"], reason)
    if not running:
        log.error("%s (no campaign is running; fix the account before starting one)", reason)
    return result
