"""Finished items reach the producer's ack loop over the namespace's pub/sub channel, on a real
redis-server: an item is acked without waiting for the next poll, ticks stay ``ack_interval``
apart however many round trips announce, and the listener comes back after a restart."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

import workshaper
from workshaper.ackloop import RING_TICK_GAP, AckLoop
from workshaper_tools.testing import RedisServer

from .conftest import wait_for

#: Long enough that an ack arriving before it was not found by the poll: the loop offers a
#: partition at the first enqueue (nothing finished yet), then not again for this long.
POLL_NEVER = 60.0


@pytest.fixture
def private_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """A redis-server of this test alone (it is restarted; its append-only file keeps the
    data across the SIGKILL)."""
    with RedisServer(appendonly=True) as server:
        yield server


def _worker(url: str, namespace: str, done: list[int]) -> workshaper.Worker:
    return workshaper.Worker(url, namespace, work=lambda m, p, o: done.append(o), lease=5.0)


def test_a_finished_item_is_acked_without_waiting_for_the_poll(
    redis_server: RedisServer, namespace: str
) -> None:
    acks: list[tuple[int, int]] = []
    done: list[int] = []
    with workshaper.Producer(
        redis_server.url, namespace, ack=lambda p, o: acks.append((p, o)), ack_interval=POLL_NEVER
    ) as producer:
        worker = _worker(redis_server.url, namespace, done).start()
        try:
            producer.enqueue("k", "m", 3, 0)
            wait_for(lambda: acks == [(3, 0)], timeout=40)
            producer.enqueue("k", "m", 3, 1)  # the partition was caught up: offered, and heard
            producer.enqueue("other", "m", 4, 0)
            wait_for(lambda: sorted(acks) == [(3, 0), (3, 1), (4, 0)], timeout=40)
        finally:
            assert worker.stop(timeout=30)
    assert sorted(done) == [0, 0, 1]


def test_ticks_stay_ack_interval_apart_however_many_round_trips_announce(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.2
    starts: list[float] = []
    lock = threading.Lock()
    tick = AckLoop._tick

    def counted(self: AckLoop, partitions: list[int]) -> None:
        with lock:
            starts.append(time.monotonic())
        tick(self, partitions)

    monkeypatch.setattr(AckLoop, "_tick", counted)
    items = [(f"k{i % 50}", "m", 0, i) for i in range(3000)]
    with workshaper.Producer(redis_server.url, namespace, ack_interval=interval) as producer:
        worker = workshaper.Worker(
            redis_server.url, namespace, work=lambda m, p, o: None, batch_size=1
        ).start()
        try:
            for start in range(0, len(items), 100):  # many round trips, each announcing
                producer.enqueue_many(items[start : start + 100])
            assert producer.flush(timeout=120)
        finally:
            assert worker.stop(timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) >= 2
    # Rings end the pause after RING_TICK_GAP, never sooner (the clock read before and inside
    # the tick may differ by the call itself, hence the 1 ms); unpaced, the announcements of
    # the worker's round trips would make ticks a round trip apart.
    assert min(gaps) >= RING_TICK_GAP - 0.001, gaps
    assert len(starts) < 3000 / 2  # far fewer ticks than round trips


def test_the_listener_comes_back_after_a_restart(
    private_server: RedisServer, namespace: str
) -> None:
    acks: list[tuple[int, int]] = []
    done: list[int] = []
    url = private_server.url
    with workshaper.Producer(
        url, namespace, ack=lambda p, o: acks.append((p, o)), ack_interval=POLL_NEVER
    ) as producer:
        worker = _worker(url, namespace, done).start()
        try:
            producer.enqueue("k", "m", 0, 0)
            wait_for(lambda: acks == [(0, 0)], timeout=40)
            private_server.restart()  # a SIGKILL: the subscriber's connection breaks
            # Enqueue retries while Redis comes back; the listener resubscribes meanwhile.
            wait_for(lambda: _enqueued(producer, 0, 1), timeout=60)
            wait_for(lambda: acks == [(0, 0), (0, 1)], timeout=40)
        finally:
            worker.stop(timeout=30)


def _enqueued(producer: workshaper.Producer, partition: int, offset: int) -> bool:
    try:
        producer.enqueue("k", "m", partition, offset)
    except workshaper.BackendUnavailable:
        return False
    return True
