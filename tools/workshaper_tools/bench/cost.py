"""S4: what one item costs at saturation, from Redis's own counters.

Taken over the timed window of an S1 run (``INFO commandstats`` / ``INFO cpu`` / ``INFO stats``
deltas), next to the same numbers for the raw list queue:

- round trips per item: ``total_reads_processed`` (socket reads: one per pipelined request,
  or a few for a large one) - a server-side count of client round trips;
- scripts per item (EVALSHA) and Redis commands per item, counting the commands that Lua
  scripts run (commandstats counts those too);
- Redis CPU microseconds per item (``used_cpu_user + used_cpu_sys``);
- Redis memory bytes per queued item: ``used_memory`` growth for N items enqueued with no
  worker running, with a breakdown by key kind (``MEMORY USAGE`` of every key);
- worker peak RSS (VmHWM) at the end of the run.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from workshaper import Producer
from workshaper_tools.bench.baseline import BaselineResult, run_baseline
from workshaper_tools.bench.common import RedisCost, plan_noop, private_redis, say
from workshaper_tools.bench.throughput import ENQUEUE_BATCH, RunConfig, WsRun, run_workshaper
from workshaper_tools.testing.lanes import lanes_option


def per_item(cost: RedisCost, items: int) -> dict[str, Any]:
    top = sorted(cost.calls.items(), key=lambda kv: -kv[1])
    by_time = sorted(cost.usec.items(), key=lambda kv: -kv[1])
    return {
        "round_trips": cost.reads / items,
        "scripts": cost.calls.get("evalsha", 0) / items,
        "top_level_commands": cost.commands / items,
        "all_commands": cost.all_calls / items,
        "redis_cpu_us": cost.cpu_seconds * 1e6 / items,
        "net_in_bytes": cost.net_in / items,
        "commands": {k: v / items for k, v in top[:12]},
        "command_usec": {k: v / items for k, v in by_time[:8]},
    }


def _kind(key: bytes) -> str:
    text = key.decode("latin-1")
    if text.startswith("ws:"):
        tail = text.split("}:", 1)[-1]
        return "q:<sub key> lists" if tail.startswith("q:") else tail.split(":", 1)[0]
    return text.split(":", 1)[0]


def memory_per_item(
    url: str, count: int, partitions: int, sub_keys: int, lanes: int | None = None
) -> dict[str, Any]:
    """Bytes of Redis memory per queued (accepted, not yet run) item, WorkShaper vs raw lists."""
    items = plan_noop(count, partitions, sub_keys, seed=7)
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
        base = int(client.info("memory")["used_memory"])
        namespace = "m" + uuid.uuid4().hex[:8]
        with Producer(url, namespace, max_in_queue=count + 1, **lanes_option(lanes)) as producer:
            for start in range(0, count, ENQUEUE_BATCH):
                producer.enqueue_many(items.tuples[start : start + ENQUEUE_BATCH])
            used = int(client.info("memory")["used_memory"]) - base
            kinds: Counter[str] = Counter()
            for key in client.scan_iter(match=f"ws:{{{namespace}:*", count=1000):
                kinds[_kind(key)] += int(client.memory_usage(key, samples=0) or 0)
        client.flushall()
        base = int(client.info("memory")["used_memory"])
        pipe = client.pipeline(transaction=False)
        for _, message, partition, _ in items.tuples:
            pipe.rpush(f"rawq:{partition}", message)
        pipe.execute()
        raw = int(client.info("memory")["used_memory"]) - base
        client.flushall()
    finally:
        client.close()
    return {
        "items": count,
        "workshaper_bytes": used / count,
        "raw_list_bytes": raw / count,
        "message_bytes": len(items.tuples[0][1]),
        "by_kind": {k: v / count for k, v in kinds.most_common()},
    }


def scenario_s4(args: Any, log_dir: Path, s1: dict[str, Any] | None) -> dict[str, Any]:
    say("S4 cost per item at saturation (Redis counters over an S1 run)")
    with private_redis() as server:
        if s1 is not None:
            run: WsRun = s1["_runs"][0]
            base: BaselineResult = s1["_baselines"][0]
        else:
            items = plan_noop(args.s1_items, args.partitions, args.sub_keys)
            config = RunConfig(
                workers=args.workers,
                concurrency=args.concurrency,
                max_in_queue=args.max_in_queue,
                lanes=getattr(args, "lanes", None),
            )
            base = run_baseline(
                server.url,
                items,
                partitions=args.partitions,
                consumers=config.workers,
                batch=ENQUEUE_BATCH,
                log_dir=log_dir,
            )
            redis.Redis.from_url(server.url).flushall()
            run = run_workshaper(server.url, items, config, log_dir)
        memory = memory_per_item(
            server.url,
            args.s4_memory_items,
            args.partitions,
            args.sub_keys,
            getattr(args, "lanes", None),
        )
    ws = per_item(run.cost, run.items)
    raw = per_item(base.cost, base.items)
    rss = [kib / 1024 for kib in run.worker_peak_rss_kib]
    for label, c in (("WorkShaper", ws), ("raw queue ", raw)):
        say(
            f"  {label}: {c['round_trips']:.4f} round trips/item, {c['scripts']:.4f} scripts/item,"
            f" {c['all_commands']:.2f} Redis commands/item (incl. inside scripts),"
            f" {c['redis_cpu_us']:.2f} Redis CPU us/item"
        )
    say(
        f"  memory: {memory['workshaper_bytes']:.0f} bytes per queued item (raw list"
        f" {memory['raw_list_bytes']:.0f}; message {memory['message_bytes']} bytes);"
        f" worker peak RSS {', '.join(f'{m:.0f}' for m in rss)} MiB"
    )
    cpu_us = {label: seconds * 1e6 / run.items for label, seconds in run.cpu.items()}
    say(
        "  CPU per item by process: "
        + ", ".join(f"{label} {us:.1f} us" for label, us in cpu_us.items())
        + f" (wall {run.seconds * 1e6 / run.items:.1f} us per item, 2 cores)"
    )
    result: dict[str, Any] = {
        "items": run.items,
        "cpu_us_by_process": cpu_us,
        "wall_us": run.seconds * 1e6 / run.items,
        "workshaper": ws,
        "raw_queue": raw,
        "memory": memory,
        "worker_peak_rss_mib": rss,
        "redis_peak_memory": run.redis_peak_memory,
    }
    if getattr(args, "lanes", None) is not None:
        result["lanes"] = args.lanes
    return result
