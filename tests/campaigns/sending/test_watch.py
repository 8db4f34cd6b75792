"""The send loop's typed values and its explicit steps: the attempt id, the status read, the reputation step."""

from __future__ import annotations

import threading
import time

import pytest

from campaigns import db as campaign_db
from campaigns.sending.ledger import Attempt
from campaigns.sending.sender import CampaignWatch
from devstack.settings import SETTINGS
from tests.helpers import insert_campaign

PAUSE_REASON = "bounce rate 50% (10 hard bounces of 20 delivered or bounced) exceeds the 5% threshold"


class FakeGuard:
    """A ReputationCheck whose verdict the test decides; `release` lets a test hold a check in progress."""

    def __init__(self, verdict: str | None = PAUSE_REASON, *, due: bool = True) -> None:
        self.verdict, self._due = verdict, due
        self.paused_reason: str | None = None
        self.checks = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def due(self) -> bool:
        return self._due

    def check(self, conn) -> str | None:
        self.checks += 1
        self.entered.set()
        self.release.wait(10)
        self._due = False  # a real guard is not due again before its interval
        self.paused_reason = self.verdict
        return self.verdict


def connect():
    return campaign_db.connect(SETTINGS.pg_dsn(SETTINGS.test_campaign_db), autocommit=True)


@pytest.fixture
def running_campaign(db) -> int:
    campaign_id = insert_campaign(db, "spring")
    db.execute("UPDATE campaigns SET status = 'running', run_id = 'run-1' WHERE id = %s", [campaign_id])
    return campaign_id


def watch(campaign_id: int, guard: FakeGuard | None, interval: float = 60.0) -> CampaignWatch:
    return CampaignWatch(connect, campaign_id, interval, guard=guard, run_id="run-1")


def test_an_attempt_reads_as_the_text_the_ledger_has_always_stored():
    attempt = Attempt(run_id="manual__2025-11-03T09:00:00+00:00", map_index=3, try_number=2)

    assert str(attempt) == "manual__2025-11-03T09:00:00+00:00/3/2"
    assert attempt.run_id == "manual__2025-11-03T09:00:00+00:00"


def test_reading_the_status_never_judges_the_rates(running_campaign):
    guard = FakeGuard()
    campaign_watch = watch(running_campaign, guard, interval=0)
    try:
        assert [campaign_watch.status() for _ in range(3)] == ["running"] * 3
    finally:
        campaign_watch.close()

    assert guard.checks == 0


def test_the_reputation_step_that_pauses_makes_the_next_status_answer_paused(running_campaign):
    guard = FakeGuard()
    campaign_watch = watch(running_campaign, guard)
    try:
        assert campaign_watch.status() == "running"

        assert campaign_watch.check_reputation() == PAUSE_REASON
        assert campaign_watch.status() == "paused"  # before the status is re-read: no thread sends past it
        assert campaign_watch.check_reputation() is None  # a paused campaign is not judged again
    finally:
        campaign_watch.close()
    assert guard.checks == 1


def test_the_reputation_step_is_skipped_when_the_guard_is_not_due_or_there_is_none(running_campaign):
    not_due = FakeGuard(due=False)
    for guard in (not_due, None):
        campaign_watch = watch(running_campaign, guard)
        try:
            assert campaign_watch.status() == "running"
            assert campaign_watch.check_reputation() is None
            assert campaign_watch.status() == "running"
        finally:
            campaign_watch.close()
    assert not_due.checks == 0


def test_other_threads_wait_for_the_verdict_instead_of_reading_past_it(running_campaign):
    guard = FakeGuard()
    guard.release.clear()
    campaign_watch = watch(running_campaign, guard)
    seen: list[str] = []
    try:
        assert campaign_watch.status() == "running"
        checker = threading.Thread(target=campaign_watch.check_reputation)
        checker.start()
        assert guard.entered.wait(10)
        reader = threading.Thread(target=lambda: seen.append(campaign_watch.status()))
        reader.start()
        time.sleep(0.2)
        assert seen == []  # still waiting on the check in progress

        guard.release.set()
        checker.join(10)
        reader.join(10)
    finally:
        guard.release.set()
        campaign_watch.close()
    assert seen == ["paused"]
