"""``workshaper demo``: the seed-style job, with a progress bar and a verified summary.

Embedded (default): one process, a Manager on the embedded backend, no server.
``--redis URL --workers N``: a Producer here and N ``workshaper-worker`` processes.

Each item's work records (sub key, offset) in a journal; the summary checks that every sub
key's items ran in offset order and that every item ran.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, cast

import redis

from workshaper.jobs import current_job

JOURNAL_ENV = "WORKSHAPER_DEMO_JOURNAL"
#: The embedded demo's Manager threads (the Manager's default concurrency).
EMBEDDED_THREADS = 8
_journal_client: redis.Redis | None = None


def demo_work(message: dict[str, Any], partition: int, offset: int) -> None:
    """The demo's handler in worker processes: a little work, then a journal line in Redis."""
    global _journal_client
    if _journal_client is None:
        _journal_client = redis.Redis.from_url(os.environ[JOURNAL_ENV])
    _simulate(message)
    job = current_job()
    _journal_client.rpush(
        f"wsdemo:{message['ns']}:journal:{partition}", f"{job.sub_key!s}|{offset}"
    )


def _planned_work(i: int) -> float:
    """Item ``i``'s seconds of "work": deterministic, 0-2 ms, so sub keys visibly run in
    parallel and the summary can say what the work alone takes."""
    return random.Random(i).uniform(0, 0.002)


def _simulate(message: dict[str, Any]) -> None:
    time.sleep(_planned_work(message["i"]))


def ideal_seconds(items: list[tuple[Any, ...]], slots: int) -> float:
    """The least time the items' work can take on ``slots`` threads with sub-key order kept:
    all the work spread evenly, or the longest chain of one sub key, whichever is longer."""
    chains: dict[tuple[int, Any], float] = defaultdict(float)
    for sub_key, message, partition, _ in items:
        chains[(partition, sub_key)] += _planned_work(message["i"])
    return max(sum(chains.values()) / slots, max(chains.values(), default=0.0))


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.start = time.monotonic()
        self._last = 0.0

    def show(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        width = 40
        filled = int(width * done / max(1, self.total))
        rate = done / max(1e-9, now - self.start)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} acked"
            f"  {rate:,.0f} items/s"
        )
        sys.stderr.flush()

    def finish(self, done: int) -> None:
        self.show(done, force=True)
        sys.stderr.write("\n")


def _items(count: int, partitions: int, sub_keys: int, ns: str) -> list[tuple[Any, ...]]:
    rng = random.Random(42)
    offsets = [0] * partitions
    items = []
    for i in range(count):
        p = i % partitions
        items.append((rng.randrange(sub_keys), {"i": i, "ns": ns}, p, offsets[p]))
        offsets[p] += 1
    return items


def _verify(journal: dict[int, list[tuple[int, int]]], items: list[tuple[Any, ...]]) -> str | None:
    """None when every item ran once per run and each sub key in offset order, else why not."""
    expected = {(p, o) for _, _, p, o in items}
    seen: set[tuple[int, int]] = set()
    for partition, events in journal.items():
        last: dict[int, int] = {}
        for sub, offset in events:
            if offset < last.get(sub, -1):
                return f"partition {partition} sub key {sub}: offset {offset} ran after {last[sub]}"
            last[sub] = offset
            seen.add((partition, offset))
    missing = expected - seen
    if missing:
        return f"{len(missing)} items never ran, e.g. {sorted(missing)[:3]}"
    return None


def _summary(
    items: list[tuple[Any, ...]],
    elapsed: float,
    watermarks: dict[int, Any],
    problem: str | None,
    slots: int | None = None,
) -> int:
    print(f"items:      {len(items):,}")
    print(f"elapsed:    {elapsed:.2f} s")
    if slots is not None:
        ideal = ideal_seconds(items, slots)
        print(
            f"ideal:      {ideal:.2f} s (the work alone on {slots} threads, order kept):"
            f" elapsed is {elapsed / ideal:.2f}x ideal"
        )
    print(f"throughput: {len(items) / elapsed:,.0f} items/s (enqueue to last ack)")
    for p in sorted(watermarks):
        print(f"partition {p}: final watermark {watermarks[p]}")
    if problem:
        print(f"ORDER CHECK FAILED: {problem}")
        return 1
    print("order verified: every sub key ran in offset order, every item ran")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.redis is None:
        return _run_embedded(args)
    return _run_fleet(args)


def _run_embedded(args: argparse.Namespace) -> int:
    from workshaper.manager import Manager  # noqa: PLC0415

    count = args.items or 3000
    ns = args.namespace or "demo"
    items = _items(count, args.partitions, args.sub_keys, ns)
    journal: dict[int, list[tuple[int, int]]] = defaultdict(list)
    lock = threading.Lock()
    watermarks: dict[int, int] = {}

    def work(message: dict[str, Any], partition: int, offset: int) -> None:
        _simulate(message)
        with lock:
            journal[partition].append((current_job().sub_key, offset))  # type: ignore[arg-type]

    def ack(partition: int, offset: int) -> None:
        watermarks[partition] = offset

    print(
        f"embedded backend: {count:,} items, {args.partitions} partitions, "
        f"{args.sub_keys} sub keys per partition, max_in_queue {args.max_in_queue or 25},"
        f" {EMBEDDED_THREADS} threads"
    )
    progress = Progress(count)
    start = time.monotonic()
    with Manager(
        work=work,
        ack=ack,
        max_in_queue=args.max_in_queue or 25,
        namespace=ns,
        concurrency=EMBEDDED_THREADS,
    ) as m:
        for item in items:
            m.enqueue(*item)
            progress.show(m.total_acked)
        while not m.flush(timeout=0.1):
            progress.show(m.total_acked)
        progress.finish(m.total_acked)
    elapsed = time.monotonic() - start
    return _summary(items, elapsed, watermarks, _verify(journal, items), EMBEDDED_THREADS)


def _run_fleet(args: argparse.Namespace) -> int:
    from workshaper.cli.common import worker_command  # noqa: PLC0415
    from workshaper.producer import Producer  # noqa: PLC0415

    count = args.items or 20000
    workers = 2 if args.workers is None else max(0, args.workers)
    ns = args.namespace or f"demo-{uuid.uuid4().hex[:8]}"
    items = _items(count, args.partitions, args.sub_keys, ns)
    env = dict(os.environ, **{JOURNAL_ENV: args.redis})
    procs = [
        subprocess.Popen(
            [
                *worker_command(),
                "workshaper.demo:demo_work",
                "--redis",
                args.redis,
                "--namespace",
                ns,
                "--log-level",
                "WARNING",
            ],
            env=env,
        )
        for _ in range(workers)
    ]
    client = redis.Redis.from_url(args.redis)
    if not workers:
        print(f"no workers started: using the workers running on namespace {ns!r}")
    print(
        f"redis {args.redis.split('@')[-1]}: {count:,} items, {workers} worker processes, "
        f"{args.partitions} partitions, {args.sub_keys} sub keys per partition"
    )
    watermarks: dict[int, int] = {}

    def acked() -> int:  # offsets are dense per partition here: watermark + 1 items
        return sum(watermarks.get(p, -1) + 1 for p in range(args.partitions))

    try:
        progress = Progress(count)
        start = time.monotonic()
        with Producer(
            args.redis,
            ns,
            max_in_queue=args.max_in_queue or 1000,
            ack=watermarks.__setitem__,
        ) as producer:
            for i in range(0, count, 500):
                producer.enqueue_many(items[i : i + 500])
                progress.show(acked())
            while not producer.flush(timeout=0.1):
                progress.show(acked())
            progress.finish(acked())
        elapsed = time.monotonic() - start
        journal = {
            p: [
                _split(e)
                for e in cast(list[bytes], client.lrange(f"wsdemo:{ns}:journal:{p}", 0, -1))
            ]
            for p in range(args.partitions)
        }
        return _summary(items, elapsed, watermarks, _verify(journal, items))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        _cleanup(client, ns)


def _split(entry: bytes) -> tuple[int, int]:
    sub, offset = entry.split(b"|")
    return int(sub), int(offset)


def _cleanup(client: redis.Redis, ns: str) -> None:
    for pattern in (f"ws:{{{ns}:*", f"ws:{{{ns}}}:*", f"wsdemo:{ns}:*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
