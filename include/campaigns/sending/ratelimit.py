"""The global SES send-rate limiter: GCRA in one Redis Lua script (lua/gcra.lua), Redis TIME as the only clock.

Every send, in every thread of every worker, reserves the next slot of its SES account+region from Redis and
sleeps exactly until it (`RateLimiter.acquire`); no polling, no local clocks. When SES still answers
TooManyRequests, `RateLimiter.throttled` lowers the rate for every worker for a while, then it recovers.

How the Airflow pool, the threads and the rate relate:

- R, the rate (sends/s, from `RateSource`): the cap for the whole SES account+region. The limiter enforces it
  whatever runs, so nothing below can push the send rate above R.
- P, the slots of the Airflow pool `ses`: how many send tasks run at once across all campaigns and workers.
- T, the threads of one send task (`default_thread_count`): an SES call takes about L seconds, so one thread
  sends at most 1/L per second; T = ceil(R x L x 1.25) lets a single task reach R on its own (one campaign).

With several tasks running, their P x T threads share R: each thread waits longer for its slot, none sends
more. Each waiting thread holds one reserved slot, so at most P x T slots are queued: the longest wait is about
P x T / R seconds, and a cancel forfeits at most that many slots (the rate undershoots, never overshoots).
Raising P or T only helps while P x T < R x L; past that it adds waiting threads, not sends.

Errors (defined in campaigns.errors; retryable ones are ConnectionErrors, so the task's retry policy handles them):

    ConnectionError
    └── LimiterUnavailable    Redis unreachable or erroring: no slot handed out, nothing may be sent
        └── RateUnavailable   the "auto" rate was never read from SES GetAccount
    ValueError                a bad argument; the message names it
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from botocore.exceptions import BotoCoreError, ClientError

from campaigns.config import Settings
from campaigns.errors import LimiterUnavailable, RateUnavailable

if TYPE_CHECKING:
    from redis.commands.core import Script

log = logging.getLogger(__name__)

_DECLARED = Settings()  # the declared defaults (SES_SENDING_RATE, SES_RATE_*), nothing read from the environment
MAX_RATE = 1_000_000.0  # one slot per microsecond, the script's resolution
MIN_PENALTY_FACTOR = 0.01  # a throttle may slow sending down, never stop it for good
SCRIPT_PATH = Path(__file__).with_name("lua") / "gcra.lua"
_US = 1_000_000


def limiter_key(account: str, region: str) -> str:
    """The Redis key of the limiter for one SES account+region; the only place the key is built."""
    for name, value in (("account", account), ("region", region)):
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "{} "):
            raise ValueError(f"{name} must be a non-empty string without braces or spaces, got {value!r}")
    # The {account:region} hash tag keeps the TAT key and its penalty key in one Redis Cluster slot, which a
    # script touching both needs.
    return f"ses:rate:{{{account}:{region}}}"


def penalty_key(key: str) -> str:
    """The Redis key holding the throttle penalty for the limiter `key`."""
    return f"{key}:penalty"


@functools.cache
def _script_source() -> str:
    return SCRIPT_PATH.read_text(encoding="utf-8")


# One registered Script per client: Script caches the SHA and reloads the source by itself after a
# SCRIPT FLUSH or a failover, so the .lua file is read once per process and sent to Redis once per server.
_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()
_scripts_lock = threading.Lock()


def _gcra_script(client: redis.Redis) -> Script:
    with _scripts_lock:
        script = _scripts.get(client)
        if script is None:
            script = _scripts[client] = client.register_script(_script_source())
        return script


def _where(client: redis.Redis) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_rate(rate: object, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be a finite number of sends per second above 0, got {rate!r}")
    if rate > MAX_RATE:
        raise ValueError(f"{name} must be at most {MAX_RATE:.0f} sends per second, got {rate!r}")
    return float(rate)


def check_positive(value: object, name: str) -> float:
    """`value` as a float when it is a finite number above 0; otherwise ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
    return float(value)


def check_whole(value: object, name: str, minimum: int = 1) -> int:
    """`value` when it is a whole number of at least `minimum`; otherwise ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Reservation:
    """One reserved send slot, exactly as the script handed it out (microseconds on the Redis clock)."""

    slot_us: int  # when the caller may send
    wait_us: int  # slot_us - now_us
    now_us: int  # Redis TIME when the slot was reserved
    interval_us: int  # spacing this reservation used, throttle penalty included
    factor: float  # the throttle penalty in force (1.0: none)

    @property
    def slot(self) -> float:
        """The slot as Unix seconds on the Redis clock."""
        return self.slot_us / _US

    @property
    def wait(self) -> float:
        """Seconds to sleep before sending (0.0 when the slot is now)."""
        return self.wait_us / _US

    @property
    def now(self) -> float:
        """Redis TIME at the reservation, Unix seconds."""
        return self.now_us / _US

    @property
    def rate(self) -> float:
        """The effective rate (sends/s) this reservation was spaced at."""
        return _US / self.interval_us


CLOCK_DRIFT = 0.001  # s/s: how fast the Redis-to-local clock mapping may drift (NTP slews at most 0.0005 s/s)


class RedisClock:
    """Maps Redis TIME to this process's time.monotonic(): the least-delayed reply seen, drifting later slowly.

    A reply that sat in a busy process before it was read would put every slot it maps late by that delay, and a
    send late by a few milliseconds bunches with another worker's on-time one at SES's door. The offset taken is
    the smallest (arrival - Redis TIME) seen, allowed to grow by CLOCK_DRIFT per second so it follows the clocks;
    it only ever errs late by the fastest reply's latency, so a slot is never used early.
    """

    def __init__(self) -> None:
        self._offset: float | None = None
        self._seen_at = 0.0

    def to_local(self, redis_us: int, reply_redis_us: int, arrived: float) -> float:
        """The local instant of `redis_us`, given a reply stamped `reply_redis_us` that arrived at `arrived`."""
        sample = arrived - reply_redis_us / _US
        if self._offset is None or sample < self._offset + CLOCK_DRIFT * (arrived - self._seen_at):
            self._offset = sample
        else:
            self._offset += CLOCK_DRIFT * (arrived - self._seen_at)
        self._seen_at = arrived
        return redis_us / _US + self._offset


class RateLimiter:
    """A global GCRA limiter on one Redis key, shared by every thread and process that uses the same key.

    Give `client` socket timeouts and few retries: without timeouts a hung Redis blocks a send forever instead of
    failing closed, and redis-py's default retries with backoff delay the failure by several seconds.
    """

    def __init__(self, client: redis.Redis, key: str, rate: float, burst: int = 1) -> None:
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"key must be a non-empty string (see limiter_key), got {key!r}")
        check_whole(burst, "burst")
        self.key = key
        self.penalty_key = penalty_key(key)
        self.burst = burst
        self.rate = rate
        self._client = client
        self._script = _gcra_script(client)
        self._clock = RedisClock()
        self._clock_lock = threading.Lock()

    @property
    def rate(self) -> float:
        """The full rate in sends per second (before any throttle penalty)."""
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self._rate = _check_rate(rate)
        # Rounded up: rounding may only make the limiter slower than `rate`, never faster.
        self._interval_us = max(1, math.ceil(_US / self._rate))

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.key!r}, rate={self._rate}, burst={self.burst})"

    def _run(self, args: tuple[object, ...], action: str) -> list:
        try:
            return self._script(keys=[self.key, self.penalty_key], args=args)
        except redis.RedisError as exc:
            raise LimiterUnavailable(
                f"SES rate limiter unavailable: could not {action} for {self.key!r} on Redis "
                f"{_where(self._client)} ({type(exc).__name__}: {exc}); no slot was handed out and nothing may "
                "be sent until Redis answers again (fail closed), retry the task"
            ) from exc

    def reserve_slot(self, count: int = 1) -> Reservation:
        """Reserve the next send slot (and `count` - 1 more right behind it) and return it as Redis handed it out."""
        check_whole(count, "count")
        slot, wait, now, interval, factor = self._run(("reserve", self._interval_us, self.burst, count),
                                                      "reserve a slot")
        return Reservation(int(slot), int(wait), int(now), int(interval), float(_text(factor)))

    def reserve(self, count: int = 1) -> list[float]:
        """Reserve `count` consecutive slots in one round trip: their time.monotonic() instants, in order (mapped
        through RedisClock, so a reply read late does not make its slots late)."""
        reservation = self.reserve_slot(count)
        arrived = time.monotonic()
        with self._clock_lock:
            first = self._clock.to_local(reservation.slot_us, reservation.now_us, arrived)
        step = reservation.interval_us / _US
        return [first + i * step for i in range(count)]

    def acquire(self, stop: threading.Event | None = None) -> float:
        """Block until this caller's slot and return the seconds waited; return early once `stop` is set.

        After an early return the caller must not send (check `stop.is_set()`). The slot reserved before `stop`
        was set stays spent: later reservations are already queued behind it, so it cannot be handed back. The
        global rate dips by one slot per stopped thread; it never exceeds the limit. If `stop` is set on entry,
        nothing is reserved.
        """
        if stop is not None and stop.is_set():
            return 0.0
        wait = self.reserve_slot().wait
        if wait <= 0:
            return 0.0
        # The wait is counted from Redis' clock at the reservation and slept from the reply's arrival, so the
        # network round trip can only make a send late, never early.
        if stop is None:
            time.sleep(wait)
            return wait
        started = time.monotonic()
        if stop.wait(wait):
            return time.monotonic() - started
        return wait

    def throttled(self, factor: float = 0.5, seconds: float = 30.0) -> float:
        """Scale every worker's rate on this key by `factor` for `seconds` (SES said TooManyRequests).

        Calls while a penalty is in force keep the lowest factor and the longest remaining time; they do not
        compound, since every worker sees the same burst of errors. Returns the factor now in force.
        """
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not math.isfinite(factor)
            or not MIN_PENALTY_FACTOR <= factor <= 1
        ):
            raise ValueError(f"factor must be a number from {MIN_PENALTY_FACTOR} to 1, got {factor!r}")
        seconds = check_positive(seconds, "seconds")
        ttl_ms = max(1, math.ceil(seconds * 1000))
        text, ttl_ms = self._run(("throttle", repr(float(factor)), ttl_ms), "record a throttle penalty")
        in_force = float(_text(text))
        log.warning(
            "SES throttled sending on %s: rate x%s (%.3f/s) for %.1f s",
            self.key, in_force, self._rate * in_force, int(ttl_ms) / 1000,
        )
        return in_force


class RateSource:
    """The send rate to use: a fixed number, or "auto" (SES GetAccount MaxSendRate x a safety factor)."""

    def __init__(
        self,
        rate: float | str = _DECLARED.sending_rate,
        *,
        ses_client: Any = None,
        safety_factor: float = _DECLARED.rate_safety_factor,
        refresh_seconds: float = _DECLARED.rate_refresh_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ses_client` is a boto3 sesv2 client or a zero-argument factory of one (needed only for "auto")."""
        if isinstance(rate, str):
            if rate.strip().lower() != "auto":
                raise ValueError(f"rate must be a number of sends per second or 'auto', got {rate!r}")
            if ses_client is None:
                raise ValueError("ses_client (a boto3 sesv2 client or a factory of one) is required for rate 'auto'")
            self._fixed: float | None = None
        else:
            self._fixed = _check_rate(rate)
        if (
            isinstance(safety_factor, bool)
            or not isinstance(safety_factor, int | float)
            or not math.isfinite(safety_factor)
            or not 0 < safety_factor <= 1
        ):
            raise ValueError(f"safety_factor must be above 0 and at most 1, got {safety_factor!r}")
        self.safety_factor = float(safety_factor)
        self.refresh_seconds = check_positive(refresh_seconds, "refresh_seconds")
        # boto3 clients are not callable, so a callable is the factory (created on first use, not at import).
        self._factory: Callable[[], Any] | None = ses_client if callable(ses_client) else None
        self._client = None if callable(ses_client) else ses_client
        self._clock = clock
        self._value: float | None = None
        self._next_refresh = -math.inf
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, ses_client: Any = None) -> RateSource:
        """The rate source `SES_SENDING_RATE` and friends ask for (a number, or auto)."""
        return cls(
            "auto" if settings.sending_rate is None else settings.sending_rate,
            ses_client=ses_client,
            safety_factor=settings.rate_safety_factor,
            refresh_seconds=settings.rate_refresh_seconds,
        )

    @property
    def auto(self) -> bool:
        """True when the rate comes from SES GetAccount."""
        return self._fixed is None

    def __repr__(self) -> str:
        if self._fixed is not None:
            return f"RateSource({self._fixed})"
        return f"RateSource('auto', safety_factor={self.safety_factor}, refresh_seconds={self.refresh_seconds})"

    def rate(self) -> float:
        """The rate in sends per second: fixed, or SES's MaxSendRate x safety factor re-read every refresh."""
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            now = self._clock()
            if self._value is not None and now < self._next_refresh:
                return self._value
            try:
                self._value = self._max_send_rate() * self.safety_factor
            except (BotoCoreError, ClientError, KeyError, TypeError, ValueError) as exc:
                if self._value is None:
                    raise RateUnavailable(
                        f"SES sending rate 'auto': GetAccount gave no usable SendQuota.MaxSendRate "
                        f"({type(exc).__name__}: {exc}); set SES_SENDING_RATE to a number or fix SES access"
                    ) from exc
                # A stale rate is still SES's own limit for this account; far safer than stopping every send.
                log.warning("SES GetAccount failed (%s); keeping the last good rate %.3f/s", exc, self._value)
            # Also after a failure, so a broken GetAccount is retried once per period, not once per send.
            self._next_refresh = now + self.refresh_seconds
            return self._value

    def _max_send_rate(self) -> float:
        if self._client is None and self._factory is not None:
            self._client = self._factory()
        quota = self._client.get_account()["SendQuota"]
        max_rate = float(quota["MaxSendRate"])
        if not math.isfinite(max_rate) or max_rate <= 0:
            raise ValueError(f"SendQuota.MaxSendRate is {max_rate!r}, not a usable rate")
        return max_rate


def door_rate(rate: float, allowance: float) -> float:
    """The rate the limiter spaces slots at so that sends leaving up to `allowance` seconds after their slots
    still put no more than rate + burst into any second at SES's door: in a window of 1 + allowance seconds of
    slots there are rate x (1 + allowance) / (1 + allowance) = rate."""
    return rate / (1 + allowance)


SLOT_BATCH_SECONDS = 0.005  # a send task reserves at most this much of the rate's slots in one Redis round trip


def slot_batch(rate: float, threads: int) -> int:
    """Slots a send task reserves per round trip: 1 until the rate packs several into SLOT_BATCH_SECONDS, and never
    more than its threads can take at once (reserved slots are used within milliseconds, or dropped)."""
    return max(1, min(threads, math.floor(rate * SLOT_BATCH_SECONDS)))


def default_thread_count(rate: float, typical_latency: float = 0.08, cap: int = 32) -> int:
    """Threads one send task needs to reach `rate` when an SES call takes `typical_latency` seconds."""
    rate = _check_rate(rate)
    if (
        isinstance(typical_latency, bool)
        or not isinstance(typical_latency, int | float)
        or not math.isfinite(typical_latency)
        or typical_latency < 0
    ):
        raise ValueError(f"typical_latency must be a finite number of seconds of at least 0, got {typical_latency!r}")
    check_whole(cap, "cap")
    # 25% headroom: latency varies, and a thread also spends time reserving its slot.
    return max(1, min(cap, math.ceil(rate * typical_latency * 1.25)))
