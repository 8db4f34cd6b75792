"""The global SES rate limiter against the real test Redis (db 1), and the "auto" rate against a stubbed SES."""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import socket
import threading
import time

import boto3
import pytest
import redis as redis_lib
from botocore.stub import Stubber
from redis.backoff import NoBackoff
from redis.retry import Retry

from campaigns.config import Settings
from campaigns.sending import ratelimit
from campaigns.sending.ratelimit import (
    LimiterUnavailable,
    RateLimiter,
    RateSource,
    RateUnavailable,
    default_thread_count,
    limiter_key,
    penalty_key,
)

KEY = limiter_key("123456789012", "us-east-1")


def _redis_now_us(client: redis_lib.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1_000_000 + micros


def _worst_window_excess(slots_us: list[int], rate: float, burst: int) -> float:
    """The largest (slots in [a, b]) - (rate x (b - a) + burst) over every window bounded by two slots."""
    slots = sorted(slots_us)
    worst = -math.inf
    for i, first in enumerate(slots):
        for j in range(i, len(slots)):
            allowed = rate * (slots[j] - first) / 1_000_000 + burst
            worst = max(worst, (j - i + 1) - allowed)
    return worst


def _reserve_in_child(url: str, key: str, rate: float, burst: int, count: int, go, out, per_call=(1,)) -> None:
    client = redis_lib.Redis.from_url(url)
    limiter = RateLimiter(client, key, rate, burst)
    go.wait(10)
    # No sleeping: reservations run ahead into the future, which contends harder than real senders do.
    slots: list[int] = []
    for call in range(count):
        reservation = limiter.reserve_slot(n := per_call[call % len(per_call)])
        slots.extend(reservation.slot_us + i * reservation.interval_us for i in range(n))
    out.put(slots)
    client.close()


@pytest.mark.parametrize("per_call", [(1,), (1, 3, 2, 5, 1, 4)], ids=["one slot a call", "several slots a call"])
def test_two_processes_sharing_a_key_never_exceed_the_rate(redis_client, per_call):
    rate, burst, count = 200.0, 3, 100
    url = "redis://{host}:{port}/{db}".format(**redis_client.connection_pool.connection_kwargs)
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_reserve_in_child, args=(url, KEY, rate, burst, count, go, out, per_call))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    go.set()
    per_process = [out.get(timeout=20) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0

    slots = [slot for batch in per_process for slot in batch]
    assert len(slots) == 2 * sum(per_call[call % len(per_call)] for call in range(count))
    assert _worst_window_excess(slots, rate, burst) <= 1e-9
    # The two processes really were spaced against each other, not each against itself.
    assert max(slots) - min(slots) >= (len(slots) - burst) / rate * 1_000_000


def test_reservations_are_spaced_by_the_interval_after_the_burst(redis_client):
    limiter = RateLimiter(redis_client, KEY, rate=10, burst=3)

    slots = [limiter.reserve_slot() for _ in range(5)]

    assert [r.wait_us for r in slots[:3]] == [0, 0, 0]
    assert slots[3].slot_us == slots[0].slot_us + 100_000
    assert slots[4].slot_us == slots[0].slot_us + 200_000
    assert all(r.slot_us == r.now_us + r.wait_us for r in slots)
    # The TAT (5 intervals ahead) is kept only while it is in the future, plus a 1 s margin.
    assert 0 < redis_client.pttl(KEY) <= 500 + 1000


def test_several_slots_in_one_round_trip_are_spaced_like_single_ones(redis_client, monkeypatch):
    limiter = RateLimiter(redis_client, KEY, rate=100, burst=1)
    reply_at = 500.0
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: reply_at)

    first = limiter.reserve(3)
    second = limiter.reserve(2)

    assert first[0] == pytest.approx(reply_at, abs=0.001)  # idle limiter: the first slot is now
    assert [b - a for a, b in itertools.pairwise(first)] == pytest.approx([0.01, 0.01])
    assert second == pytest.approx([first[0] + 0.03, first[0] + 0.04], abs=0.001)  # queued right behind


def test_a_reply_read_late_does_not_make_its_slot_late(redis_client, monkeypatch):
    """Slots map from the Redis clock through the least-delayed reply seen: a reply that waited 50 ms in a busy
    process still maps its slot to the instant the Redis clock gave, not 50 ms after."""
    limiter = RateLimiter(redis_client, KEY, rate=10, burst=1)
    local = {"now": 1000.0}
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: local["now"])
    redis_then = _redis_now_us(redis_client)
    [first] = limiter.reserve()  # idle: its slot is now, on a fast reply
    local["now"] = 1000.0 + (_redis_now_us(redis_client) - redis_then) / 1e6 + 0.05  # this reply is read 50 ms late
    [second] = limiter.reserve()

    assert second == pytest.approx(first + 0.1, abs=0.005)  # one interval after the first, not 50 ms more


def test_the_door_rate_leaves_room_for_sends_up_to_the_allowance_late():
    assert ratelimit.door_rate(100, 0.03) == pytest.approx(100 / 1.03)


def test_each_account_and_region_has_its_own_limiter(redis_client):
    other = limiter_key("123456789012", "eu-west-1")
    RateLimiter(redis_client, KEY, rate=1).reserve_slot()

    assert RateLimiter(redis_client, KEY, rate=1).reserve_slot().wait > 0.5
    assert RateLimiter(redis_client, other, rate=1).reserve_slot().wait == 0.0
    assert other != KEY


def test_slots_come_from_the_redis_clock_not_the_workers_clock(redis_client, monkeypatch):
    limiter = RateLimiter(redis_client, KEY, rate=1)
    real_time, real_monotonic = time.time, time.monotonic
    before = _redis_now_us(redis_client)

    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() - 1800)
    first = limiter.reserve_slot()
    monkeypatch.setattr(time, "time", lambda: real_time() - 7200)
    second = limiter.reserve_slot()
    monkeypatch.undo()
    after = _redis_now_us(redis_client)

    assert before <= first.now_us <= second.now_us <= after
    assert first.slot_us == first.now_us
    assert first.wait_us == 0
    assert second.slot_us == first.slot_us + 1_000_000
    assert second.slot_us == second.now_us + second.wait_us
    assert int(redis_client.get(KEY)) == second.slot_us + 1_000_000


def test_acquire_sleeps_exactly_the_reserved_wait(redis_client, monkeypatch):
    limiter = RateLimiter(redis_client, KEY, rate=2)
    slept: list[float] = []
    monkeypatch.setattr(ratelimit.time, "sleep", slept.append)

    assert limiter.acquire() == 0.0
    waited = limiter.acquire()

    assert slept == [waited]
    assert 0.4 < waited <= 0.5


def test_acquire_returns_early_when_stopped_and_the_slot_stays_spent(redis_client):
    limiter = RateLimiter(redis_client, KEY, rate=2)
    first = limiter.reserve_slot()
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    timer.start()

    waited = limiter.acquire(stop)
    timer.join()

    assert stop.is_set()
    assert waited < 0.4
    # The abandoned slot (first + 0.5 s) is not handed out again.
    assert limiter.reserve_slot().slot_us == first.slot_us + 1_000_000


def test_acquire_with_stop_already_set_reserves_nothing(redis_client):
    limiter = RateLimiter(redis_client, KEY, rate=2)
    stop = threading.Event()
    stop.set()

    assert limiter.acquire(stop) == 0.0
    assert redis_client.exists(KEY) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_raises_limiter_unavailable_and_nothing_is_sent(monkeypatch):
    port = _closed_port()
    # No client-side retries: redis-py's default backoff would only make this test slow.
    down = redis_lib.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    limiter = RateLimiter(down, KEY, rate=10)
    slept: list[float] = []
    monkeypatch.setattr(ratelimit.time, "sleep", slept.append)

    with pytest.raises(LimiterUnavailable, match=r"rate limiter unavailable.*fail closed") as info:
        limiter.acquire()

    assert f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value, ConnectionError)  # retryable: the task retries
    assert isinstance(info.value.__cause__, redis_lib.ConnectionError)
    assert slept == []
    with pytest.raises(LimiterUnavailable):
        limiter.reserve_slot()
    with pytest.raises(LimiterUnavailable, match="throttle penalty"):
        limiter.throttled()
    down.close()


def test_redis_error_raises_limiter_unavailable(redis_client):
    redis_client.hset(KEY, "not", "a tat")

    with pytest.raises(LimiterUnavailable, match="ResponseError") as info:
        RateLimiter(redis_client, KEY, rate=10).reserve_slot()

    assert isinstance(info.value.__cause__, redis_lib.ResponseError)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": "14"}, "rate"),
        ({"rate": 10, "burst": 0}, "burst"),
        ({"rate": 10, "burst": 1.5}, "burst"),
        ({"rate": 10, "key": ""}, "key"),
        ({"rate": 10, "key": "  "}, "key"),
    ],
)
def test_bad_limiter_arguments_raise_value_error_naming_them(redis_client, kwargs, argument):
    kwargs.setdefault("key", KEY)
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        RateLimiter(redis_client, **kwargs)


@pytest.mark.parametrize("count", [0, -2, 1.5, True])
def test_a_bad_slot_count_raises_value_error_naming_it(redis_client, count):
    with pytest.raises(ValueError, match=r"^count must"):
        RateLimiter(redis_client, KEY, rate=10).reserve(count)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"factor": 0}, "factor"),
        ({"factor": 1.5}, "factor"),
        ({"factor": math.nan}, "factor"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": math.inf}, "seconds"),
    ],
)
def test_bad_throttle_arguments_raise_value_error_naming_them(redis_client, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        RateLimiter(redis_client, KEY, rate=10).throttled(**kwargs)
    assert redis_client.exists(penalty_key(KEY)) == 0


@pytest.mark.parametrize(("account", "region", "argument"), [("", "us-east-1", "account"), ("1", "", "region"),
                                                             ("{1}", "us-east-1", "account")])
def test_bad_limiter_key_parts_raise_value_error_naming_them(account, region, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        limiter_key(account, region)


def test_throttled_lowers_the_rate_of_other_instances_until_the_penalty_expires(redis_client):
    throttled_worker = RateLimiter(redis_client, KEY, rate=10)
    other_worker = RateLimiter(redis_client, KEY, rate=10)

    assert throttled_worker.throttled(factor=0.5, seconds=0.3) == 0.5
    assert 0 < redis_client.pttl(penalty_key(KEY)) <= 300
    penalised = [other_worker.reserve_slot() for _ in range(3)]

    assert [(r.factor, r.rate) for r in penalised] == [(0.5, 5.0)] * 3
    assert penalised[1].slot_us - penalised[0].slot_us == 200_000
    assert penalised[2].slot_us - penalised[1].slot_us == 200_000

    time.sleep(0.35)  # the penalty's own expiry, nothing else, restores the rate
    recovered = [other_worker.reserve_slot() for _ in range(2)]

    assert redis_client.exists(penalty_key(KEY)) == 0
    assert [(r.factor, r.rate) for r in recovered] == [(1.0, 10.0)] * 2
    assert recovered[1].slot_us - recovered[0].slot_us == 100_000


def test_repeated_throttles_keep_the_lowest_factor_and_longest_time(redis_client):
    limiter = RateLimiter(redis_client, KEY, rate=10)

    assert limiter.throttled(factor=0.5, seconds=30) == 0.5
    assert limiter.throttled(factor=0.8, seconds=5) == 0.5
    assert redis_client.pttl(penalty_key(KEY)) > 25_000
    assert limiter.throttled(factor=0.25, seconds=1) == 0.25
    assert limiter.reserve_slot().rate == 2.5


@pytest.fixture
def stubbed_ses():
    """A real boto3 sesv2 client whose calls are answered by botocore's Stubber; counts GetAccount calls."""
    client = boto3.client("sesv2", region_name="us-east-1")
    calls: list[str] = []
    client.meta.events.register("before-parameter-build.sesv2.GetAccount", lambda **_: calls.append("GetAccount"))
    with Stubber(client) as stubber:
        yield client, stubber, calls
        stubber.assert_no_pending_responses()


def _quota(max_send_rate: float) -> dict:
    return {"SendQuota": {"Max24HourSend": 50_000.0, "MaxSendRate": max_send_rate, "SentLast24Hours": 0.0}}


def test_fixed_rate_source_defaults_to_14_per_second():
    assert RateSource().rate() == 14.0
    assert RateSource(100).rate() == 100.0
    assert not RateSource().auto


def test_auto_rate_is_max_send_rate_times_the_safety_factor(stubbed_ses):
    client, stubber, calls = stubbed_ses
    stubber.add_response("get_account", _quota(20.0))
    source = RateSource("auto", ses_client=lambda: client)

    assert source.rate() == pytest.approx(18.0)
    assert source.rate() == pytest.approx(18.0)
    assert calls == ["GetAccount"]  # cached


def test_auto_rate_is_re_read_and_keeps_the_last_good_value_on_failure(stubbed_ses, caplog):
    client, stubber, calls = stubbed_ses
    now = [1000.0]
    source = RateSource("auto", ses_client=client, safety_factor=0.5, refresh_seconds=60, clock=lambda: now[0])
    stubber.add_response("get_account", _quota(20.0))
    stubber.add_response("get_account", _quota(50.0))
    stubber.add_client_error("get_account", "TooManyRequestsException", "Maximum sending rate exceeded.", 429)

    assert source.rate() == 10.0
    now[0] += 59
    assert source.rate() == 10.0
    now[0] += 2
    assert source.rate() == 25.0
    now[0] += 61
    with caplog.at_level(logging.WARNING, logger="campaigns.sending.ratelimit"):
        assert source.rate() == 25.0
    assert "keeping the last good rate" in caplog.text
    now[0] += 30
    assert source.rate() == 25.0  # a failed refresh is retried next period, not on every send
    assert len(calls) == 3


def test_auto_rate_without_any_good_read_raises_a_clear_error(stubbed_ses):
    client, stubber, _ = stubbed_ses
    stubber.add_client_error("get_account", "AccessDeniedException", "not authorized", 403)
    stubber.add_response("get_account", _quota(-1.0))
    source = RateSource("auto", ses_client=client)

    with pytest.raises(RateUnavailable, match=r"GetAccount.*AccessDeniedException.*SES_SENDING_RATE"):
        source.rate()
    with pytest.raises(RateUnavailable, match=r"MaxSendRate is -1\.0") as info:
        source.rate()
    assert isinstance(info.value, LimiterUnavailable)


def test_rate_source_from_settings(stubbed_ses):
    client, stubber, _ = stubbed_ses
    stubber.add_response("get_account", _quota(10.0))

    assert RateSource.from_settings(Settings(sending_rate=7.0)).rate() == 7.0
    auto = RateSource.from_settings(Settings(sending_rate=None, rate_safety_factor=0.8), ses_client=client)
    assert auto.auto
    assert auto.rate() == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"rate": "fast"}, "rate"),
        ({"rate": 0}, "rate"),
        ({"rate": "auto"}, "ses_client"),
        ({"safety_factor": 0}, "safety_factor"),
        ({"safety_factor": 1.2}, "safety_factor"),
        ({"refresh_seconds": -5}, "refresh_seconds"),
    ],
)
def test_bad_rate_source_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}"):
        RateSource(**kwargs)


def test_default_thread_count_reaches_the_rate_within_the_cap():
    assert default_thread_count(14) == 2  # ceil(14 x 0.08 x 1.25) = ceil(1.4)
    assert default_thread_count(100) == 10
    assert default_thread_count(1000) == 32
    assert default_thread_count(1000, cap=64) == 64
    assert default_thread_count(0.5) == 1
    assert default_thread_count(14, typical_latency=0) == 1
    with pytest.raises(ValueError, match=r"^typical_latency"):
        default_thread_count(14, typical_latency=-1)
    with pytest.raises(ValueError, match=r"^cap"):
        default_thread_count(14, cap=0)
    with pytest.raises(ValueError, match=r"^rate"):
        default_thread_count(0)


def test_slots_are_reserved_one_at_a_time_until_the_rate_packs_several_into_a_few_milliseconds():
    assert ratelimit.slot_batch(100, threads=4) == 1  # 10 ms apart: one round trip per slot, as ever
    assert ratelimit.slot_batch(400, threads=24) == 2
    assert ratelimit.slot_batch(1000, threads=24) == 5
    assert ratelimit.slot_batch(100_000, threads=4) == 4  # never more than the task's threads take at once
