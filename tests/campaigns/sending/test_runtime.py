"""runtime.send_resources: what one send task gets inside Airflow (real Redis, moto for SES and STS)."""

from __future__ import annotations

import pytest

from campaigns.sending.ratelimit import default_thread_count
from campaigns.sending.resources import send_resources


@pytest.fixture
def rate_400(settings_env, redis_client):
    settings_env(SES_SENDING_RATE=400, SEND_TASK_PARALLELISM=4)


@pytest.mark.usefixtures("rate_400", "ses")
def test_parallel_send_tasks_get_threads_for_their_share_of_the_rate():
    with send_resources() as alone:
        assert alone.threads == default_thread_count(400)
    with send_resources(sibling_tasks=4) as one_of_four:
        assert one_of_four.threads == default_thread_count(100) < alone.threads
    # a plan of 9 tasks still runs 4 side by side (the ses pool's slots): each shares the rate four ways
    with send_resources(sibling_tasks=9) as one_of_nine:
        assert one_of_nine.threads == default_thread_count(100)
        assert one_of_nine.limiter.rate == 400  # the limiter still holds the account's whole rate
