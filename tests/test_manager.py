"""The Manager: on the embedded runner (redis=None, the default) and on a Redis. Its statuses,
backpressure, retries, dead letters, blocks, acks and errors must be the fleet's."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import workshaper
from workshaper import Enqueued, InvalidInput, QueueFull, current_job
from workshaper_tools.testing import RedisServer


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Acks:
    """What ``ack`` was called with, per partition, in order."""

    def __init__(self) -> None:
        self.calls: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def __call__(self, partition: int, offset: int) -> None:
        with self._lock:
            self.calls.setdefault(partition, []).append(offset)

    def last(self, partition: int) -> int:
        with self._lock:
            return self.calls.get(partition, [-1])[-1]


def test_re_enqueued_offsets_get_the_scripts_status() -> None:
    gate = threading.Event()
    acks = Acks()

    def work(message: object, partition: int, offset: int) -> None:
        if offset == 2:
            gate.wait(30)

    with workshaper.Manager(work=work, ack=acks, max_in_queue=10) as manager:
        assert manager.enqueue("a", "m", 0, 1) is Enqueued.ACCEPTED
        assert manager.enqueue("b", "m", 0, 2) is Enqueued.ACCEPTED
        _wait_for(lambda: acks.last(0) == 1)
        assert manager.enqueue("a", "m", 0, 1) is Enqueued.ALREADY_ACKED
        assert manager.enqueue("b", "m", 0, 2) is Enqueued.DUPLICATE  # still running
        assert manager.enqueue("c", "m", 0, 0) is Enqueued.ALREADY_ACKED  # below the watermark
        assert manager.enqueue("c", "m", 1, 0) is Enqueued.ACCEPTED  # another partition
        gate.set()
        assert manager.flush(timeout=30)
        assert manager.total_enqueued == manager.total_acked == 3
    assert acks.calls == {0: [1, 2], 1: [0]}


def test_a_full_partition_blocks_then_times_out_with_queue_full() -> None:
    gate = threading.Event()
    most_unacked = 0
    acks = Acks()

    with workshaper.Manager(work=lambda m, p, o: gate.wait(30), ack=acks, max_in_queue=3) as m:
        for offset in range(3):
            assert m.enqueue("k", "m", 0, offset) is Enqueued.ACCEPTED
        with pytest.raises(QueueFull, match="partition 0 stayed full"):
            m.enqueue("k", "m", 0, 3, timeout=0.2)
        gate.set()
        for offset in range(3, 20):
            assert m.enqueue("k", "m", 0, offset, timeout=30) is Enqueued.ACCEPTED
            most_unacked = max(most_unacked, offset - acks.last(0))
        assert m.flush(timeout=30)
    assert most_unacked <= 3  # never more than max_in_queue accepted and not acked
    assert acks.last(0) == 19
    assert acks.calls[0] == sorted(set(acks.calls[0]))  # strictly increasing


def test_a_bad_item_raises_at_once_and_nothing_is_counted() -> None:
    with workshaper.Manager(work=lambda m, p, o: None) as manager:
        with pytest.raises(InvalidInput, match="partition"):
            manager.enqueue("k", "m", -1, 0)
        with pytest.raises(InvalidInput, match="offset"):
            manager.enqueue("k", "m", 0, -5)
        assert manager.total_enqueued == 0
        assert manager.enqueue("k", "m", 0, 0) is Enqueued.ACCEPTED
        assert manager.flush(timeout=30)


def test_shutdown_without_wait_leaves_no_thread_behind() -> None:
    # Only this Manager's threads count: an earlier test's may still be ending.
    before = set(threading.enumerate())
    gate = threading.Event()
    manager = workshaper.Manager(work=lambda m, p, o: gate.wait(5), max_in_queue=5)
    for offset in range(5):
        manager.enqueue("k", "m", 0, offset)
    gate.set()
    assert manager.shutdown(timeout=10, wait=False) is False
    left = [t for t in threading.enumerate() if t not in before]
    assert not any(t.name.startswith("workshaper-") for t in left), left
    with pytest.raises(RuntimeError, match="shut down"):
        manager.enqueue("k", "m", 0, 9)


def test_a_failed_item_is_retried_before_its_successors() -> None:
    runs: list[tuple[int, int]] = []  # (offset, attempt)
    errors: list[int] = []

    def work(message: object, partition: int, offset: int) -> None:
        attempt = current_job().attempt
        runs.append((offset, attempt))
        if offset == 1 and attempt < 3:
            raise ValueError("not yet")

    with workshaper.Manager(
        work=work,
        on_error=lambda exc, m, p, o: errors.append(o),
        retry_backoff=0.01,
        max_attempts=3,
    ) as manager:
        for offset in range(4):
            manager.enqueue("k", "m", 0, offset)
        assert manager.flush(timeout=30)
    assert runs == [(0, 1), (1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]
    assert errors == [1, 1]


def test_retries_waiting_out_their_backoff_take_no_thread_each() -> None:
    """A downstream outage fails every item: hundreds of retries wait at once, on one timer
    thread (a thread per retry was hundreds of threads)."""
    failed: set[int] = set()

    def work(message: object, partition: int, offset: int) -> None:
        if offset not in failed:
            failed.add(offset)
            raise ConnectionError("downstream is down")

    before = threading.active_count()
    peak = before
    with workshaper.Manager(
        work=work, retry_backoff=0.5, max_in_queue=1000, concurrency=4
    ) as manager:
        for offset in range(300):  # a sub key each: every one waits for its retry
            manager.enqueue(f"k{offset}", "m", 0, offset)
            peak = max(peak, threading.active_count())
        while not manager.flush(timeout=0.01):
            peak = max(peak, threading.active_count())
        assert manager.total_acked == 300
    assert len(failed) == 300
    assert peak <= before + 4 + 1  # the item threads and the timer thread


def test_an_item_out_of_attempts_is_dead_lettered_and_its_sub_key_goes_on() -> None:
    ran: list[int] = []
    acks = Acks()

    def work(message: object, partition: int, offset: int) -> None:
        if offset == 1:
            raise ValueError("poison")
        ran.append(offset)

    with workshaper.Manager(
        work=work, ack=acks, retry_backoff=0, max_attempts=2, max_in_queue=10
    ) as manager:
        for offset in range(4):
            manager.enqueue("k", "m", 0, offset)
        assert manager.flush(timeout=30)
        assert manager.total_acked == 4
    assert ran == [0, 2, 3]
    assert acks.last(0) == 3  # a dead-lettered item is finished


def test_a_blocked_sub_key_holds_its_items_and_the_watermark() -> None:
    ran: list[int] = []
    acks = Acks()

    def work(message: object, partition: int, offset: int) -> None:
        if message == "poison":
            raise ValueError("poison")
        ran.append(offset)

    with workshaper.Manager(
        work=work, ack=acks, retry_backoff=0, max_attempts=1, on_exhausted="block"
    ) as manager:
        manager.enqueue("a", "ok", 0, 0)
        manager.enqueue("b", "poison", 0, 1)
        manager.enqueue("b", "ok", 0, 2)  # behind the blocked item: never runs
        manager.enqueue("c", "ok", 0, 3)  # another sub key: runs
        _wait_for(lambda: sorted(ran) == [0, 3] and acks.last(0) == 0)
        assert manager.flush(timeout=0.3) is False  # offset 1 is not finished
        assert acks.last(0) == 0  # and the watermark waits for it
        manager.shutdown(timeout=5, wait=False)
    assert sorted(ran) == [0, 3]


def test_a_long_backlog_gives_way_to_a_waiting_sub_key_after_its_slice() -> None:
    """One thread; sub key a has 200 items of >= 2 ms queued ahead of b's one item. a runs
    for its first slice (20 ms: at most 10 items), then yields at an item boundary, mid-batch,
    and b runs; a's items still run once each, in order. (Held for whole batches until a
    quantum of 1 s, a ran 100 items before b.)"""
    ran: list[tuple[str, int]] = []

    def work(message: object, partition: int, offset: int) -> None:
        ran.append((str(current_job().sub_key), offset))
        time.sleep(0.002)

    with workshaper.Manager(work=work, concurrency=1, max_in_queue=300) as manager:
        for offset in range(200):
            manager.enqueue("a", "m", 0, offset)
        manager.enqueue("b", "m", 0, 200)
        assert manager.flush(timeout=60)
    assert [offset for key, offset in ran if key == "a"] == list(range(200))
    b_at = ran.index(("b", 200))
    assert b_at <= 15, f"b ran only after {b_at} items of a"


def test_an_ack_that_raises_is_offered_again_and_acks_only_grow() -> None:
    calls: list[int] = []
    failed = [False]

    def ack(partition: int, offset: int) -> None:
        calls.append(offset)
        if not failed[0]:
            failed[0] = True
            raise ConnectionError("the commit failed")

    with workshaper.Manager(work=lambda m, p, o: None, ack=ack, ack_interval=0.001) as manager:
        for offset in range(20):
            manager.enqueue(f"k{offset % 3}", "m", 0, offset)
        assert manager.flush(timeout=30)
    assert calls[-1] == 19
    assert calls[1:] == sorted(set(calls[1:]))  # after the failure, strictly increasing
    assert calls[1] >= calls[0]  # the failed value is offered again (or a later one)


def test_an_ack_that_keeps_raising_waits_its_backoff_not_every_item() -> None:
    calls: list[int] = []
    ran: list[int] = []

    def ack(partition: int, offset: int) -> None:
        calls.append(offset)
        raise ConnectionError("down")

    manager = workshaper.Manager(
        work=lambda m, p, o: ran.append(o),
        ack=ack,
        ack_interval=1.0,
        max_in_queue=100,
        concurrency=1,
    )
    try:
        for offset in range(50):  # a sub key each: 50 batches, each ending with an offer
            manager.enqueue(f"k{offset}", "m", 0, offset)
        _wait_for(lambda: len(ran) == 50 and calls)
        # Each batch moved the watermark; after the first failure the next offer waits for
        # its backoff (1 s, the most it doubles to), however many batches end meanwhile: a
        # call per batch would be ~50; a call per second of these 50 batches, a few.
        assert len(calls) <= 10
    finally:
        manager.shutdown(timeout=5, wait=False)


def test_a_batch_that_ends_while_its_partition_is_acked_is_acked_after() -> None:
    """The thread acking a partition offers again after its commit when a batch of that
    partition ended meanwhile (the batch's own thread left the ack to it)."""
    acks = Acks()
    holder: list[workshaper.Manager] = []
    acking = threading.Event()

    def work(message: object, partition: int, offset: int) -> None:
        if offset == 1:  # ends only once offset 0's ack is under way
            acking.wait(30)

    def ack(partition: int, offset: int) -> None:
        if offset == 0:  # hold this ack until offset 1's batch ended and left it to us
            acking.set()
            runner = holder[0]._runner
            assert runner is not None
            _wait_for(lambda: runner._acking.get(0) is True)
        acks(partition, offset)

    with workshaper.Manager(work=work, ack=ack, concurrency=2) as manager:
        holder.append(manager)
        manager.enqueue("a", "m", 0, 0)
        manager.enqueue("b", "m", 0, 1)
        assert manager.flush(timeout=30)
    assert acks.calls == {0: [0, 1]}


def test_ack_each_acks_every_offset_in_order() -> None:
    acks = Acks()
    with workshaper.Manager(work=lambda m, p, o: None, ack=acks, ack_each=True) as manager:
        for offset in range(0, 30, 3):  # gaps, like a compacted topic
            manager.enqueue(f"k{offset % 4}", "m", 0, offset)
        assert manager.flush(timeout=30)
    assert acks.calls == {0: list(range(0, 30, 3))}


def test_an_async_handler_runs_in_order() -> None:
    ran: list[int] = []

    async def work(message: object, partition: int, offset: int) -> None:
        await asyncio.sleep(0)
        ran.append(offset)

    with workshaper.Manager(work=work) as manager:
        for offset in range(10):
            manager.enqueue("k", "m", 0, offset)
        assert manager.flush(timeout=30)
    assert ran == list(range(10))


def test_options_are_checked_as_the_worker_and_the_producer_check_them() -> None:
    with pytest.raises(InvalidInput, match="lease"):
        workshaper.Manager(lambda m, p, o: None, lease=-1)
    with pytest.raises(InvalidInput, match="max_in_queue"):
        workshaper.Manager(lambda m, p, o: None, max_in_queue=0)
    with pytest.raises(TypeError, match="no_such_option"):
        workshaper.Manager(lambda m, p, o: None, no_such_option=1)
    with workshaper.Manager(lambda m, p, o: None) as manager:
        with pytest.raises(RuntimeError, match="no Worker"):
            _ = manager.worker
        with pytest.raises(RuntimeError, match="no Producer"):
            _ = manager.producer


def test_a_manager_on_redis_counts_what_it_enqueued_and_acked(
    redis_server: RedisServer, namespace: str
) -> None:
    acks = Acks()
    with workshaper.Manager(
        work=lambda m, p, o: None, ack=acks, redis=redis_server.url, namespace=namespace
    ) as manager:
        for offset in range(30):
            assert manager.enqueue(f"k{offset % 5}", "m", offset % 2, offset) is Enqueued.ACCEPTED
        assert manager.enqueue("k0", "m", 0, 0) is not Enqueued.ACCEPTED
        assert manager.flush(timeout=30)
        assert manager.total_enqueued == manager.total_acked == 30
        assert manager.producer.stats["accepted"] == 30
    assert acks.last(0) == 28 and acks.last(1) == 29
