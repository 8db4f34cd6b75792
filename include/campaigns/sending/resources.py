"""Resources a send task needs inside Airflow, built through the providers' hooks from the configured connections.

sesv2 client: Amazon provider's AwsBaseHook (`aws_default`); limiter: Redis provider's RedisHook (`redis_default`),
one key per SES account and region so every worker of every campaign shares it. The connection ids and the rate
come from the Settings the DAG task passes in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from campaigns import db
from campaigns.config import Settings, get_settings
from campaigns.sending.plan import threads_per_task
from campaigns.sending.ratelimit import RateLimiter, RateSource, door_rate, limiter_key
from campaigns.sending.ses import ses_client_from_airflow


@dataclass(frozen=True)
class SendResources:
    """What one send task sends with: the sesv2 client, the global limiter and how many send threads it runs."""

    ses_client: Any
    limiter: RateLimiter
    threads: int


def sending_rate(settings: Settings, ses_client: Any = None) -> float:
    """The rate to send at now: SES_SENDING_RATE, or `auto` (GetAccount MaxSendRate x safety factor)."""
    client = ses_client or (lambda: ses_client_from_airflow(settings.aws_conn_id))
    return RateSource.from_settings(settings, client).rate()


def account_ses_client() -> Any:
    """A sesv2 client for account reads (GetAccount) through `aws_default`, with botocore's usual retries.

    Unlike the sending client (ses.client_config turns retries off so a timeout cannot send twice), a read may be
    retried safely. Takes no arguments (ses_account_guard's tests replace it with a stub): it is a DAG task's
    resource and reads the process's settings itself.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=get_settings().aws_conn_id, client_type="sesv2").conn


def _account_id(aws_conn_id: str) -> str:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type="sts").account_id


@contextmanager
def send_resources(parallel: int = 1, settings: Settings | None = None) -> Iterator[SendResources]:
    """The SES client, the global limiter and the thread count for one send task.

    `parallel`: how many send tasks of the campaign run side by side (its plan's SendTask.parallel). They share the
    rate, so each runs threads for its share only (plan.threads_per_task): more threads than that just wait on the
    limiter and cost CPU (context switches, GIL hand-offs) that the sending itself needs.
    `settings`: the DAG task's; None (tests) means the process's, get_settings().
    """
    settings = settings or get_settings()
    rate = sending_rate(settings)
    threads = settings.send_threads or threads_per_task(rate, parallel, settings.ses_latency_seconds)
    client = ses_client_from_airflow(settings.aws_conn_id, max_connections=threads)
    redis_client = db.resolve_redis(settings.redis_conn_id, settings)  # REDIS_URL, else the Redis provider's hook
    key = limiter_key(_account_id(settings.aws_conn_id), client.meta.region_name)
    limiter = RateLimiter(redis_client, key, door_rate(rate, settings.send_timing_allowance), burst=settings.rate_burst)
    try:
        yield SendResources(ses_client=client, limiter=limiter, threads=threads)
    finally:
        redis_client.close()
