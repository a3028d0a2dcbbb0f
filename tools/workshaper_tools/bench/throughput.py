"""S1 throughput: producer + worker processes + ack loop, no-op work, vs the raw list queue.

items/s is counted from the first enqueue to the last ``ack`` call (the one that covered the
last offset of the last partition). The baseline (``baseline.py``) runs on the same Redis in the
same run, alternating with WorkShaper when ``repeats`` > 1; the ratio of medians is reported.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper import Enqueued, Producer
from workshaper_tools.bench.baseline import BaselineResult, run_baseline
from workshaper_tools.bench.common import (
    BenchFailure,
    Items,
    RedisCost,
    RedisSnapshot,
    WorkerFleet,
    cpu_seconds,
    median,
    plan_noop,
    private_redis,
    say,
)
from workshaper_tools.bench.handlers import Record
from workshaper_tools.bench.profile import Profiler, summarize
from workshaper_tools.bench.verify import AckCall, Verdict, verify
from workshaper_tools.testing.lanes import lanes_option

#: Items per enqueue_many call: about 1,000 per partition at 8 partitions (the producer's cap
#: per script call), so one call is one round trip.
ENQUEUE_BATCH = 8000


@dataclass
class RunConfig:
    workers: int = 2
    concurrency: int | None = 8  # None: the worker's default
    batch_size: int | None = None  # worker default
    max_in_queue: int = 5000
    enqueue_batch: int = ENQUEUE_BATCH
    timeout: float = 900.0
    lanes: int | None = None  # the producer's lanes; None: today's mode


@dataclass
class WsRun:
    items: int
    seconds: float
    enqueue_seconds: float
    verdict: Verdict
    cost: RedisCost
    worker_peak_rss_kib: list[int]
    redis_peak_memory: int
    acks: int
    profiles: list[Any]
    records: list[Record]
    ack_calls: list[AckCall]
    cpu: dict[str, float]  # CPU seconds in the timed window, by process

    @property
    def rate(self) -> float:
        return self.items / self.seconds


Feed = Callable[[Producer, Items, "RunConfig"], int]


def feed_batches(producer: Producer, items: Items, config: RunConfig) -> int:
    """Enqueue everything as fast as the producer takes it; returns how many were refused."""
    tuples = items.tuples
    refused = 0
    for start in range(0, len(tuples), config.enqueue_batch):
        statuses = producer.enqueue_many(tuples[start : start + config.enqueue_batch])
        refused += sum(1 for s in statuses if s is not Enqueued.ACCEPTED)
    return refused


def run_workshaper(
    url: str,
    items: Items,
    config: RunConfig,
    log_dir: Path,
    *,
    handler: str = "workshaper_tools.bench.handlers:noop",
    profile_dir: Path | None = None,
    feed: Feed | None = None,
) -> WsRun:
    """One timed run; raises BenchFailure when an invariant broke or items were lost."""
    namespace = "b" + uuid.uuid4().hex[:10]
    fleet = WorkerFleet(
        url,
        namespace,
        handler,
        processes=config.workers,
        concurrency=config.concurrency,
        batch_size=config.batch_size,
        log_dir=log_dir,
    )
    acks: list[AckCall] = []

    def ack(partition: int, watermark: int) -> None:
        acks.append(AckCall(partition, watermark, time.monotonic()))

    client = redis.Redis.from_url(url)
    producer: Producer | None = None
    profiler = Profiler(profile_dir) if profile_dir is not None else None
    try:
        fleet.start()
        producer = Producer(
            url, namespace, max_in_queue=config.max_in_queue, ack=ack, **lanes_option(config.lanes)
        )
        if profiler is not None:
            profiler.attach("producer", os.getpid())
            for i, pid in enumerate(fleet.pids()):
                profiler.attach(f"worker{i}", pid)
            profiler.wait_attached()
        pids = {"producer (bench process)": os.getpid()}
        pids.update({f"worker {i}": pid for i, pid in enumerate(fleet.pids())})
        cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        before = RedisSnapshot.take(client)
        started = time.monotonic()
        tuples = items.tuples
        refused = (feed or feed_batches)(producer, items, config)
        enqueued = time.monotonic()
        if refused:
            raise BenchFailure(f"{refused} items were not accepted")
        deadline = time.monotonic() + config.timeout
        while not producer.flush(timeout=0.2):
            if fleet.exited():
                raise BenchFailure(f"a worker exited during the run:\n{fleet.logs_tail()}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"not everything was acked within {config.timeout}s")
        after = RedisSnapshot.take(client)
        cpu = {label: cpu_seconds(pid) - cpu_before[label] for label, pid in pids.items()}
        cpu["redis-server"] = after.cpu - before.cpu
        profiles = []
        if profiler is not None:
            for rec in profiler.stop():
                profiles.append(summarize(rec.label, rec.path))
        finished = max(a.at for a in acks)
        peak = int(client.info("memory")["used_memory_peak"])
        producer.close()
        producer = None
        records = fleet.stop()
        verdict = verify(items.plan, records, acks)
        if not verdict.ok:
            raise BenchFailure(f"invariant broken: {verdict.summary()}")
        return WsRun(
            len(tuples),
            finished - started,
            enqueued - started,
            verdict,
            RedisCost.between(before, after),
            fleet.peak_rss_kib,
            peak,
            len(acks),
            profiles,
            records,
            acks,
            cpu,
        )
    finally:
        if profiler is not None:
            profiler.kill()
        if producer is not None:
            producer.close()
        fleet.kill()
        client.close()


def _flush(url: str) -> None:
    """Empty the bench's own private server between runs (never the shared one)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def scenario_s1(args: Any, log_dir: Path) -> dict[str, Any]:
    items = plan_noop(args.s1_items, args.partitions, args.sub_keys)
    config = RunConfig(
        workers=args.workers,
        concurrency=args.concurrency,
        max_in_queue=args.max_in_queue,
        lanes=getattr(args, "lanes", None),
    )
    lanes = "" if config.lanes is None else f" (producer with {config.lanes} lanes)"
    say(
        f"S1 throughput: {len(items)} items, {args.partitions} partitions, {args.sub_keys} sub"
        f" keys, 1 producer{lanes} + {config.workers} workers x {config.concurrency}, no-op work"
    )
    baselines: list[BaselineResult] = []
    runs: list[WsRun] = []
    with private_redis() as server:
        for round_ in range(args.repeats):
            base = run_baseline(
                server.url,
                items,
                partitions=args.partitions,
                consumers=config.workers,
                batch=config.enqueue_batch,
                log_dir=log_dir,
            )
            baselines.append(base)
            _flush(server.url)
            say(f"  round {round_ + 1}: raw list queue {base.rate:,.0f} items/s")
            run = run_workshaper(server.url, items, config, log_dir)
            runs.append(run)
            _flush(server.url)
            say(
                f"  round {round_ + 1}: WorkShaper     {run.rate:,.0f} items/s"
                f" ({run.rate / base.rate:.0%} of the baseline; enqueue done after"
                f" {run.enqueue_seconds:.2f}s) - {run.verdict.summary()}"
            )
    base_rate = median([b.rate for b in baselines])
    ws_rate = median([r.rate for r in runs])
    ratio = ws_rate / base_rate
    say(
        f"S1: WorkShaper {ws_rate:,.0f} items/s vs raw list queue {base_rate:,.0f} items/s"
        f" = {ratio:.0%} (target >= 50%)"
    )
    result: dict[str, Any] = {
        "items": len(items),
        "partitions": args.partitions,
        "sub_keys": args.sub_keys,
        "workers": config.workers,
        "concurrency": config.concurrency,
        "max_in_queue": config.max_in_queue,
        "baseline_rates": [b.rate for b in baselines],
        "workshaper_rates": [r.rate for r in runs],
        "baseline_rate": base_rate,
        "workshaper_rate": ws_rate,
        "ratio": ratio,
        "target_ratio": 0.5,
        "met": ratio >= 0.5,
        "verdicts": [r.verdict.summary() for r in runs],
        "_runs": runs,
        "_baselines": baselines,
    }
    if config.lanes is not None:
        result["lanes"] = config.lanes
    return result
