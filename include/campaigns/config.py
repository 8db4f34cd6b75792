"""One settings object per process, built from the environment in one place (docs/configuration.md lists them all).

Precedence: a DAG run's conf > environment > default. The original design's names (AWS_SES_*, NEXT_PUBLIC_SITE_URL)
are accepted as aliases; where both are set, the new name wins.

Each setting is declared once, as its Settings field: `declare(default, "ENV_VAR", "doc", read=..., aliases=...)`.
Settings.from_env, the defaults other modules start from (Settings() is every default) and the test that checks
docs/configuration.md all read that declaration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from dataclasses import field as dataclass_field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaigns.errors import ConfigError

__all__ = ["MAX_BATCH_SIZE", "MIN_BATCH_SIZE", "ConfigError", "Setting", "Settings", "declarations", "get_settings"]

# Recipients per page: SES_BATCH_SIZE, a run's conf `batch_size` and send_campaign's Param all take this range.
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 1, 10_000

REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_OFF = ("0", "false", "no", "off")
_SETTING = "campaigns.setting"  # the key of a field's declaration in its dataclass metadata

Reader = Callable[[str, str], Any]  # (env var, its stripped non-empty text) -> the value, or ConfigError


@dataclass(frozen=True)
class Setting:
    """How one Settings field is read from the environment and shown in docs/configuration.md."""

    env: str | None  # None: not read from the environment (a fixed name such as a connection id)
    doc: str
    read: Reader
    aliases: tuple[str, ...] = ()  # the original design's names, in order of preference
    shown_default: str | None = None  # the docs' default cell when the default is not a plain value

    def raw(self, env: Mapping[str, str]) -> str | None:
        """The stripped text of the first of the name and its aliases that is set and not blank."""
        for key in (self.env, *self.aliases) if self.env else ():
            value = env.get(key)
            if value is not None and value.strip() != "":
                return value.strip()
        return None


def _text(name: str, raw: str) -> str:
    return raw


def _number(minimum: float = 0.0, *, integer: bool = False) -> Reader:
    def read(name: str, raw: str) -> float | int:
        try:
            value = int(raw) if integer else float(raw)
        except ValueError as exc:
            raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number, got {raw!r}") from exc
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
        return value

    return read


def _rate_or_auto(name: str, raw: str) -> float | None:
    return None if raw.lower() == "auto" else _number(0.001)(name, raw)


def _words(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _flag(name: str, raw: str) -> bool:
    return raw.lower() not in _OFF


def _zone(name: str, raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"{name} must be an IANA time zone such as Europe/Vienna or UTC, got {raw!r}") from exc
    return raw


def _base_url(name: str, raw: str) -> str:
    return raw.rstrip("/")  # validate() checks it is absolute http(s)


def _redis_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in REDIS_URL_SCHEMES or not (parts.netloc or parts.path):
        # the value may carry a password: name the setting and the scheme, never echo the URL
        raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL, got scheme {parts.scheme!r}")
    return raw


_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _domain(name: str, raw: str) -> str:
    domain = raw.lower().rstrip(".")
    if _DOMAIN.fullmatch(domain) is None or len(domain) > 190:
        raise ConfigError(f"{name} must be a domain name such as lists.example.com (punycode for an international "
                          f"one, at most 190 characters), got {raw!r}")
    return domain


def _loopback_url(name: str, raw: str) -> str:
    # As narrow as the setting's purpose: the local stack's SNS on this host, never a host elsewhere.
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS or parts.query or parts.fragment:
        raise ConfigError(f"{name} must be an http(s) URL on 127.0.0.1, ::1 or localhost without a query, got {raw!r}")
    return raw


def declare(default: Any, env: str | None, doc: str, *, read: Reader = _text, aliases: tuple[str, ...] = (),
            shown_default: str | None = None, secret: bool = False) -> Any:
    """A Settings field carrying its declaration: env var, aliases, default, reader, one-line doc."""
    return dataclass_field(default=default, repr=not secret,
                           metadata={_SETTING: Setting(env, doc, read, aliases, shown_default)})


@dataclass(frozen=True)
class Settings:
    """Everything the send path, the tracking service and the DAGs read from the environment."""

    tracking_base_url: str = declare(
        "https://localhost:28443", "TRACKING_BASE_URL", "public base URL of the tracking service (https)",
        read=_base_url, aliases=("NEXT_PUBLIC_SITE_URL",))
    tracking_secret_keys: tuple[str, ...] = declare(
        (), "TRACKING_SECRET_KEYS", "HMAC keys of tracking/unsubscribe tokens: the first signs, all verify",
        read=_words, shown_default="(none: preflight refuses to send)", secret=True)
    from_email: str | None = declare(
        None, "SES_FROM_EMAIL", "sender address when a campaign gives none", aliases=("AWS_SES_FROM_EMAIL",))
    from_name: str | None = declare(
        None, "SES_FROM_NAME", "sender display name when a campaign gives none", aliases=("AWS_SES_FROM_NAME",))
    reply_to: str | None = declare(
        None, "SES_REPLY_TO", "Reply-To when a campaign gives none", aliases=("AWS_SES_REPLY_TO_EMAIL",))
    configuration_set: str | None = declare(
        None, "SES_CONFIGURATION_SET", "ConfigurationSetName of every SendEmail",
        aliases=("AWS_SES_CONFIGURATION_SET",))
    list_id_domain: str | None = declare(
        None, "LIST_ID_DOMAIN", "domain under which List-Ids are derived (`<list-slug>.<domain>`); None: the From "
        "address's domain", read=_domain, shown_default="(the From domain)")
    # 14: SES's smallest production MaxSendRate
    sending_rate: float | None = declare(
        14.0, "SES_SENDING_RATE", 'sends per second for the whole account; None means "auto": SES GetAccount '
        "MaxSendRate x rate_safety_factor", read=_rate_or_auto, aliases=("AWS_SES_SENDING_RATE",))
    rate_safety_factor: float = declare(
        0.9, "SES_RATE_SAFETY_FACTOR", "fraction of SES's MaxSendRate used when the rate is auto", read=_number(0.01))
    rate_burst: int = declare(
        1, "SES_RATE_BURST", "sends the limiter lets through back to back", read=_number(1, integer=True))
    send_timing_allowance: float = declare(
        0.03, "SEND_TIMING_ALLOWANCE_SECONDS", "how late after its slot a send may reach SES: slots are spaced at "
        "R / (1 + this), so no second at SES's door holds more than R + burst; a request not ready within half of "
        "it takes a new slot", read=_number(0.001))
    rate_refresh_seconds: float = declare(
        300.0, "SES_RATE_REFRESH_SECONDS", "how often auto re-reads GetAccount", read=_number(1))
    batch_size: int = declare(
        500, "SES_BATCH_SIZE", "recipients per page (the unit of bookkeeping), at most MAX_BATCH_SIZE",
        read=_number(MIN_BATCH_SIZE, integer=True), aliases=("AWS_SES_BATCH_SIZE",))
    send_threads: int | None = declare(
        None, "SES_SEND_THREADS", "threads per send task; None: chosen from the task's share of the rate and "
        "SES_LATENCY_SECONDS", read=_number(1, integer=True), shown_default="from the rate")
    ses_latency_seconds: float = declare(
        0.08, "SES_LATENCY_SECONDS", "typical time of one SendEmail call, request to answer: threads per send task "
        "are chosen from it (Little's law)", read=_number(0.001))
    max_send_task_seconds: float = declare(
        300.0, "SEND_TASK_SECONDS", "how much sending one mapped task carries, at the configured rate",
        read=_number(1))
    parallel_send_tasks: int | None = declare(
        None, "SEND_TASK_PARALLELISM", "send tasks of one campaign that run side by side; None: the fewest that hold "
        "the rate, within the campaign's share of SES_POOL_SLOTS", read=_number(1, integer=True),
        shown_default="from the rate")
    ses_pool_slots: int = declare(
        4, "SES_POOL_SLOTS", "slots of the Airflow pool `ses` (send tasks running at once, all campaigns together); "
        "the local stack and docker-compose create the pool from it", read=_number(1, integer=True))
    # the send path's measured CPU per email (benchmarks/send_path_cpu.py); the plan chooses processes from it
    send_cpu_per_email_us: float = declare(
        1500.0, "SEND_CPU_PER_EMAIL_US", "CPU microseconds one email costs a send task's process", read=_number(1))
    limiter_outage_seconds: float = declare(
        120.0, "LIMITER_OUTAGE_SECONDS", "how long a send task waits out an unreachable limiter before failing",
        read=_number(0))
    # account limits reported for a local SES endpoint (moto has none)
    ses_local_max_send_rate: float = declare(
        14.0, "SES_LOCAL_MAX_SEND_RATE", "MaxSendRate assumed for a local SES endpoint", read=_number(0.001))
    ses_local_max_24h_send: float = declare(
        50_000.0, "SES_LOCAL_MAX_24H_SEND", "daily quota assumed for a local SES endpoint", read=_number(1))
    # sender authentication (sending/authentication.py), checked by preflight and ses_doctor
    bulk_sender_threshold: int = declare(
        5_000, "BULK_SENDER_THRESHOLD", "recipients above which a campaign is refused unless DKIM signs for its From "
        "domain and DMARC aligns (the mailbox providers' bulk-sender rules); at or below it only warns",
        read=_number(0, integer=True))
    sender_dns_timeout_seconds: float = declare(
        3.0, "SENDER_DNS_TIMEOUT_SECONDS", "how long one SPF or DMARC lookup may take before the check is not "
        "checkable", read=_number(0.1))
    sns_topic_arns: tuple[str, ...] = declare(
        (), "SNS_TOPIC_ARNS", "allow-list of SNS topic ARNs the webhook accepts", read=_words,
        shown_default="(none: every notification refused)")
    sns_test_cert_pem: str | None = declare(
        None, "SNS_TEST_CERT_PEM", "tests only: a PEM the SNS verifier uses instead of fetching the certificate",
        shown_default="(off)")
    sns_test_confirm_url: str | None = declare(
        None, "SNS_TEST_CONFIRM_URL", "dev stack only: a loopback URL that gets a checked SubscribeURL's query "
        "instead of AWS", read=_loopback_url, shown_default="(off)")
    sns_max_clock_skew_seconds: float = declare(
        300.0, "SNS_MAX_CLOCK_SKEW_SECONDS", "how far in the future an SNS message's Timestamp may lie before the "
        "webhook refuses it", read=_number(0))
    soft_bounce_limit: int = declare(
        3, "SOFT_BOUNCE_LIMIT", "soft bounces within SOFT_BOUNCE_DAYS after which an address is suppressed",
        read=_number(1, integer=True))
    soft_bounce_days: int = declare(
        30, "SOFT_BOUNCE_DAYS", "window of SOFT_BOUNCE_LIMIT", read=_number(1, integer=True))
    events_retention_days: int = declare(
        400, "EVENTS_RETENTION_DAYS", "email_events older than this are pruned once rolled up; 0 keeps them",
        read=_number(0, integer=True))
    timezone: str = declare(
        "UTC", "CAMPAIGN_TIMEZONE", "IANA time zone of the send_campaign form's send time and cron when it names "
        "none", read=_zone)
    schedule_hold_after_hours: float = declare(
        6.0, "SCHEDULE_HOLD_AFTER_HOURS", "a scheduled campaign found later than this is held, not sent",
        read=_number(0.01))
    # reconcile_unknown (campaigns.lifecycle.reconcile): `unknown` ledger rows that no SES event settled.
    unknown_window_hours: float = declare(
        24.0, "UNKNOWN_SENDS_WINDOW_HOURS", "an `unknown` row no SES event settled this long after its claim is "
        "reported by reconcile_unknown and may be released for one more send", read=_number(0.01))
    reconcile_schedule: str = declare(
        "@hourly", "RECONCILE_UNKNOWN_SCHEDULE", "when reconcile_unknown runs: a cron expression or an Airflow "
        "preset")
    # Reputation guard (campaigns.lifecycle.reputation): pause a sending campaign whose rates exceed these.
    reputation_min_sample: int = declare(
        200, "REPUTATION_MIN_SAMPLE", "delivered-or-bounced messages before the rates are judged",
        read=_number(1, integer=True))
    reputation_max_bounce_rate: float = declare(
        0.05, "REPUTATION_MAX_BOUNCE_RATE", "hard bounces / sample, as a fraction (0.05 = 5 %)", read=_number())
    reputation_max_complaint_rate: float = declare(
        0.001, "REPUTATION_MAX_COMPLAINT_RATE", "complaints / sample (0.001 = 0.1 %)", read=_number())
    reputation_check_seconds: float = declare(
        5.0, "REPUTATION_CHECK_SECONDS", "how often a send task counts its campaign's events", read=_number(0.1))
    suppressions_export_dir: str | None = declare(
        None, "SUPPRESSIONS_EXPORT_DIR", "folder of manage_suppressions' CSV exports; None: <AIRFLOW_HOME>/exports",
        shown_default="`<AIRFLOW_HOME>/exports`")
    ses_suppression_sync_schedule: str = declare(
        "@daily", "SES_SUPPRESSION_SYNC_SCHEDULE", "when sync_ses_suppressions runs: a cron expression or preset")
    ses_suppression_push: bool = declare(
        False, "SES_SUPPRESSION_PUSH", "sync_ses_suppressions also adds the product's hard bounces and complaints to "
        "the SES account list", read=_flag)
    # Tracking service (tracking_service): the local-disk spool of opens and clicks, its drainers, proxies in front.
    tracking_spool_dir: str = declare(
        "tracking-spool", "TRACKING_SPOOL_DIR", "the spool folder; relative paths are relative to the working "
        "directory")
    tracking_spool_segment_bytes: int = declare(
        16 * 1024 * 1024, "TRACKING_SPOOL_SEGMENT_BYTES", "size past which a worker starts a new segment",
        read=_number(1, integer=True))
    tracking_spool_fsync_seconds: float = declare(
        1.0, "TRACKING_SPOOL_FSYNC_SECONDS", "how often segments are fdatasync'd; 0: after every event",
        read=_number(0))
    tracking_drainer: bool = declare(
        True, "TRACKING_DRAINER", "a drainer thread in every web worker", read=_flag)
    tracking_trusted_proxy_hops: int = declare(
        0, "TRACKING_TRUSTED_PROXY_HOPS", "reverse proxies that append to X-Forwarded-For",
        read=_number(0, integer=True))
    # Airflow connection ids: fixed names (docs/configuration.md, Connections), not read from the environment.
    aws_conn_id: str = declare("aws_default", None, "SES, STS, SNS and S3 through the Amazon provider")
    db_conn_id: str = declare("campaign_db", None, "the campaign database")
    redis_conn_id: str = declare("redis_default", None, "the Redis of the global SES rate limiter")
    # secret: the URL may hold a password
    redis_url: str | None = declare(
        None, "REDIS_URL", "the original design's Redis setting: configures redis_conn_id unless "
        "AIRFLOW_CONN_REDIS_DEFAULT is set", read=_redis_url, secret=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives (every declared name and alias), validated."""
        env = os.environ if env is None else env
        values = {}
        for name, _default, setting in declarations():
            raw = setting.raw(env)
            if raw is not None:
                values[name] = setting.read(setting.env, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Rules across fields, and the ones a DAG run's conf must keep too."""
        if 0 < self.events_retention_days < self.soft_bounce_days:
            # the soft-bounce rule counts raw bounce events over SOFT_BOUNCE_DAYS: they must still be there
            raise ConfigError(f"EVENTS_RETENTION_DAYS must be 0 (keep) or at least SOFT_BOUNCE_DAYS "
                              f"({self.soft_bounce_days}), got {self.events_retention_days}")
        for name, rate in (("REPUTATION_MAX_BOUNCE_RATE", self.reputation_max_bounce_rate),
                           ("REPUTATION_MAX_COMPLAINT_RATE", self.reputation_max_complaint_rate)):
            if not 0 < rate <= 1:
                raise ConfigError(f"{name} must be a fraction above 0 and at most 1 (0.05 = 5 %), got {rate}")
        if self.parallel_send_tasks is not None and self.parallel_send_tasks > self.ses_pool_slots:
            raise ConfigError(f"SEND_TASK_PARALLELISM must be at most SES_POOL_SLOTS ({self.ses_pool_slots}): the "
                              f"`ses` pool runs no more send tasks at once, got {self.parallel_send_tasks}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"SES_BATCH_SIZE must be at most {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.sns_test_confirm_url is not None:
            _loopback_url("SNS_TEST_CONFIRM_URL", self.sns_test_confirm_url)
        parts = urlsplit(self.tracking_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"TRACKING_BASE_URL must be an absolute http(s) URL, got {self.tracking_base_url!r}")

    def with_overrides(self, **changes) -> Settings:
        """A copy with a DAG run's conf applied on top (conf > env > default)."""
        updated = replace(self, **{k: v for k, v in changes.items() if v is not None})
        updated.validate()
        return updated


def declarations() -> tuple[tuple[str, Any, Setting], ...]:
    """Every setting as (Settings field, default, declaration), in field order."""
    return tuple((f.name, f.default, f.metadata[_SETTING]) for f in fields(Settings))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing the environment."""
    return Settings.from_env()
