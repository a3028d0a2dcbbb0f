"""S5: S1 as the work grows - sub keys from 10 to 1,000,000, partitions from 1 to 256.

Each row runs on a fresh redis-server, so its peak memory is its own. A row has
max(items, sub keys) items (capped at 1,000,000), so the largest rows really hold that many
sub keys (each with about one item: one lease per item, the worst case).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workshaper_tools.bench.common import plan_noop, private_redis, say
from workshaper_tools.bench.throughput import RunConfig, run_workshaper

FULL_SUB_KEYS = [10, 100, 1000, 10_000, 100_000, 1_000_000]
FULL_PARTITIONS = [1, 8, 64, 256]
QUICK_SUB_KEYS = [10, 1000]
QUICK_PARTITIONS = [1, 8]
MAX_ITEMS = 1_000_000


def _row(args: Any, log_dir: Path, partitions: int, sub_keys: int) -> dict[str, Any]:
    count = min(max(args.s5_items, sub_keys), MAX_ITEMS)
    items = plan_noop(count, partitions, sub_keys)
    config = RunConfig(
        workers=args.workers,
        concurrency=args.concurrency,
        max_in_queue=args.max_in_queue,
        lanes=getattr(args, "lanes", None),
    )
    with private_redis() as server:
        run = run_workshaper(server.url, items, config, log_dir)
    distinct = len(set(zip(items.plan.partitions, items.plan.sub_keys, strict=True)))
    row = {
        "partitions": partitions,
        "sub_keys": sub_keys,
        "distinct_sub_keys": distinct,
        "items": count,
        "rate": run.rate,
        "seconds": run.seconds,
        "redis_peak_mib": run.redis_peak_memory / 2**20,
        "worker_peak_rss_mib": max(run.worker_peak_rss_kib, default=0) / 1024,
        "redis_cpu_us": run.cost.cpu_seconds * 1e6 / count,
        "round_trips": run.cost.reads / count,
        "verdict": run.verdict.summary(),
    }
    say(
        f"  {partitions:>4} partitions {sub_keys:>9,} sub keys ({distinct:,} used,"
        f" {count:,} items): {run.rate:9,.0f} items/s, Redis peak"
        f" {row['redis_peak_mib']:.0f} MiB, worker RSS {row['worker_peak_rss_mib']:.0f} MiB"
        f" - {run.verdict.summary()}"
    )
    return row


def scenario_s5(args: Any, log_dir: Path) -> dict[str, Any]:
    sub_key_rows = QUICK_SUB_KEYS if args.quick else FULL_SUB_KEYS
    partition_rows = QUICK_PARTITIONS if args.quick else FULL_PARTITIONS
    lanes = getattr(args, "lanes", None)
    with_lanes = "" if lanes is None else f", producer with {lanes} lanes"
    say(
        f"S5 growth: {args.s5_items:,}+ items per row, no-op work, {args.workers} workers"
        f"{with_lanes}"
    )
    by_sub_keys = [_row(args, log_dir, args.partitions, k) for k in sub_key_rows]
    by_partitions = [_row(args, log_dir, p, args.sub_keys) for p in partition_rows]
    result: dict[str, Any] = {"by_sub_keys": by_sub_keys, "by_partitions": by_partitions}
    if lanes is not None:
        result["lanes"] = lanes
    return result
