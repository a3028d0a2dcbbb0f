"""Regression tests of issue 8 for the worker: an item's failure is its own, a crash window
ends with its items, a worker never dies of a state it finds in Redis."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import cast

import pytest
import redis

import workshaper
from workshaper import codec
from workshaper.admin import Admin
from workshaper.connection import Backend, connect
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import SCRIPT_NAMES, load_script, register_scripts
from workshaper_tools.testing import RedisServer

from .conftest import wait_for
from .test_worker import Recorder, run_items


def test_a_corrupt_entry_at_a_batch_boundary_is_dead_lettered_and_the_worker_lives(
    backend: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 4: with batch_size=1 the corrupt entry becomes the head when its predecessor is
    # recorded, inside complete_items.
    rec = Recorder()
    pkeys = NamespaceKeys(namespace).partition(0)
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, i) for i in range(4)])
        queue = pkeys.queue(codec.encode_sub_key("a", 0))
        # cast: redis-py types lset's value str; bytes work
        backend.client.lset(queue, 1, cast(str, b"garbage"))
        worker = workshaper.Worker(backend, namespace, work=rec, batch_size=1).start()
        try:
            with caplog.at_level(logging.ERROR):
                assert producer.flush(timeout=30)
        finally:
            assert worker.stop(10)
    assert rec.order("a") == [0, 2, 3]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert dead.offset is None and dead.error_type == "CorruptItem"
    assert "crashed" not in caplog.text


class RaisesAt:
    """Raises ``exc`` on every attempt of one offset, recording (offset, attempt) of each call."""

    def __init__(self, offset: int, exc: type[BaseException]) -> None:
        self.offset = offset
        self.exc = exc
        self.calls: list[tuple[int, int]] = []

    def record(self, offset: int) -> None:
        self.calls.append((offset, workshaper.current_job().attempt))
        if offset == self.offset:
            raise self.exc("raised by the handler")


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_base_exception_from_a_handler_is_a_failed_attempt_of_its_own_item(
    backend: Backend, namespace: str, exc: type[BaseException]
) -> None:
    # Item 6: it was reported as failing at index 0 of the batch, so items that had succeeded
    # ran again and the attempts went to the wrong item.
    handler = RaisesAt(2, exc)

    def work(message: object, partition: int, offset: int) -> None:
        handler.record(offset)

    items = [("a", "m", 0, o) for o in range(5)]
    worker, flushed = run_items(
        backend, namespace, items, work, max_attempts=2, retry_backoff=0.01, concurrency=1
    )
    assert flushed
    assert handler.calls == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert (dead.offset, dead.attempts, dead.error_type) == (2, 2, exc.__name__)
    assert worker.stats["dead_lettered"] == 1


def test_a_cancelled_error_from_an_async_handler_is_a_failed_attempt_of_its_own_item(
    backend: Backend, namespace: str
) -> None:
    handler = RaisesAt(2, asyncio.CancelledError)

    async def work(message: object, partition: int, offset: int) -> None:
        await asyncio.sleep(0)
        handler.record(offset)

    items = [("a", "m", 0, o) for o in range(5)]
    _, flushed = run_items(backend, namespace, items, work, max_attempts=2, retry_backoff=0.01)
    assert flushed
    assert handler.calls == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert (dead.offset, dead.attempts, dead.error_type) == (2, 2, "CancelledError")


def test_a_sub_key_handed_back_with_items_left_rings_its_partitions_bell(
    backend: Backend, namespace: str
) -> None:
    # Item 5: leases handed back (stopping, or during another lease's isolation) rang no bell,
    # so other workers waited for a reaper's scan (~1 s) to learn the sub key was runnable.
    started, release = threading.Event(), threading.Event()

    def work(message: object, partition: int, offset: int) -> None:
        started.set()
        release.wait(30)

    keys = NamespaceKeys(namespace)
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, o) for o in range(3)])
        worker = workshaper.Worker(backend, namespace, work=work, concurrency=1, lease=60).start()
        try:
            assert started.wait(30)
            assert backend.client.zscore(keys.wake, "0") is None  # the worker took the bell
            stopper = threading.Thread(target=worker.stop, args=(30,))
            stopper.start()
            leases = worker._state.leases  # the coordinator told the running batch to stop
            wait_for(lambda: leases and all(lease.stop for lease in leases.values()))
            release.set()
            stopper.join(30)
        finally:
            release.set()
            worker.stop(10)
    assert backend.client.lrange(keys.partition(0).ready, 0, -1) == [b"sa"]
    assert backend.client.zscore(keys.wake, "0") is not None


def test_isolated_window_items_are_flagged_one_by_one_and_run_alone(
    backend: Backend, namespace: str
) -> None:
    # Item 13, first bullet, worker side: the lease is flagged in Redis only while one of its
    # window items runs; between items, and while a retry waits, it is not.
    keys = NamespaceKeys(namespace).partition(0)
    seen: list[tuple[int, int, bool]] = []

    def work(message: object, partition: int, offset: int) -> None:
        owner = backend.client.hget(keys.owners, b"sa") or b""
        seen.append((offset, workshaper.current_job().attempt, b"|i|" in owner))
        if offset == 1 and workshaper.current_job().attempt == 1:
            raise ValueError("once")

    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, o) for o in range(3)])
        # A worker that died holding the lease: the reaper opens a crash window.
        backend.client.lpop(keys.ready)
        backend.client.hset(keys.owners, b"sa", b"1|-|10|3|d|dead")
        backend.client.zadd(keys.leases, {b"sa": 0})
        worker = workshaper.Worker(
            backend, namespace, work=work, retry_backoff=0.2, lease=1.0
        ).start()
        try:
            assert producer.flush(timeout=30)
        finally:
            worker.stop(10)
    assert seen == [(0, 2, True), (1, 1, True), (1, 2, True), (2, 1, True)]
    assert backend.client.hlen(keys.exact) == 0


def test_no_item_starts_once_the_lease_may_have_expired_by_the_workers_clock(
    backend: Backend,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Item 12: a worker paused past its lease (SIGSTOP, a long GC, a frozen VM) started the
    # next item of its batch on waking, before it learned that its lease was gone. Here the
    # worker's clock jumps past the lease during item 0 (Redis's clock does not: the lease is
    # still this worker's), so the batch must stop and the coordinator ask Redis first.
    from workshaper.worker import lease as lease_module

    skew = [0.0]
    monkeypatch.setattr(lease_module, "_monotonic", lambda: time.monotonic() + skew[0])
    calls: list[int] = []

    def work(message: object, partition: int, offset: int) -> None:
        calls.append(offset)
        if offset == 0:
            skew[0] = 1000.0  # as if the process had been frozen for 1,000 s

    items = [("a", "m", 0, o) for o in range(3)]
    with caplog.at_level(logging.WARNING):
        worker, flushed = run_items(backend, namespace, items, work, lease=30.0, concurrency=1)
    assert flushed
    assert calls == [0, 1, 2]  # the lease was still ours: the rest ran once, after asking
    assert worker.stats["expired"] == 1
    assert "lease may have expired" in caplog.text


def test_a_worker_backs_off_while_redis_is_at_maxmemory_and_resumes(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 8, worker side: an -OOM reply (a renewal, a failure record) ended the worker loop
    # for good.
    server = RedisServer().start()
    try:
        client = server.client()
        with workshaper.Producer(server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, o) for o in range(3)])
            client.config_set("maxmemory", 1)  # every write that grows memory is refused
            rec = Recorder(fail_first={1: 1})  # its failure record must be written
            with caplog.at_level(logging.WARNING):
                worker = workshaper.Worker(
                    server.url, namespace, work=rec, retry_backoff=0.01
                ).start()
                try:
                    wait_for(lambda: "out of memory" in caplog.text, timeout=30)
                    wait_for(lambda: rec.attempts(1) == [1])
                    assert worker._thread is not None and worker._thread.is_alive()
                    client.config_set("maxmemory", 0)  # memory freed
                    assert producer.flush(timeout=30)
                finally:
                    worker.stop(10)
        assert rec.order("a") == [0, 1, 1, 2]
        assert "crashed" not in caplog.text
    finally:
        server.stop()


#: The scripts that grow memory: their plain ``#!lua`` shebang makes Redis refuse them at
#: maxmemory before they run. Every other script is ``allow-oom`` or ``no-writes`` and runs.
_REFUSED_AT_MAXMEMORY = {
    "enqueue_items",
    "fail_item",
    "mark_isolated",
    "unblock_sub_key",
    "replay_dead_letter",
}


def test_at_maxmemory_redis_refuses_only_the_scripts_that_grow_memory() -> None:
    """The shebang flags as the server enforces them: each script runs with no keys at
    maxmemory. A refused one answers -OOM before it runs; an allowed one runs (and stops at
    its missing arguments, or answers)."""
    with RedisServer(extra=["--maxmemory-policy", "noeviction"]) as server:
        backend = connect(server.url)
        try:
            register_scripts(backend)
            client = backend.client
            client.config_set("maxmemory", 1)
            refused = set()
            for name in SCRIPT_NAMES:
                try:
                    client.evalsha(load_script(name).sha, 0)
                except redis.exceptions.OutOfMemoryError:
                    refused.add(name)
                except redis.ResponseError as exc:
                    assert "OOM" not in str(exc), (name, exc)
        finally:
            backend.close()
    assert refused == _REFUSED_AT_MAXMEMORY
