"""S1 by key count (issue 9): what a lease costs when sub keys are many.

Rows: 10 sub keys, 1,000 sub keys (key and partition each drawn at random per item, so about
80 and 8,000 (partition, sub key) pairs), and one sub key per item (every lease holds one
item). Each row on a fresh private redis-server:

- WorkShaper: ``items`` no-op items of ~100 B, 8 partitions, 1 producer (``enqueue_many`` of
  1,000, ``max_in_queue`` 200,000), 2 ``workshaper-worker`` processes at default settings;
- its baseline in the same row: a raw Redis list queue, one list, one producer pipelining
  ``RPUSH`` (one item each) 500 per round trip, one consumer process doing ``LPOP key 500``
  and a no-op call per message.

Reported per row: items/s, x the raw queue, and from the server's own counters (S4) Redis CPU
and commands per item (the commands Lua scripts run included) for both; for WorkShaper also the
CPU per item of the producer and of the two workers together, so the whole cost is visible.
Also per row, on the same server: the producer alone (the same ``enqueue_many`` calls with no
worker running), the ceiling the enqueue sets on the row whatever the leases cost.

With ``--lanes N`` each row also runs WorkShaper a second time, on the same server right after
today's mode, with the producer's ``lanes=N`` (docs/lanes.md): the table gains its items/s, x
the raw queue and CPU per item next to today's, row by row.

The consumer runs as ``python -m workshaper_tools.bench.manykeys URL OUT_JSON``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper import Producer
from workshaper_tools.bench.common import (
    BenchFailure,
    Items,
    RedisCost,
    RedisSnapshot,
    bench_env,
    plan_noop,
    private_redis,
    say,
)
from workshaper_tools.bench.throughput import RunConfig, WsRun, feed_batches, run_workshaper

#: (label, sub keys; 0 = one per item)
ROWS: tuple[tuple[str, int], ...] = (("10", 10), ("1,000", 1000), ("one per item", 0))
PARTITIONS = 8
ENQUEUE_BATCH = 1000
MAX_IN_QUEUE = 200_000
RAW_KEY = "rawq1"
RAW_PUSH = 500
RAW_POP = 500
IDLE_SLEEP = 0.0005


def consume(url: str, out: str) -> None:
    """The raw queue's consumer: LPOP 500 until the stop flag, a no-op per message."""
    client = redis.Redis.from_url(url)
    client.set(f"{RAW_KEY}:ready", 1)
    count, last = 0, 0.0
    while True:
        got: list[bytes] | None = client.lpop(RAW_KEY, RAW_POP)  # type: ignore[assignment]
        if got:
            for message in got:
                _noop(message)
            count += len(got)
            last = time.monotonic()
            client.set(f"{RAW_KEY}:count", count)
        elif client.exists(f"{RAW_KEY}:stop"):
            break
        else:
            time.sleep(IDLE_SLEEP)
    Path(out).write_text(json.dumps({"count": count, "last": last}))


def _noop(message: bytes) -> None:
    pass


@dataclass
class RawRun:
    items: int
    seconds: float
    cost: RedisCost

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def run_raw(url: str, items: Items, log_dir: Path) -> RawRun:
    client = redis.Redis.from_url(url)
    out = log_dir / "raw1-consumer.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workshaper_tools.bench.manykeys", url, str(out)], env=bench_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not client.exists(f"{RAW_KEY}:ready"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchFailure("the raw queue's consumer did not start")
            time.sleep(0.01)
        before = RedisSnapshot.take(client)
        started = time.monotonic()
        messages = [t[1] for t in items.tuples]
        for start in range(0, len(messages), RAW_PUSH):
            pipe = client.pipeline(transaction=False)
            for message in messages[start : start + RAW_PUSH]:
                pipe.rpush(RAW_KEY, message)
            pipe.execute()
        deadline = time.monotonic() + 600
        while int(client.get(f"{RAW_KEY}:count") or 0) < len(messages):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchFailure("the raw queue's consumer did not drain the list")
            time.sleep(0.002)
        after = RedisSnapshot.take(client)
        client.set(f"{RAW_KEY}:stop", 1)
        proc.wait(30)
        result = json.loads(out.read_text())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        client.close()
    if result["count"] != len(messages):
        raise BenchFailure(f"raw queue consumed {result['count']} of {len(messages)} messages")
    return RawRun(len(messages), result["last"] - started, RedisCost.between(before, after))


def _costs(cost: RedisCost, items: int) -> dict[str, float]:
    return {
        "redis_cpu_us": cost.cpu_seconds * 1e6 / items,
        "commands": cost.all_calls / items,
        "scripts": cost.calls.get("evalsha", 0) / items,
        "round_trips": cost.reads / items,
    }


def run_enqueue_alone(url: str, items: Items, config: RunConfig) -> float:
    """Items/s of the producer with no worker running: every item is enqueued and none is
    claimed, so Redis runs the enqueue scripts alone. What is left in Redis is the caller's to
    flush."""
    producer = Producer(url, "e" + uuid.uuid4().hex[:10], max_in_queue=config.max_in_queue)
    try:
        started = time.monotonic()
        refused = feed_batches(producer, items, config)
        elapsed = time.monotonic() - started
    finally:
        producer.close()
    if refused:
        raise BenchFailure(f"enqueue alone: {refused} items were not accepted")
    return len(items) / elapsed


def _ws_costs(run: WsRun) -> dict[str, float]:
    ws = _costs(run.cost, run.items)
    # Where the rest of the CPU goes: the producer (this process) and the workers together.
    ws["producer_cpu_us"] = run.cpu["producer (bench process)"] * 1e6 / run.items
    ws["workers_cpu_us"] = (
        sum(seconds for label, seconds in run.cpu.items() if label.startswith("worker "))
        * 1e6
        / run.items
    )
    return ws


def _row(args: Any, log_dir: Path, label: str, sub_keys: int) -> dict[str, Any]:
    items = plan_noop(args.s1keys_items, PARTITIONS, sub_keys, random_partition=True)
    pairs = len(set(zip(items.plan.partitions, items.plan.sub_keys, strict=True)))
    config = RunConfig(
        workers=args.workers,
        concurrency=None,
        max_in_queue=MAX_IN_QUEUE,
        enqueue_batch=ENQUEUE_BATCH,
    )
    lanes: int | None = getattr(args, "lanes", None)
    lanes_run: WsRun | None = None
    with private_redis() as server, redis.Redis.from_url(server.url) as client:
        raw = run_raw(server.url, items, log_dir)
        client.flushall()
        enqueue_alone = run_enqueue_alone(server.url, items, config)
        client.flushall()
        run = run_workshaper(server.url, items, config, log_dir)
        if lanes is not None:
            client.flushall()
            lanes_config = RunConfig(
                workers=config.workers,
                concurrency=config.concurrency,
                max_in_queue=config.max_in_queue,
                enqueue_batch=config.enqueue_batch,
                lanes=lanes,
            )
            lanes_run = run_workshaper(server.url, items, lanes_config, log_dir)
    ws = _ws_costs(run)
    row: dict[str, Any] = {
        "row": label,
        "sub_keys": sub_keys,
        "pairs": pairs,
        "items": len(items),
        "rate": run.rate,
        "raw_rate": raw.rate,
        "ratio": run.rate / raw.rate,
        "enqueue_alone_rate": enqueue_alone,
        "workshaper": ws,
        "raw_queue": _costs(raw.cost, raw.items),
        "verdict": run.verdict.summary(),
    }
    say(
        f"  {label:>12} sub keys ({pairs:,} pairs): {run.rate:9,.0f} items/s, raw queue"
        f" {raw.rate:9,.0f} -> x{row['ratio']:.2f}; Redis CPU {ws['redis_cpu_us']:.2f} us/item,"
        f" {ws['commands']:.2f} commands/item; producer {ws['producer_cpu_us']:.1f}, workers"
        f" {ws['workers_cpu_us']:.1f} us CPU/item; producer alone {enqueue_alone:,.0f} items/s"
        f" (x{enqueue_alone / raw.rate:.2f}) - {run.verdict.summary()}"
    )
    if lanes_run is not None:
        lw = _ws_costs(lanes_run)
        row["lanes"] = {
            "lanes": lanes,
            "rate": lanes_run.rate,
            "ratio": lanes_run.rate / raw.rate,
            "workshaper": lw,
            "verdict": lanes_run.verdict.summary(),
        }
        say(
            f"  {label:>12} sub keys, {lanes} lanes: {lanes_run.rate:9,.0f} items/s"
            f" -> x{row['lanes']['ratio']:.2f} (today's mode x{row['ratio']:.2f}); Redis CPU"
            f" {lw['redis_cpu_us']:.2f} us/item, {lw['commands']:.2f} commands/item; producer"
            f" {lw['producer_cpu_us']:.1f}, workers {lw['workers_cpu_us']:.1f} us CPU/item"
            f" - {lanes_run.verdict.summary()}"
        )
    return row


def scenario_s1keys(args: Any, log_dir: Path) -> dict[str, Any]:
    lanes = getattr(args, "lanes", None)
    both = "" if lanes is None else f"; each row in today's mode, then with {lanes} lanes"
    say(
        f"S1 by key count: {args.s1keys_items:,} items, {PARTITIONS} partitions, enqueue_many"
        f" {ENQUEUE_BATCH}, {args.workers} workers at defaults; raw queue RPUSH x{RAW_PUSH} /"
        f" LPOP {RAW_POP}{both}"
    )
    result: dict[str, Any] = {
        "items": args.s1keys_items,
        "rows": [_row(args, log_dir, label, keys) for label, keys in ROWS],
    }
    if lanes is not None:
        result["lanes"] = lanes
    return result


def markdown(s: dict[str, Any]) -> list[str]:
    lanes = s.get("lanes")
    out = [
        "",
        f"### S1 by key count ({s['items']:,} items, {PARTITIONS} partitions, 2 workers at"
        " defaults; raw queue: RPUSH x500 per round trip, LPOP 500"
        + ("" if lanes is None else f"; lanes: the same row with the producer's lanes={lanes}")
        + ")",
        "",
        "| sub keys | (partition, sub key) pairs | items/s | raw queue items/s | x raw queue"
        " | Redis CPU us/item | commands/item | producer, workers CPU us/item"
        " | raw queue: CPU us/item, commands/item | producer alone items/s (x raw queue) |"
        + (
            ""
            if lanes is None
            else f" {lanes} lanes: items/s | {lanes} lanes: x raw queue"
            f" | {lanes} lanes: Redis, producer, workers CPU us/item |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        + ("" if lanes is None else "---:|---:|---|"),
    ]
    for r in s["rows"]:
        ws, raw = r["workshaper"], r["raw_queue"]
        line = (
            f"| {r['row']} | {r['pairs']:,} | {r['rate']:,.0f} | {r['raw_rate']:,.0f} |"
            f" **{r['ratio']:.2f}** | {ws['redis_cpu_us']:.2f} | {ws['commands']:.2f} |"
            f" {ws['producer_cpu_us']:.1f}, {ws['workers_cpu_us']:.1f} |"
            f" {raw['redis_cpu_us']:.2f}, {raw['commands']:.2f} |"
            f" {r['enqueue_alone_rate']:,.0f} ({r['enqueue_alone_rate'] / r['raw_rate']:.2f}) |"
        )
        if lanes is not None:
            ln = r["lanes"]
            lw = ln["workshaper"]
            line += (
                f" {ln['rate']:,.0f} | **{ln['ratio']:.2f}** |"
                f" {lw['redis_cpu_us']:.2f}, {lw['producer_cpu_us']:.1f},"
                f" {lw['workers_cpu_us']:.1f} |"
            )
        out.append(line)
    return out


def metrics(s: dict[str, Any]) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    for r in s["rows"]:
        rows += [
            (f"S1 {r['row']} keys items/s", r["rate"]),
            (f"S1 {r['row']} keys x raw queue", r["ratio"]),
            (f"S1 {r['row']} keys Redis CPU us/item", r["workshaper"]["redis_cpu_us"]),
            (f"S1 {r['row']} keys commands/item", r["workshaper"]["commands"]),
            (f"S1 {r['row']} keys producer CPU us/item", r["workshaper"]["producer_cpu_us"]),
            (f"S1 {r['row']} keys workers CPU us/item", r["workshaper"]["workers_cpu_us"]),
            (f"S1 {r['row']} keys producer alone items/s", r["enqueue_alone_rate"]),
        ]
        if "lanes" in r:
            rows += [
                (f"S1 {r['row']} keys lanes items/s", r["lanes"]["rate"]),
                (f"S1 {r['row']} keys lanes x raw queue", r["lanes"]["ratio"]),
                (
                    f"S1 {r['row']} keys lanes Redis CPU us/item",
                    r["lanes"]["workshaper"]["redis_cpu_us"],
                ),
            ]
    return rows


if __name__ == "__main__":
    consume(sys.argv[1], sys.argv[2])
