"""Worker: retries, dead letters, blocking, callbacks, corrupt items, leases and stopping."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, cast

import pytest

import workshaper
from workshaper import InvalidInput, InvalidType, codec
from workshaper.admin import Admin
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys
from workshaper.worker import lease as lease_states
from workshaper.worker.executor import BatchRunner
from workshaper.worker.prefetch import PrefetchPolicy, occupies
from workshaper_tools.testing import RedisServer

from .conftest import wait_for


class Recorder:
    """A work function whose behaviour per offset is scripted, recording every call."""

    def __init__(
        self,
        fail_first: dict[int, int] | None = None,
        always_fail: set[int] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.fail_first = fail_first or {}
        self.always_fail = always_fail or set()
        self.delay = delay
        self.calls: list[workshaper.Job] = []
        self.lock = threading.Lock()

    def __call__(self, message: Any, partition: int, offset: int) -> None:
        job = workshaper.current_job()
        with self.lock:
            self.calls.append(job)
        if self.delay:
            time.sleep(self.delay)
        if offset in self.always_fail or job.attempt <= self.fail_first.get(offset, 0):
            raise ValueError(f"boom at {offset} attempt {job.attempt}")

    def attempts(self, offset: int) -> list[int]:
        return [j.attempt for j in self.calls if j.offset == offset]

    def order(self, sub_key: Any) -> list[int]:
        return [j.offset for j in self.calls if j.sub_key == sub_key]


def run_items(
    backend: Backend,
    namespace: str,
    items: list[tuple[Any, ...]],
    work: Any,
    timeout: float = 60,
    **options: Any,
) -> tuple[workshaper.Worker, bool]:
    worker = workshaper.Worker(backend, namespace, work=work, **options).start()
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_many(items)
            flushed = producer.flush(timeout=timeout)
    finally:
        worker.stop(10)
    return worker, flushed


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease": 0}, "lease"),
        ({"lease": 0.01}, "lease"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"on_exhausted": "explode"}, "on_exhausted"),
        ({"batch_size": 0}, "batch_size"),
        ({"prefetch": -1}, "prefetch"),
        ({"work": None}, "work"),
        ({"work": 3}, "work"),
        ({"on_error": "x"}, "on_error"),
    ],
)
def test_bad_worker_settings(backend: Backend, options: dict[str, Any], fragment: str) -> None:
    kwargs: dict[str, Any] = {"work": lambda m, p, o: None, **options}
    with pytest.raises((InvalidInput, InvalidType), match=fragment):
        workshaper.Worker(backend, **kwargs)


def test_current_job_outside_work_raises() -> None:
    with pytest.raises(LookupError, match="inside a WorkShaper work handler"):
        workshaper.current_job()


def test_current_job_describes_the_item(backend: Backend, namespace: str) -> None:
    rec = Recorder()
    run_items(
        backend,
        namespace,
        [(b"bin", "m", 3, 10), ("s", "m", 3, 11), (42, "m", 3, 12), (None, "m", 3, 13)],
        rec,
    )
    jobs = {j.offset: j for j in rec.calls}
    assert (jobs[10].sub_key, jobs[11].sub_key, jobs[12].sub_key, jobs[13].sub_key) == (
        b"bin",
        "s",
        42,
        None,
    )
    assert all(j.partition == 3 and j.attempt == 1 and j.token > 0 for j in jobs.values())


def test_failed_item_is_retried_before_its_successors_while_others_go_on(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder(fail_first={0: 2})
    items = [("a", "m", 0, 0), ("a", "m", 0, 1), ("b", "m", 0, 2), ("b", "m", 0, 3)]
    errors: list[tuple[str, int]] = []
    worker, flushed = run_items(
        backend,
        namespace,
        items,
        rec,
        retry_backoff=0.2,
        on_error=lambda exc, m, p, o: errors.append((type(exc).__name__, o)),
    )
    assert flushed
    assert rec.attempts(0) == [1, 2, 3]
    assert rec.order("a") == [0, 0, 0, 1]  # offset 1 waits for 0's retries
    assert errors == [("ValueError", 0), ("ValueError", 0)]
    # Sub key b did not wait for a's backoff (0.2 s + 0.4 s): it finished first.
    b_done = max(i for i, j in enumerate(rec.calls) if j.sub_key == "b")
    a_last = max(i for i, j in enumerate(rec.calls) if j.sub_key == "a")
    assert b_done < a_last
    assert worker.stats["dead_lettered"] == 0


def test_exhausted_item_is_dead_lettered_and_the_watermark_moves_on(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder(always_fail={1})
    items = [("a", {"n": 0}, 0, 0), ("a", {"n": 1}, 0, 1), ("a", {"n": 2}, 0, 2)]
    worker, flushed = run_items(backend, namespace, items, rec, max_attempts=2, retry_backoff=0.01)
    assert flushed
    assert rec.order("a") == [0, 1, 1, 2]
    assert worker.stats["dead_lettered"] == 1
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert (dead.offset, dead.attempts, dead.error_type, dead.message) == (
        1,
        2,
        "ValueError",
        {"n": 1},
    )
    assert "boom at 1 attempt 2" in dead.error_message and "Traceback" in dead.traceback
    assert dead.worker == worker.id and dead.at_ms > 0


def test_block_mode_holds_sub_key_and_watermark_until_an_operator_acts(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder(always_fail={1})
    acks: list[int] = []
    worker = workshaper.Worker(
        backend, namespace, work=rec, max_attempts=2, retry_backoff=0.01, on_exhausted="block"
    ).start()
    admin = Admin(backend, namespace)
    try:
        with workshaper.Producer(backend, namespace, ack=lambda p, o: acks.append(o)) as producer:
            producer.enqueue_many(
                [("a", "m", 0, 0), ("a", "m", 0, 1), ("a", "m", 0, 2), ("b", "m", 0, 3)]
            )
            wait_for(lambda: admin.blocked(0))
            wait_for(lambda: 3 in [j.offset for j in rec.calls])
            assert producer.flush(timeout=0.3) is False
            assert acks == [0]  # held below the blocked item
            assert rec.order("a") == [0, 1, 1]
            [record] = admin.blocked(0)
            assert (record.sub_key, record.offset, record.attempts) == ("a", 1, 2)
            rec.always_fail.clear()
            assert admin.retry_blocked(0, "a") is True
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)
    assert rec.order("a") == [0, 1, 1, 1, 2]
    assert acks[-1] == 3


def test_operator_can_dead_letter_a_blocked_item(backend: Backend, namespace: str) -> None:
    rec = Recorder(always_fail={0})
    worker = workshaper.Worker(
        backend, namespace, work=rec, max_attempts=1, on_exhausted="block"
    ).start()
    admin = Admin(backend, namespace)
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, 0), ("a", "m", 0, 1)])
            wait_for(lambda: admin.blocked(0))
            assert admin.dead_letter_blocked(0, "a")
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)
    assert rec.order("a") == [0, 1]
    assert [d.offset for d in admin.dead_letters(0)] == [0]


def test_exceptions_in_on_done_and_on_error_are_logged_not_fatal(
    backend: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: Any) -> None:
        raise RuntimeError("callback bug")

    rec = Recorder(fail_first={1: 1})
    with caplog.at_level(logging.ERROR, logger="workshaper.worker.executor"):
        _, flushed = run_items(
            backend,
            namespace,
            [("a", "m", 0, 0), ("a", "m", 0, 1)],
            rec,
            on_done=explode,
            on_error=explode,
            retry_backoff=0.01,
        )
    assert flushed
    assert "on_done raised for partition 0 offset 0" in caplog.text
    assert "on_error raised for partition 0 offset 1" in caplog.text


def test_corrupt_item_is_dead_lettered_and_the_worker_keeps_running(
    backend: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    pkeys = NamespaceKeys(namespace).partition(0)
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, 0), ("a", "m", 0, 1), ("a", "m", 0, 2)])
        # Someone overwrites offset 1's entry with garbage (a bug, a bad migration).
        queue = pkeys.queue(codec.encode_sub_key("a", 0))
        # cast: redis-py types lset's value str; bytes work
        backend.client.lset(queue, 1, cast(str, b"1|jnot-json{"))
        worker = workshaper.Worker(backend, namespace, work=rec).start()
        try:
            with caplog.at_level(logging.ERROR):
                assert producer.flush(timeout=30)
        finally:
            worker.stop(10)
    assert rec.order("a") == [0, 2]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert dead.offset == 1 and dead.error_type == "CorruptItem"
    assert "does not decode" in dead.error_message
    assert "corrupt item in partition 0" in caplog.text


def test_lease_is_renewed_while_long_work_runs(redis_server: RedisServer, namespace: str) -> None:
    rec = Recorder(delay=1.5)  # three times the lease
    others = [
        workshaper.Worker(redis_server.url, namespace, work=rec, lease=0.5).start()
        for _ in range(2)
    ]
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, 0), ("a", "m", 0, 1)])
            assert producer.flush(timeout=30)
    finally:
        for w in others:
            w.stop(10)
    assert [j.offset for j in rec.calls] == [0, 1]  # nobody stole the lease and re-ran it
    assert sum(w.stats["fenced"] + w.stats["reaped"] for w in others) == 0


def test_stop_releases_leases_so_another_worker_continues_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    first_started = threading.Event()
    rec_first: list[int] = []

    def first_work(message: Any, partition: int, offset: int) -> None:
        rec_first.append(offset)
        first_started.set()
        time.sleep(0.3)

    first = workshaper.Worker(
        redis_server.url, namespace, work=first_work, lease=60, concurrency=2
    ).start()
    with workshaper.Producer(redis_server.url, namespace) as producer:
        producer.enqueue_many([(f"k{o % 2}", "m", 0, o) for o in range(20)])
        assert first_started.wait(30)
        assert first.stop(timeout=30) is True  # drained: running items finished and recorded
        stopped_at = time.monotonic()
        rec_second = Recorder()
        second = workshaper.Worker(redis_server.url, namespace, work=rec_second, lease=60).start()
        try:
            assert producer.flush(timeout=30)
            # Far less than the 60 s lease: the leases were released, not left to expire.
            assert time.monotonic() - stopped_at < 30
        finally:
            second.stop(10)
    assert sorted(rec_first + [j.offset for j in rec_second.calls]) == list(range(20))
    assert second.stats["reaped"] == 0


def test_worker_survives_and_resumes_after_redis_restart(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    rec = Recorder(delay=0.002)
    worker = workshaper.Worker(fresh_redis_server.url, namespace, work=rec, lease=5).start()
    try:
        with workshaper.Producer(fresh_redis_server.url, namespace) as producer:
            producer.enqueue_many([(f"k{o % 10}", "m", 0, o) for o in range(300)])
            wait_for(lambda: len(rec.calls) > 50)
            fresh_redis_server.restart()  # SIGKILL, then start on the same AOF (fsync always)
            producer.enqueue_many([(f"k{o % 10}", "m", 0, o) for o in range(300, 400)])
            assert producer.flush(timeout=60)
    finally:
        worker.stop(10)
    assert {j.offset for j in rec.calls} == set(range(400))
    for k in range(10):
        order = rec.order(f"k{k}")
        # Re-runs after the restart are allowed (at-least-once); going backwards past a
        # finished successor is not: each item starts only after its predecessor finished.
        firsts = sorted(set(order), key=order.index)
        assert firsts == sorted(firsts)


def test_prefetched_batches_queue_for_threads_and_never_exceed_concurrency(
    backend: Backend, namespace: str
) -> None:
    """A lease per item (every sub key different), 2 threads and up to 4 prefetched leases
    queued for them: at most 2 handlers ever run at once, and every item runs once."""
    running = 0
    most = 0
    lock = threading.Lock()
    done: list[int] = []

    def work(message: Any, partition: int, offset: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1
            done.append(offset)

    items = [(f"k{i}", "m", 0, i) for i in range(300)]
    worker, flushed = run_items(backend, namespace, items, work, concurrency=2, prefetch=4)
    assert flushed
    assert most <= 2
    assert sorted(done) == list(range(300))
    assert worker.stats["claimed"] == 300


@pytest.mark.parametrize(
    ("batch_seconds", "round_trip", "deep", "expected"),
    [
        (0.0, 0.0, True, 1),  # nothing measured yet: one
        (0.002, 0.0005, True, 16),  # 8 slots x 4 round trips of >= 1 ms / 2 ms batches
        (0.0001, 0.0005, True, 64),  # a lease per item: as many as allowed
        (0.0045, 0.0005, True, 8),  # 8 slots x 4 round trips of >= 1 ms / 4.5 ms batches
        (0.010, 0.0005, True, 4),  # 8 slots x 4 round trips of >= 1 ms / 10 ms batches
        (0.250, 0.0005, True, 1),  # long batches: one, never zero
        (0.250, 0.020, True, 3),  # a slow link needs more
        (0.002, 0.0005, False, 0),  # shallow backlog: none, whatever the times
    ],
)
def test_prefetch_follows_batch_and_round_trip_times(
    backend: Backend,
    namespace: str,
    batch_seconds: float,
    round_trip: float,
    deep: bool,
    expected: int,
) -> None:
    worker = workshaper.Worker(backend, namespace, work=print, concurrency=8)
    assert worker.prefetch == 64
    policy = PrefetchPolicy(worker.concurrency, worker.prefetch)
    policy.deep_backlog = deep
    policy.batch_seconds = batch_seconds
    policy.round_trip_seconds = round_trip
    assert policy.lookahead() == expected


def test_wanted_counts_the_leases_that_occupy_a_slot() -> None:
    """PrefetchPolicy.wanted counts held leases with occupies() inlined: every state and end
    action gives the same count as occupies()."""
    keys = NamespaceKeys("ns").partition(0)
    leases = []
    for state in (
        lease_states.CLAIMED,
        lease_states.READY,
        lease_states.RUNNING,
        lease_states.REPORTING,
        lease_states.WAITING,
    ):
        for action in (None, lease_states.CONTINUE, lease_states.YIELD, lease_states.RELEASE):
            for read_to_end in (False, True):
                lease = lease_states.Lease(0, keys, b"s", "s", 1, 0, b"")
                lease.state, lease.end_action, lease.read_to_end = state, action, read_to_end
                leases.append(lease)
    policy = PrefetchPolicy(concurrency=100, prefetch=0)
    held = sum(1 for lease in leases if occupies(lease))
    assert 0 < held < len(leases)
    assert policy.wanted(leases, claiming=3) == 100 - held - 3


def test_async_handler_retries_and_sees_its_own_job(backend: Backend, namespace: str) -> None:
    """``async def`` work runs on the event loop: a failure is retried like a thread's, and
    every task reads its own item from current_job() while others are suspended."""
    attempts: dict[int, list[int]] = {}
    mismatched: list[int] = []

    async def work(message: Any, partition: int, offset: int) -> None:
        attempts.setdefault(offset, []).append(workshaper.current_job().attempt)
        await asyncio.sleep(0.001)  # let the other leases' tasks run meanwhile
        if workshaper.current_job().offset != offset:
            mismatched.append(offset)
        if offset == 3 and workshaper.current_job().attempt == 1:
            raise ValueError("first attempt fails")

    items = [(f"k{o % 4}", "m", 0, o) for o in range(40)]
    worker, flushed = run_items(backend, namespace, items, work, retry_backoff=0.01)
    assert flushed
    assert attempts[3] == [1, 2]
    assert all(attempts[o] == [1] for o in range(40) if o != 3)
    assert mismatched == []
    assert worker.stats["failed"] == 1


def test_a_long_backlog_gives_way_to_a_waiting_sub_key_after_its_slice(
    backend: Backend, namespace: str
) -> None:
    """One slot; sub key a has 200 items of >= 2 ms queued ahead of b's one item in the same
    partition. a runs for its first slice (20 ms: at most 10 items), then yields at an item
    boundary and b runs; a's items still run once each, in order. (A lease that kept its sub
    key for a whole batch ran 100 of a's items before b.)"""
    order: list[str] = []
    lock = threading.Lock()

    def work(message: Any, partition: int, offset: int) -> None:
        with lock:
            order.append(str(workshaper.current_job().sub_key))
        time.sleep(0.002)

    items: list[tuple[Any, ...]] = [("a", "m", 0, i) for i in range(200)]
    items.append(("b", "m", 0, 200))
    worker, flushed = run_items(backend, namespace, items, work, concurrency=1)
    assert flushed
    assert sorted(order) == ["a"] * 200 + ["b"]
    b_at = order.index("b")
    assert b_at <= 15, f"b ran only after {b_at} items of a"


def _entries(offsets: range) -> list[bytes]:
    return [codec.make_entry(o, codec.encode_message("m", 100)) for o in offsets]


def test_a_slice_never_stops_a_batch_before_its_first_item() -> None:
    """A slice that is over already when a batch starts still runs the batch's first item (so
    every batch moves its sub key on), then yields before the second."""
    posted: list[tuple[Any, ...]] = []
    ran: list[int] = []
    runner = BatchRunner(lambda m, p, o: ran.append(o), None, None, posted.append, "w")
    lease = lease_states.Lease(0, NamespaceKeys("ns").partition(0), b"s", "s", 1, 0, b"")
    lease.valid_until = float("inf")
    lease.yield_at = lease_states.clock() - 1.0
    runner.run_sync(lease, _entries(range(5, 9)), 1)
    assert ran == [5]
    assert posted[-1] == ("ended", lease, ("yielded", 1))
    assert list(lease.finished) == [5]


def test_a_slice_that_yielded_to_nobody_doubles_up_to_the_quantum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slice starts when a batch is handed over and runs on across batches; the batch that
    ends past it yields. A yield nobody took doubles the next slice, up to LEASE_QUANTUM."""
    now = [100.0]
    monkeypatch.setattr(lease_states, "_monotonic", lambda: now[0])
    lease = lease_states.Lease(0, NamespaceKeys("ns").partition(0), b"s", "s", 1, 0, b"")
    assert lease.next_action(stopping=True) == lease_states.RELEASE
    assert lease.next_action(stopping=False) == lease_states.CONTINUE  # no slice running
    slices = []
    for _ in range(7):
        lease.begin_slice()
        started = now[0]
        now[0] += 0.01
        lease.begin_slice()  # a later batch of the same slice: it keeps running
        assert lease.yield_at == started + lease.slice_seconds
        assert lease.next_action(stopping=False) == lease_states.CONTINUE
        now[0] = lease.yield_at
        assert lease.next_action(stopping=False) == lease_states.YIELD
        slices.append(lease.slice_seconds)
        lease.next_slice()
    assert slices == [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0]
    assert slices[0] == lease_states.FIRST_SLICE and slices[-1] == lease_states.LEASE_QUANTUM
