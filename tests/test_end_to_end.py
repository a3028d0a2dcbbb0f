"""Producer + Worker + ack loop together, checked by the invariant checker."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import workshaper
from workshaper_tools.testing import journal
from workshaper_tools.testing.checker import Ack, PlannedItem, check
from workshaper_tools.testing.redis_server import RedisServer


@pytest.fixture
def journal_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WS_JOURNAL_DIR", str(tmp_path))
    monkeypatch.setenv("WS_WORK_DELAY_MAX", "0.002")
    monkeypatch.setattr(journal, "_settings", None)
    monkeypatch.setattr(journal, "_fd", None)
    return tmp_path


def plan_items(count: int, partitions: int, sub_keys: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    next_offset = [0] * partitions
    items = []
    for i in range(count):
        p = rng.randrange(partitions)
        next_offset[p] += rng.choice((1, 1, 1, 2))  # gaps, like compacted topics
        items.append((f"k{rng.randrange(sub_keys)}", {"i": i}, p, next_offset[p]))
    return items


def test_seed_style_manager_on_embedded_backend(journal_dir: Path) -> None:
    items = plan_items(600, partitions=3, sub_keys=20)
    acks: list[Ack] = []
    with workshaper.Manager(
        work=journal.work,
        ack=lambda p, o: acks.append(Ack(p, o, time.monotonic())),
        max_in_queue=25,
    ) as manager:
        for item in items:
            assert manager.enqueue(*item) is workshaper.Enqueued.ACCEPTED
        assert manager.flush(timeout=120)
        assert manager.total_enqueued == manager.total_acked == 600
    report = check(
        [PlannedItem(s, p, o) for s, _, p, o in items], journal.read_journal(journal_dir), acks
    )
    assert report.ok, report.summary() + str(report.order_violations[:3])
    assert report.finished == 600
    assert {a.partition: a.offset for a in acks} == {
        p: max(o for _, _, q, o in items if q == p) for p in range(3)
    }


@pytest.mark.parametrize("concurrency", [1, 16])
def test_producer_and_two_workers_on_real_redis(
    redis_server: RedisServer, namespace: str, journal_dir: Path, concurrency: int
) -> None:
    items = plan_items(3000, partitions=4, sub_keys=50)
    acks: list[Ack] = []
    workers = [
        workshaper.Worker(redis_server.url, namespace, work=journal.work, concurrency=concurrency)
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    try:
        with workshaper.Producer(
            redis_server.url,
            namespace,
            max_in_queue=200,
            ack=lambda p, o: acks.append(Ack(p, o, time.monotonic())),
        ) as producer:
            for start in range(0, len(items), 250):
                statuses = producer.enqueue_many(items[start : start + 250])
                assert set(statuses) == {workshaper.Enqueued.ACCEPTED}
            assert producer.flush(timeout=120)
    finally:
        for w in workers:
            w.stop(timeout=30)
    report = check(
        [PlannedItem(s, p, o) for s, _, p, o in items], journal.read_journal(journal_dir), acks
    )
    assert report.ok, report.summary() + str(report.order_violations[:3])
    assert report.finished == 3000 and report.reruns == 0
    assert sum(w.stats["finished"] for w in workers) == 3000


def test_sub_keys_run_in_parallel_and_none_sub_keys_have_no_order(
    redis_server: RedisServer, namespace: str
) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()
    barrier = threading.Event()

    def work(message: Any, partition: int, offset: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running >= 4:
                barrier.set()
        barrier.wait(10)  # holds until 4 items run at once: fails by timeout if serialized
        with lock:
            running -= 1

    worker = workshaper.Worker(redis_server.url, namespace, work=work, concurrency=4).start()
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([(None, "x", 0, o) for o in range(8)])
            assert producer.flush(timeout=30)
    finally:
        worker.stop(timeout=10)
    assert peak == 4


def test_async_handlers_run_on_an_event_loop(redis_server: RedisServer, namespace: str) -> None:
    import asyncio

    seen: list[tuple[int, int, int]] = []
    concurrent = 0
    peak = 0

    async def work(message: Any, partition: int, offset: int) -> None:
        nonlocal concurrent, peak
        concurrent += 1
        peak = max(peak, concurrent)
        await asyncio.sleep(0.005)
        seen.append((partition, offset, workshaper.current_job().attempt))
        concurrent -= 1

    worker = workshaper.Worker(redis_server.url, namespace, work=work, concurrency=8).start()
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([(f"k{o % 8}", o, 0, o) for o in range(200)])
            assert producer.flush(timeout=30)
    finally:
        worker.stop(timeout=10)
    assert sorted(o for _, o, _ in seen) == list(range(200))
    assert peak > 1
    assert os.getpid()  # ran in this process, on the worker's loop thread
