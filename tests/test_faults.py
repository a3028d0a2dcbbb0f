"""Real worker processes under real signals: SIGKILL, SIGSTOP past the lease, poison items,
and the multi-process run that checks every invariant from the journal."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import workshaper
from workshaper.admin import Admin
from workshaper.keys import NamespaceKeys
from workshaper_tools.testing import RedisServer
from workshaper_tools.testing.checker import Ack, PlannedItem, check
from workshaper_tools.testing.journal import Event, read_journal

from .conftest import wait_for
from .fleet import fleet

HANDLER = "tests.fault_handlers:work"


def events_for(journal_dir: Path, partition: int, offset: int, kind: str = "s") -> list[Event]:
    return [
        e
        for e in read_journal(journal_dir)
        if (e.partition, e.offset, e.kind) == (partition, offset, kind)
    ]


def registered_workers(server: RedisServer, namespace: str) -> int:
    return len(Admin(server.url, namespace).workers())


def test_killed_worker_lease_is_reclaimed_within_lease_plus_2s_with_attempt_plus_1(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    lease = 1.0
    with fleet(redis_server.url, namespace, tmp_path, WS_SLOW_FIRST="0:5:30") as f:
        victim = f.start(handler=HANDLER, lease=lease)
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("slow", "m", 0, 5), ("slow", "m", 0, 6), ("other", "m", 0, 7)])
            wait_for(lambda: events_for(tmp_path, 0, 5))
            f.start(handler=HANDLER, lease=lease)
            wait_for(lambda: registered_workers(redis_server, namespace) == 2)
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            assert producer.flush(timeout=60)
    first, second = events_for(tmp_path, 0, 5)
    assert (first.pid, first.attempt) == (victim.pid, 1)
    assert second.pid != victim.pid and second.attempt == 2  # the interrupted item, attempt + 1
    assert second.at - killed_at <= lease + 2.0
    [after] = events_for(tmp_path, 0, 6)
    assert after.at > events_for(tmp_path, 0, 5, "e")[0].at


def test_paused_worker_is_fenced_off_and_cannot_complete(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    acks: list[Ack] = []
    with fleet(redis_server.url, namespace, tmp_path, WS_SLOW_FIRST="0:1:3") as f:
        paused = f.start(handler=HANDLER, lease=1.0)
        items = [("a", "m", 0, 0), ("a", "m", 0, 1), ("a", "m", 0, 2), ("a", "m", 0, 3)]
        with workshaper.Producer(
            redis_server.url, namespace, ack=lambda p, o: acks.append(Ack(p, o, time.monotonic()))
        ) as producer:
            producer.enqueue_many(items)
            wait_for(lambda: events_for(tmp_path, 0, 1))
            # Offset 0's completion travels to Redis on the worker's coordinator thread, while
            # offset 1 already runs: pausing before it lands would make offset 0 a legitimate
            # rerun. Its ack says it landed.
            wait_for(lambda: any(a.offset == 0 for a in acks), timeout=30)
            os.kill(paused.pid, signal.SIGSTOP)  # past the lease: its sub key moves on
            f.start(handler=HANDLER, lease=1.0)
            assert producer.flush(timeout=60)
            os.kill(paused.pid, signal.SIGCONT)  # it wakes up still believing it holds the lease
            wait_for(lambda: "lease lost" in f.logs(), timeout=30)
            # Its late completion of offset 1 must not have been applied a second time, and it
            # must not have started offset 2 or 3.
            time.sleep(0.5)
    events = read_journal(tmp_path)
    assert [e.offset for e in events if e.kind == "s" and e.pid == paused.pid] == [0, 1]
    assert [(e.offset, e.attempt) for e in events if e.kind == "s" and e.pid != paused.pid] == [
        (1, 2),
        (2, 1),
        (3, 1),
    ]
    report = check([PlannedItem("a", 0, o) for o in range(4)], events, acks)
    assert report.ok, report.summary()
    pkeys = NamespaceKeys(namespace).partition(0)
    client = redis_server.client()
    assert client.hget(pkeys.meta, "acked") == b"3" and client.llen(pkeys.accepted) == 0


def test_poison_item_that_kills_its_worker_ends_dead_lettered(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    max_attempts = 2
    with fleet(redis_server.url, namespace, tmp_path, WS_POISON="0:3") as f:
        for _ in range(2):
            f.start("--max-attempts", str(max_attempts), handler=HANDLER, lease=1.0, concurrency=2)
        items = [("a", "m", 0, o) for o in range(6)] + [("b", "m", 0, o) for o in range(6, 9)]
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many(items)
            deadline = time.monotonic() + 90
            while not producer.flush(timeout=0.2):
                assert time.monotonic() < deadline, "poison item never dead-lettered"
                for proc in list(f.procs):  # a supervisor: restart what died
                    if proc.poll() is not None:
                        f.procs.remove(proc)
                        f.start(
                            "--max-attempts",
                            str(max_attempts),
                            handler=HANDLER,
                            lease=1.0,
                            concurrency=2,
                        )
    crashes = len(events_for(tmp_path, 0, 3))
    assert 1 < crashes <= max_attempts + 1
    [dead] = Admin(redis_server.url, namespace).dead_letters(0)
    assert dead.offset == 3 and dead.error_type == "LeaseExpired"
    ended = {(e.partition, e.offset) for e in read_journal(tmp_path) if e.kind == "e"}
    assert ended == {(0, o) for o in range(9) if o != 3}  # no innocent item was given up


def test_multi_process_fleet_with_a_sigkill_keeps_every_invariant(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A producer, 3 workshaper-worker processes, 4 partitions, 200 sub keys, 20,000 items,
    random work delays, one worker SIGKILLed mid-run; every invariant checked."""
    rng = random.Random(2026)
    partitions, max_in_queue = 4, 2000
    next_offset = [0] * partitions
    items: list[tuple[Any, ...]] = []
    for i in range(20_000):
        p = rng.randrange(partitions)
        next_offset[p] += rng.choice((1, 1, 2))
        items.append((f"k{rng.randrange(200)}", {"i": i, "pad": "x" * 40}, p, next_offset[p]))
    acks: list[Ack] = []
    peak_in_queue = 0
    stop_monitor = threading.Event()
    client = redis_server.client()

    def monitor() -> None:  # backpressure: sample every partition's unacked count
        nonlocal peak_in_queue
        keys = [NamespaceKeys(namespace).partition(p) for p in range(partitions)]
        while not stop_monitor.is_set():
            pipe = client.pipeline()
            for k in keys:
                pipe.llen(k.accepted)  # accepted and not acked: what backpressure bounds
            peak_in_queue = max([peak_in_queue, *pipe.execute()])
            stop_monitor.wait(0.01)

    watcher = threading.Thread(target=monitor)
    with fleet(redis_server.url, namespace, tmp_path, WS_WORK_DELAY_MAX="0.001") as f:
        procs = [f.start(handler=HANDLER, lease=2.0, concurrency=8) for _ in range(3)]
        watcher.start()
        try:
            with workshaper.Producer(
                redis_server.url,
                namespace,
                max_in_queue=max_in_queue,
                ack=lambda p, o: acks.append(Ack(p, o, time.monotonic())),
            ) as producer:
                killed = False
                for start in range(0, len(items), 500):
                    chunk = items[start : start + 500]
                    assert set(producer.enqueue_many(chunk)) == {workshaper.Enqueued.ACCEPTED}
                    if start == 4000:  # re-delivery of items in flight: deduped, never re-run
                        again = producer.enqueue_many(items[3000:4500])
                        assert workshaper.Enqueued.ACCEPTED not in again
                    if not killed and start >= 8000:
                        os.kill(procs[1].pid, signal.SIGKILL)
                        killed = True
                assert producer.flush(timeout=180)
                replay = producer.enqueue_many(items[:2000])  # a restarted consumer's replay
                assert set(replay) == {workshaper.Enqueued.ALREADY_ACKED}
        finally:
            stop_monitor.set()
            watcher.join()
    events = read_journal(tmp_path)
    report = check([PlannedItem(s, p, o) for s, _, p, o in items], events, acks)
    assert report.ok, (
        report.summary(),
        report.order_violations[:3],
        report.watermark_violations[:3],
        report.lost[:3],
    )
    assert report.finished == 20_000
    assert peak_in_queue <= max_in_queue
    # Every re-run is of an item the killed worker had started: dedupe never re-ran anything.
    started_by_victim = {
        (e.partition, e.offset) for e in events if e.kind == "s" and e.pid == procs[1].pid
    }
    starts: dict[tuple[int, int], int] = {}
    for e in events:
        if e.kind == "s":
            starts[(e.partition, e.offset)] = starts.get((e.partition, e.offset), 0) + 1
    rerun = {k for k, n in starts.items() if n > 1}
    assert rerun <= started_by_victim
    # The last ack of each partition is its highest offset (Kafka commits offset + 1).
    last = {}
    for a in acks:
        last[a.partition] = a.offset
    assert last == {p: next_offset[p] for p in range(partitions)}
