"""Run the lane spike against the raw queue, one private redis-server per key shape."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper_tools.bench.common import (
    BenchFailure,
    Items,
    RedisSnapshot,
    bench_env,
    cpu_seconds,
    plan_noop,
    private_redis,
)
from workshaper_tools.bench.lanes.protocol import LaneKeys, LaneProducer
from workshaper_tools.bench.lanes.worker import CONCURRENCY
from workshaper_tools.bench.manykeys import ENQUEUE_BATCH, PARTITIONS, ROWS, run_raw
from workshaper_tools.bench.ordering import ideal_seconds, plan_sleeps

S2_ROWS = ("100", "1000", "10000", "unordered")
S2_ITEMS = 10_000
START_TIMEOUT = 60.0
DRAIN_TIMEOUT = 600.0
POLL = 0.002


def check(items: Items, records: list[tuple[int, str, int, float]]) -> None:
    """Every item ran exactly once, and per (partition, sub key) in offset order."""
    ran = sorted((p, o) for p, _, o, _ in records)
    planned = sorted(zip(items.plan.partitions, items.plan.offsets, strict=True))
    if ran != planned:
        raise BenchFailure(f"lanes: ran {len(ran)} items, planned {len(planned)}, or not the same")
    starts: dict[tuple[int, str], list[tuple[float, int]]] = defaultdict(list)
    for partition, sub, offset, start in records:
        starts[partition, sub].append((start, offset))
    for key, runs in starts.items():
        offsets = [o for _, o in sorted(runs)]
        if offsets != sorted(offsets):
            raise BenchFailure(f"lanes: order broken for {key}")


@dataclass(frozen=True)
class LaneRun:
    partitions: int
    lanes: int  # per partition
    workers: int
    work: str  # "noop" or "sleep" (the payload's microseconds)


def run_lanes(url: str, items: Items, config: LaneRun, log_dir: Path) -> dict[str, Any]:
    namespace = uuid.uuid4().hex[:10]
    client = redis.Redis.from_url(url)
    workers = config.workers
    outs = [log_dir / f"lanes-{namespace}-{i}.json" for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workshaper_tools.bench.lanes.worker",
                url,
                namespace,
                str(config.partitions),
                str(config.lanes),
                str(i),
                str(workers),
                config.work,
                str(outs[i]),
            ],
            env=bench_env(),
        )
        for i in range(workers)
    ]
    producer = LaneProducer(url, namespace, config.lanes)
    lane_keys = [
        LaneKeys(namespace, p).lane(i)
        for p in range(config.partitions)
        for i in range(config.lanes)
    ]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while client.exists(*(f"lanes:{namespace}:ready:{i}" for i in range(workers))) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise BenchFailure("lanes: a worker did not start")
            time.sleep(0.01)
        cpu_before = [cpu_seconds(p.pid) for p in procs]
        before = RedisSnapshot.take(client)
        started = time.monotonic()
        tuples = items.tuples
        for first in range(0, len(tuples), ENQUEUE_BATCH):
            producer.enqueue_many(tuples[first : first + ENQUEUE_BATCH])
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while sum(_lengths(client, lane_keys)) > 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise BenchFailure("lanes: the lanes did not drain")
            time.sleep(POLL)
        seconds = time.monotonic() - started
        after = RedisSnapshot.take(client)
        worker_cpu = sum(cpu_seconds(p.pid) - b for p, b in zip(procs, cpu_before, strict=True))
        client.set(f"lanes:{namespace}:stop", 1)
        for p in procs:
            p.wait(60)
    finally:
        producer.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        client.close()
    records = [
        (int(p), str(s), int(o), float(t))
        for out in outs
        for p, s, o, t in json.loads(out.read_text())
    ]
    check(items, records)
    n = len(items)
    return {
        "seconds": seconds,
        "rate": n / seconds,
        "redis_cpu_us": (after.cpu - before.cpu) * 1e6 / n,
        "workers_cpu_us": worker_cpu * 1e6 / n,
    }


def _lengths(client: redis.Redis, keys: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.llen(key)
    return [int(x) for x in pipe.execute()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.lanes")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--lanes", type=int, default=16, help="lanes per partition")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--s2", action="store_true", help="S2's rows instead of S1's (one partition, sleeps)"
    )
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="ws-lanes-"))
    if args.s2:
        s2(args, log_dir)
        return
    print(
        f"lane spike: {args.items:,} items, {PARTITIONS} partitions x {args.lanes} lanes,"
        f" {args.workers} workers x 8 threads, enqueue_many {ENQUEUE_BATCH}"
    )
    for label, sub_keys in ROWS:
        items = plan_noop(args.items, PARTITIONS, sub_keys, random_partition=True)
        with private_redis() as server, redis.Redis.from_url(server.url) as client:
            raw = run_raw(server.url, items, log_dir)
            client.flushall()
            config = LaneRun(PARTITIONS, args.lanes, args.workers, "noop")
            lanes = run_lanes(server.url, items, config, log_dir)
        print(
            f"  {label:>12} sub keys: lanes {lanes['rate']:9,.0f} items/s, raw queue"
            f" {raw.rate:9,.0f} -> x{lanes['rate'] / raw.rate:.2f}; Redis CPU"
            f" {lanes['redis_cpu_us']:.2f} us/item, workers {lanes['workers_cpu_us']:.2f}"
            " us/item; every item ran once, in order per sub key",
            flush=True,
        )


def s2(args: argparse.Namespace, log_dir: Path) -> None:
    """Parallel Consumer's table on the spike: 10,000 items (or --items), one partition, seeded
    sleeps of 0-5 ms, 16 slots (2 workers x 8), against the same ideal as S2."""
    items_count = min(args.items, S2_ITEMS)
    slots = args.workers * CONCURRENCY
    print(
        f"lane spike, S2: {items_count:,} items, 1 partition x {args.lanes} lanes,"
        f" {args.workers} workers x {CONCURRENCY} threads, sleep 0-5 ms"
    )
    config = LaneRun(1, args.lanes, args.workers, "sleep")
    for row in S2_ROWS:
        items, sleeps = plan_sleeps(items_count, row)
        ideal, _, _ = ideal_seconds(items, sleeps, slots)
        with private_redis() as server:
            lanes = run_lanes(server.url, items, config, log_dir)
        print(
            f"  {row:>9}: {lanes['seconds']:.3f} s, ideal {ideal:.3f} s"
            f" ({lanes['seconds'] / ideal:.2f}x); every item ran once, in order per sub key",
            flush=True,
        )


if __name__ == "__main__":
    main()
