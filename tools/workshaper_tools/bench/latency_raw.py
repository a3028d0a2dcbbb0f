"""S3's floor: a raw Redis list queue on the same schedule, in the same run, on the same server.

S3 offers a fixed load with one ``enqueue`` call per item. Whether a target in absolute
milliseconds at an absolute rate is within reach depends on the machine: one round trip to
Redis costs a Python client tens of microseconds of CPU, and a small machine has few cores. So
S3 first runs the least a queue can do at that schedule, and reports it beside WorkShaper's row:

- the same items, due at the same times, split over the same number of producer processes
  (a partition to one producer), each item one ``RPUSH`` of its ~100 B message to its
  partition's list (one list per partition, no sub keys, no order, no acks, no dedupe);
- as many consumer processes as S3 has workers, each popping up to 100 messages of the first
  list that has any, blocking while all are empty (``BLMPOP``, one round trip a wake-up), and
  calling a no-op per message.

Latency is from the start of the item's ``RPUSH`` call to the moment its consumer has it in
hand (WorkShaper's "enqueue -> start of work"); CPU per item is split by process kind. If this
floor alone needs most of the machine at the offered rate, S3's own p99 measures the machine.

Consumers run as ``python -m workshaper_tools.bench.latency_raw URL PARTITIONS OUT_JSON``.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from workshaper_tools.bench.common import (
    BenchFailure,
    Items,
    bench_env,
    cpu_seconds,
    joined,
    kill_all,
    latency_stats,
    paced,
    percentile,
    redis_cpu_seconds,
)

PREFIX = "rawq3"
#: Messages per BLMPOP at most (the worker's batch is 100 too).
POP_COUNT = 100
#: How long a consumer blocks before it looks for the stop flag again.
BLOCK_SECONDS = 0.2


def _list_key(partition: int) -> str:
    return f"{PREFIX}:{partition}"


def _noop(message: bytes) -> None:
    pass


@dataclass(frozen=True)
class RawProducerJob:
    url: str
    rate: float
    t0: float  # CLOCK_MONOTONIC when item 0 is due
    out: str  # JSON file for the results


def produce(job: RawProducerJob, positions: list[int], partitions: list[int]) -> None:
    """One producer process: one RPUSH per item (``positions`` in the plan, to ``partitions``)
    at its global due time; writes when each call began and its CPU to ``job.out``."""
    client = redis.Redis.from_url(job.url)
    filler = b"x" * 92  # with the position, about the ~100 B of S3's messages
    called: list[float] = []
    lag: list[float] = []
    cpu = time.process_time()
    for index in paced(positions, job.t0, job.rate, lag, called):
        client.rpush(_list_key(partitions[index]), b"%d|%s" % (positions[index], filler))
    cpu = time.process_time() - cpu
    client.close()
    result = {"positions": positions, "called": called, "lag": lag, "cpu": cpu}
    Path(job.out).write_text(json.dumps(result, separators=(",", ":")))


def consume(url: str, partitions: int, out: str) -> None:
    """One consumer process: BLMPOP and a no-op per message, until the stop flag is set and
    the lists are empty; writes each message's position and the time it was in hand."""
    client = redis.Redis.from_url(url)
    keys = [_list_key(p) for p in range(partitions)]
    client.incr(f"{PREFIX}:ready")
    positions: list[int] = []
    taken: list[float] = []
    monotonic = time.monotonic
    while True:
        # BLMPOP (Redis 7): up to POP_COUNT messages of the first list that has any, in one
        # round trip, blocking while all are empty: the least a consumer can spend per wake-up.
        reply = client.blmpop(BLOCK_SECONDS, len(keys), *keys, direction="LEFT", count=POP_COUNT)
        if reply is None:
            if client.exists(f"{PREFIX}:stop"):
                break
            continue
        now = monotonic()
        # [list name, [messages]]; bytes, without decode_responses (no check per message: this
        # loop is the floor WorkShaper is measured against).
        for message in cast(list[bytes], reply[1]):
            _noop(message)
            positions.append(int(message.partition(b"|")[0]))
            taken.append(now)
    client.close()
    Path(out).write_text(json.dumps({"positions": positions, "taken": taken}))


@dataclass
class RawS3Run:
    latencies: list[float]  # per item: its RPUSH call's start -> in a consumer's hand
    lag: list[float]
    achieved: float  # items/s over the span of the producers' calls
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process kind


def run_raw_s3(
    url: str,
    items: Items,
    *,
    rate: float,
    producers: int,
    consumers: int,
    log_dir: Path,
    t0_margin: float,
    timeout: float = 600.0,
) -> RawS3Run:
    """The raw queue at S3's schedule on ``url`` (a private server: its lists are this run's)."""
    client = redis.Redis.from_url(url)
    count = len(items)
    partitions = max(items.plan.partitions) + 1 if count else 1
    outs = [log_dir / f"raw-s3-consumer-{i}.json" for i in range(consumers)]
    consumer_procs: list[subprocess.Popen[bytes]] = []
    producer_procs: list[Any] = []
    try:
        for out in outs:
            argv = [sys.executable, "-m", "workshaper_tools.bench.latency_raw", url]
            consumer_procs.append(
                subprocess.Popen([*argv, str(partitions), str(out)], env=bench_env())
            )
        _wait_ready(client, consumers, consumer_procs)
        consumers_cpu = -sum(cpu_seconds(popen.pid) for popen in consumer_procs)  # from here on
        redis_cpu = redis_cpu_seconds(client)
        context = multiprocessing.get_context("spawn")
        t0 = time.monotonic() + t0_margin
        producer_outs = []
        for index in range(producers):
            mine = [i for i, p in enumerate(items.plan.partitions) if p % producers == index]
            out = log_dir / f"raw-s3-producer-{index}.json"
            producer_outs.append(out)
            job = RawProducerJob(url, rate, t0, str(out))
            mine_partitions = [items.plan.partitions[i] for i in mine]
            proc = context.Process(target=produce, args=(job, mine, mine_partitions), daemon=True)
            proc.start()
            producer_procs.append(proc)
        deadline = time.monotonic() + timeout
        for proc in producer_procs:
            if not joined(proc, deadline):
                raise BenchFailure(f"a raw queue producer failed (exit {proc.exitcode})")
        _wait_drained(client, partitions, deadline)
        consumers_cpu += sum(cpu_seconds(popen.pid) for popen in consumer_procs)
        client.set(f"{PREFIX}:stop", 1)
        for popen in consumer_procs:
            if popen.wait(max(1.0, deadline - time.monotonic())) != 0:
                raise BenchFailure(f"a raw queue consumer failed (exit {popen.returncode})")
        redis_cpu = redis_cpu_seconds(client) - redis_cpu
    finally:
        kill_all(producer_procs)
        for popen in consumer_procs:
            if popen.poll() is None:
                popen.kill()
                popen.wait(10)
        client.close()
    return _merge(count, producer_outs, outs, consumers_cpu, redis_cpu)


def _wait_ready(client: redis.Redis, consumers: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while int(client.get(f"{PREFIX}:ready") or 0) < consumers:
        if any(proc.poll() is not None for proc in procs):
            raise BenchFailure("a raw queue consumer exited before it was ready")
        if time.monotonic() > deadline:
            raise BenchFailure("the raw queue's consumers were not ready within 60 s")
        time.sleep(0.01)


def _wait_drained(client: redis.Redis, partitions: int, deadline: float) -> None:
    keys = [_list_key(p) for p in range(partitions)]
    while client.exists(*keys):
        if time.monotonic() > deadline:
            raise BenchFailure("the raw queue's consumers did not drain its lists in time")
        time.sleep(0.01)


def _merge(
    count: int,
    producer_outs: list[Path],
    consumer_outs: list[Path],
    consumers: float,
    redis_cpu: float,
) -> RawS3Run:
    called = [0.0] * count
    lag: list[float] = []
    producers_cpu = 0.0
    for out in producer_outs:
        data = json.loads(out.read_text())
        for position, at in zip(data["positions"], data["called"], strict=True):
            called[position] = at
        lag += data["lag"]
        producers_cpu += data["cpu"]
    taken: list[float | None] = [None] * count
    for out in consumer_outs:
        data = json.loads(out.read_text())
        for position, at in zip(data["positions"], data["taken"], strict=True):
            if taken[position] is not None:
                raise BenchFailure(f"the raw queue handed out item {position} twice")
            taken[position] = at
    missing = sum(1 for at in taken if at is None)
    if missing:
        raise BenchFailure(f"the raw queue lost {missing} of {count} items")
    latencies = [at - call for at, call in zip(taken, called, strict=True) if at is not None]
    span = max(called) - min(called) if count > 1 else 0.0
    achieved = (count - 1) / span if span > 0 else float("nan")
    cpu = {"producers": producers_cpu, "consumers": consumers, "redis-server": redis_cpu}
    return RawS3Run(latencies, lag, achieved, cpu)


def summary(run: RawS3Run, count: int, rate: float) -> dict[str, Any]:
    """The raw queue's row of S3: its latency percentiles, achieved rate, CPU per item and the
    cores it needs at the offered rate."""
    cpu_us = {kind: 1e6 * seconds / count for kind, seconds in run.cpu.items()}
    return {
        "achieved_rate": run.achieved,
        "enqueue_to_start": latency_stats(run.latencies),
        "schedule_lag_p99": percentile(run.lag, 99),
        "cpu_us_per_item": cpu_us,
        "cores_at_offered_rate": sum(cpu_us.values()) * rate / 1e6,
    }


if __name__ == "__main__":
    consume(sys.argv[1], int(sys.argv[2]), sys.argv[3])
