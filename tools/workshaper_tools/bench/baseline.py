"""The S1 baseline: a raw Redis list queue in Python, with none of WorkShaper's guarantees.

One list per partition. The producer (this process) RPUSHes the same messages in pipelines of
the same size as WorkShaper's enqueue batches; each consumer process pops ``LPOP key count``
from every list in one pipelined round trip and calls a no-op per message. No order, no acks,
no leases, no dedupe: the cost of moving bytes through Redis with redis-py, which is what the
S1 target (>= 50% of this) is measured against.

Consumers run as ``python -m workshaper_tools.bench.baseline URL PARTITIONS OUT_JSON``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from workshaper_tools.bench.common import BenchFailure, Items, RedisCost, RedisSnapshot, bench_env

PREFIX = "rawq"
#: Messages per LPOP per list (the worker's batch size is 100 too).
POP_COUNT = 100
#: How long an idle consumer pauses before looking again (the baseline may poll).
IDLE_SLEEP = 0.0005


def _list_key(partition: int) -> str:
    return f"{PREFIX}:{partition}"


def _noop(message: bytes) -> None:
    pass


def consume(url: str, partitions: int, out: str) -> None:
    client = redis.Redis.from_url(url)
    keys = [_list_key(p) for p in range(partitions)]
    client.sadd(f"{PREFIX}:ready", os.getpid())
    count = 0
    last = 0.0
    pending_count = 0
    while True:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.lpop(key, POP_COUNT)
        if pending_count:
            pipe.incrby(f"{PREFIX}:count", pending_count)
        pipe.exists(f"{PREFIX}:stop")
        replies = pipe.execute()
        pending_count = 0
        got = 0
        for reply in replies[: len(keys)]:
            if reply:
                for message in reply:
                    _noop(message)
                got += len(reply)
        if got:
            count += got
            pending_count = got
            last = time.monotonic()
        elif replies[-1]:
            break
        else:
            time.sleep(IDLE_SLEEP)
    Path(out).write_text(json.dumps({"count": count, "last": last}))


@dataclass
class BaselineResult:
    items: int
    seconds: float
    cost: RedisCost

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def run_baseline(
    url: str, items: Items, *, partitions: int, consumers: int, batch: int, log_dir: Path
) -> BaselineResult:
    client = redis.Redis.from_url(url)
    client.delete(f"{PREFIX}:ready", f"{PREFIX}:count", f"{PREFIX}:stop")
    outs = [log_dir / f"baseline-consumer-{i}.json" for i in range(consumers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workshaper_tools.bench.baseline",
                url,
                str(partitions),
                str(out),
            ],
            env=bench_env(),
        )
        for out in outs
    ]
    try:
        deadline = time.monotonic() + 60
        while client.scard(f"{PREFIX}:ready") < consumers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise BenchFailure("baseline consumers did not start")
            time.sleep(0.01)
        before = RedisSnapshot.take(client)
        started = time.monotonic()
        tuples = items.tuples
        for start in range(0, len(tuples), batch):
            by_list: dict[int, list[bytes]] = {}
            for _, message, partition, _ in tuples[start : start + batch]:
                by_list.setdefault(partition, []).append(message)
            pipe = client.pipeline(transaction=False)
            for partition, messages in by_list.items():
                pipe.rpush(_list_key(partition), *messages)
            pipe.execute()
        deadline = time.monotonic() + 600
        while int(client.get(f"{PREFIX}:count") or 0) < len(tuples):
            if time.monotonic() > deadline:
                raise BenchFailure("baseline consumers did not drain the lists in 600s")
            time.sleep(0.002)
        after = RedisSnapshot.take(client)
        client.set(f"{PREFIX}:stop", 1)
        for p in procs:
            p.wait(30)
        results = [json.loads(out.read_text()) for out in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        client.close()
    total = sum(r["count"] for r in results)
    if total != len(tuples):
        raise BenchFailure(f"baseline consumed {total} of {len(tuples)} messages")
    last = max(r["last"] for r in results)
    return BaselineResult(len(tuples), last - started, RedisCost.between(before, after))


if __name__ == "__main__":
    consume(sys.argv[1], int(sys.argv[2]), sys.argv[3])
