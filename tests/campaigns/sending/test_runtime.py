"""runtime.send_resources: what one send task gets inside Airflow (real Redis, moto for SES and STS)."""

from __future__ import annotations

import pytest

from campaigns.config import Settings
from campaigns.sending.ratelimit import default_thread_count, door_rate
from campaigns.sending.resources import send_resources


@pytest.fixture
def rate_400(settings_env, redis_client):
    settings_env(SES_SENDING_RATE=400, SES_POOL_SLOTS=4)


@pytest.mark.usefixtures("rate_400", "ses")
def test_parallel_send_tasks_get_threads_for_their_share_of_the_rate():
    with send_resources() as alone:
        assert alone.threads == default_thread_count(400)
    # the plan says how many of the campaign's tasks run side by side (SendTask.parallel): each shares the rate
    with send_resources(parallel=4) as one_of_four:
        assert one_of_four.threads == default_thread_count(100) < alone.threads
        # the limiter still holds the account's whole rate (less the timing allowance at SES's door), not a share
        assert one_of_four.limiter.rate == door_rate(400, Settings.send_timing_allowance)


@pytest.mark.usefixtures("ses")
def test_threads_follow_the_configured_ses_latency(settings_env, redis_client):
    settings_env(SES_SENDING_RATE=400, SES_LATENCY_SECONDS=0.05)
    with send_resources(parallel=2) as one_of_two:
        assert one_of_two.threads == 13  # 200/s x 0.05 s x 1.25 = 12.5 calls in flight
