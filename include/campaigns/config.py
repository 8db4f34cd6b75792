"""One settings object per process, built from the environment in one place (docs/configuration.md lists them all).

Precedence: a DAG run's conf > environment > default. The original design's names (AWS_SES_*, NEXT_PUBLIC_SITE_URL)
are accepted as aliases; where both are set, the new name wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from urllib.parse import urlsplit

# Setting -> older names accepted for it, in order of preference.
ALIASES: dict[str, tuple[str, ...]] = {
    "SES_FROM_EMAIL": ("AWS_SES_FROM_EMAIL",),
    "SES_FROM_NAME": ("AWS_SES_FROM_NAME",),
    "SES_REPLY_TO": ("AWS_SES_REPLY_TO_EMAIL",),
    "SES_CONFIGURATION_SET": ("AWS_SES_CONFIGURATION_SET",),
    "SES_SENDING_RATE": ("AWS_SES_SENDING_RATE",),
    "SES_BATCH_SIZE": ("AWS_SES_BATCH_SIZE",),
    "TRACKING_BASE_URL": ("NEXT_PUBLIC_SITE_URL",),
}

MAX_BATCH_SIZE = 10_000


class ConfigError(ValueError):
    """A setting has a value the product cannot use; the message names the setting."""


def _lookup(env: Mapping[str, str], name: str) -> str | None:
    for key in (name, *ALIASES.get(name, ())):
        value = env.get(key)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0, integer: bool = False):
    raw = _lookup(env, name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _lookup(env, name) or ""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


REDIS_URL_SCHEMES = ("redis", "rediss", "unix")


def redis_url_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The original design's REDIS_URL: configures the connection `redis_default` unless AIRFLOW_CONN_REDIS_DEFAULT
    is set (the connection wins, like every new name over its alias). None when not given."""
    raw = _lookup(os.environ if env is None else env, "REDIS_URL")
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in REDIS_URL_SCHEMES or not (parts.netloc or parts.path):
        # the value may carry a password: name the setting and the scheme, never echo the URL
        raise ConfigError(f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the send path, the tracking service and the DAGs read from the environment."""

    tracking_base_url: str = "https://localhost:28443"
    tracking_secret_keys: tuple[str, ...] = field(default=(), repr=False)
    from_email: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    configuration_set: str | None = None
    sending_rate: float | None = 14.0  # None means "auto": SES GetAccount MaxSendRate x rate_safety_factor
    rate_safety_factor: float = 0.9
    rate_burst: int = 1
    rate_refresh_seconds: float = 300.0
    batch_size: int = 500
    send_threads: int | None = None  # None: chosen from the rate and a typical SES latency
    max_send_task_seconds: float = 300.0  # how much sending one mapped task carries, at the configured rate
    parallel_send_tasks: int = 4  # send tasks of one campaign meant to run side by side (the `ses` pool's slots)
    limiter_outage_seconds: float = 120.0  # how long a send task waits out an unreachable limiter before failing
    ses_local_max_send_rate: float = 14.0  # account limits reported for a local SES endpoint (moto has none)
    ses_local_max_24h_send: float = 50_000.0
    sns_topic_arns: tuple[str, ...] = ()
    sns_test_cert_pem: str | None = None
    soft_bounce_limit: int = 3
    soft_bounce_days: int = 30
    events_retention_days: int = 400  # email_events older than this are pruned once rolled up; 0 keeps them
    schedule_hold_after_hours: float = 6.0  # a scheduled campaign found later than this is held, not sent
    # Reputation guard (campaigns.lifecycle.reputation): pause a sending campaign whose rates exceed these.
    reputation_min_sample: int = 200  # delivered-or-bounced messages before the rates are judged
    reputation_max_bounce_rate: float = 0.05  # hard bounces / sample, as a fraction (0.05 = 5 %)
    reputation_max_complaint_rate: float = 0.001  # complaints / sample (0.001 = 0.1 %)
    reputation_check_seconds: float = 5.0  # how often a send task counts its campaign's events
    suppressions_export_dir: str | None = None  # None: <AIRFLOW_HOME>/exports
    # Tracking service (tracking_service): the local-disk spool of opens and clicks, its drainers, proxies in front.
    tracking_spool_dir: str = "tracking-spool"  # relative paths are relative to the working directory
    tracking_spool_segment_bytes: int = 16 * 1024 * 1024
    tracking_spool_fsync_seconds: float = 1.0  # 0: fdatasync after every event
    tracking_drainer: bool = True  # a drainer thread in every web worker
    tracking_trusted_proxy_hops: int = 0  # reverse proxies that append to X-Forwarded-For
    aws_conn_id: str = "aws_default"
    db_conn_id: str = "campaign_db"
    redis_conn_id: str = "redis_default"
    redis_url: str | None = field(default=None, repr=False)  # REDIS_URL (original design); may hold a password

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        rate_raw = _lookup(env, "SES_SENDING_RATE")
        sending_rate: float | None
        if rate_raw is not None and rate_raw.lower() == "auto":
            sending_rate = None
        else:
            sending_rate = _number(env, "SES_SENDING_RATE", 14.0, minimum=0.001)
        threads = _lookup(env, "SES_SEND_THREADS")
        settings = cls(
            tracking_base_url=(_lookup(env, "TRACKING_BASE_URL") or cls.tracking_base_url).rstrip("/"),
            tracking_secret_keys=_list(env, "TRACKING_SECRET_KEYS"),
            from_email=_lookup(env, "SES_FROM_EMAIL"),
            from_name=_lookup(env, "SES_FROM_NAME"),
            reply_to=_lookup(env, "SES_REPLY_TO"),
            configuration_set=_lookup(env, "SES_CONFIGURATION_SET"),
            sending_rate=sending_rate,
            rate_safety_factor=_number(env, "SES_RATE_SAFETY_FACTOR", 0.9, minimum=0.01),
            rate_burst=_number(env, "SES_RATE_BURST", 1, minimum=1, integer=True),
            rate_refresh_seconds=_number(env, "SES_RATE_REFRESH_SECONDS", 300.0, minimum=1),
            batch_size=_number(env, "SES_BATCH_SIZE", 500, minimum=1, integer=True),
            send_threads=None if threads is None else _number(env, "SES_SEND_THREADS", 1, minimum=1, integer=True),
            max_send_task_seconds=_number(env, "SEND_TASK_SECONDS", 300.0, minimum=1),
            parallel_send_tasks=_number(env, "SEND_TASK_PARALLELISM", 4, minimum=1, integer=True),
            limiter_outage_seconds=_number(env, "LIMITER_OUTAGE_SECONDS", 120.0, minimum=0),
            ses_local_max_send_rate=_number(env, "SES_LOCAL_MAX_SEND_RATE", 14.0, minimum=0.001),
            ses_local_max_24h_send=_number(env, "SES_LOCAL_MAX_24H_SEND", 50_000.0, minimum=1),
            sns_topic_arns=_list(env, "SNS_TOPIC_ARNS"),
            sns_test_cert_pem=_lookup(env, "SNS_TEST_CERT_PEM"),
            redis_url=redis_url_from_env(env),
            soft_bounce_limit=_number(env, "SOFT_BOUNCE_LIMIT", 3, minimum=1, integer=True),
            soft_bounce_days=_number(env, "SOFT_BOUNCE_DAYS", 30, minimum=1, integer=True),
            events_retention_days=_number(env, "EVENTS_RETENTION_DAYS", 400, minimum=0, integer=True),
            schedule_hold_after_hours=_number(env, "SCHEDULE_HOLD_AFTER_HOURS", 6.0, minimum=0.01),
            reputation_min_sample=_number(env, "REPUTATION_MIN_SAMPLE", 200, minimum=1, integer=True),
            reputation_max_bounce_rate=_number(env, "REPUTATION_MAX_BOUNCE_RATE", 0.05),
            reputation_max_complaint_rate=_number(env, "REPUTATION_MAX_COMPLAINT_RATE", 0.001),
            reputation_check_seconds=_number(env, "REPUTATION_CHECK_SECONDS", 5.0, minimum=0.1),
            suppressions_export_dir=_lookup(env, "SUPPRESSIONS_EXPORT_DIR"),
            tracking_spool_dir=_lookup(env, "TRACKING_SPOOL_DIR") or cls.tracking_spool_dir,
            tracking_spool_segment_bytes=_number(env, "TRACKING_SPOOL_SEGMENT_BYTES", cls.tracking_spool_segment_bytes,
                                                 minimum=1, integer=True),
            tracking_spool_fsync_seconds=_number(env, "TRACKING_SPOOL_FSYNC_SECONDS", 1.0, minimum=0),
            tracking_drainer=(_lookup(env, "TRACKING_DRAINER") or "1").lower() not in ("0", "false", "no", "off"),
            tracking_trusted_proxy_hops=_number(env, "TRACKING_TRUSTED_PROXY_HOPS", 0, minimum=0, integer=True),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if 0 < self.events_retention_days < self.soft_bounce_days:
            # the soft-bounce rule counts raw bounce events over SOFT_BOUNCE_DAYS: they must still be there
            raise ConfigError(f"EVENTS_RETENTION_DAYS must be 0 (keep) or at least SOFT_BOUNCE_DAYS "
                              f"({self.soft_bounce_days}), got {self.events_retention_days}")
        for name, rate in (("REPUTATION_MAX_BOUNCE_RATE", self.reputation_max_bounce_rate),
                           ("REPUTATION_MAX_COMPLAINT_RATE", self.reputation_max_complaint_rate)):
            if not 0 < rate <= 1:
                raise ConfigError(f"{name} must be a fraction above 0 and at most 1 (0.05 = 5 %), got {rate}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"SES_BATCH_SIZE must be at most {MAX_BATCH_SIZE}, got {self.batch_size}")
        parts = urlsplit(self.tracking_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"TRACKING_BASE_URL must be an absolute http(s) URL, got {self.tracking_base_url!r}")

    def with_overrides(self, **changes) -> Settings:
        """A copy with a DAG run's conf applied on top (conf > env > default)."""
        updated = replace(self, **{k: v for k, v in changes.items() if v is not None})
        updated.validate()
        return updated


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings.from_env()
