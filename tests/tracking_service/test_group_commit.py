"""GroupCommitWriter: request threads share Redis round trips, and each still gets its own entry id or error."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib

from tracking_service import events_buffer
from tracking_service.events_buffer import GroupCommitWriter


class CountingRedis(redis_lib.Redis):
    """A real client that counts round trips; its first XADD waits until `hold_until_queued` callers are queued."""

    def __init__(self, *args, writer_ref: list, hold_until_queued: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips = 0
        self._writer_ref = writer_ref
        self._hold = hold_until_queued

    def _wait_for_followers(self) -> None:
        if self._hold:
            hold, self._hold = self._hold, 0
            deadline = time.monotonic() + 10
            while len(self._writer_ref[0]._queue) < hold and time.monotonic() < deadline:
                time.sleep(0.001)

    def xadd(self, *args, **kwargs):
        self._wait_for_followers()
        self.round_trips += 1
        return super().xadd(*args, **kwargs)

    def pipeline(self, *args, **kwargs):
        self.round_trips += 1
        return super().pipeline(*args, **kwargs)


def _writer(redis_client, hold_until_queued: int = 0) -> tuple[GroupCommitWriter, CountingRedis]:
    ref: list = []
    client = CountingRedis(connection_pool=redis_client.connection_pool, writer_ref=ref,
                           hold_until_queued=hold_until_queued)
    writer = GroupCommitWriter(client)
    ref.append(writer)
    return writer, client


def test_every_caller_gets_its_own_entry_and_round_trips_are_shared(redis_client):
    callers = 12
    writer, client = _writer(redis_client, hold_until_queued=callers - 1)

    def add(n: int) -> tuple[int, str]:
        entry_id = writer.xadd(events_buffer.STREAM, {"e": json.dumps(n)})
        return n, entry_id.decode()

    with ThreadPoolExecutor(callers) as pool:
        results = list(pool.map(add, range(callers)))

    stored = {entry_id.decode(): int(json.loads(fields[b"e"]))
              for entry_id, fields in redis_client.xrange(events_buffer.STREAM)}
    assert len(stored) == callers
    assert all(stored[entry_id] == n for n, entry_id in results)  # each caller got the id of its own entry
    # the first caller wrote alone; the other eleven were queued behind it and went out in one pipeline
    assert client.round_trips == 2


def test_many_threads_lose_nothing(redis_client):
    writer, _ = _writer(redis_client)
    threads, per_thread = 16, 50

    def work(t: int) -> list[str]:
        return [writer.xadd(events_buffer.STREAM, {"e": f"{t}:{i}"}).decode() for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        ids = [entry_id for chunk in pool.map(work, range(threads)) for entry_id in chunk]
    assert len(set(ids)) == threads * per_thread
    payloads = sorted(fields[b"e"].decode() for _, fields in redis_client.xrange(events_buffer.STREAM))
    assert payloads == sorted(f"{t}:{i}" for t in range(threads) for i in range(per_thread))


def test_an_entry_redis_refuses_fails_only_its_own_caller(redis_client):
    redis_client.set("not-a-stream", "x")
    writer, _ = _writer(redis_client, hold_until_queued=2)
    barrier = threading.Barrier(3)

    def add(name: str):
        barrier.wait()
        try:
            return writer.xadd(name, {"e": "1"})
        except redis_lib.ResponseError as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(add, [events_buffer.STREAM, "not-a-stream", events_buffer.STREAM]))
    assert isinstance(results[1], redis_lib.ResponseError)
    assert "WRONGTYPE" in str(results[1])
    assert all(isinstance(r, bytes) for r in (results[0], results[2]))
    assert redis_client.xlen(events_buffer.STREAM) == 2


def test_redis_down_raises_for_every_waiting_caller_and_the_writer_recovers(redis_client):
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    writer = GroupCommitWriter(dead)

    def add(_: int):
        with pytest.raises(redis_lib.ConnectionError):
            writer.xadd(events_buffer.STREAM, {"e": "1"})
        return True

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(add, range(6)))
    # nobody is left leading a group: the next caller leads its own and gets the same clear error
    with pytest.raises(redis_lib.ConnectionError):
        writer.xadd(events_buffer.STREAM, {"e": "1"})
