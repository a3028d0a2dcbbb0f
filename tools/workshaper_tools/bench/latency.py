"""S3: latency at a fixed offered load (default 1,000 items/s), no-op work.

The producer enqueues one item at a time on a fixed schedule (item i at t0 + i / rate), so
latency is measured at a steady load, not at saturation. Two distributions:

- enqueue to start: from the ``enqueue`` call to the start of the item's work;
- finish to ack: from the end of the item's work to the ``ack`` call whose watermark covered it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workshaper import Enqueued, Producer
from workshaper_tools.bench.common import Items, percentile, plan_noop, private_redis, say
from workshaper_tools.bench.throughput import RunConfig, run_workshaper
from workshaper_tools.bench.verify import ack_delays, start_delays

TARGET_START_P99 = 0.005
TARGET_ACK_P99 = 0.015


def _paced(rate: float, enqueued_at: list[float], lag: list[float]) -> Any:
    def feed(producer: Producer, items: Items, config: RunConfig) -> int:
        refused = 0
        started = time.monotonic()
        for i, item in enumerate(items.tuples):
            due = started + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            now = time.monotonic()
            lag.append(now - due)
            enqueued_at.append(now)
            if producer.enqueue(*item) is not Enqueued.ACCEPTED:
                refused += 1
        return refused

    return feed


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "count": len(values),
    }


def scenario_s3(args: Any, log_dir: Path) -> dict[str, Any]:
    rate = float(args.s3_rate)
    count = int(rate * args.s3_seconds)
    items = plan_noop(count, args.partitions, args.sub_keys)
    config = RunConfig(workers=args.workers, concurrency=args.concurrency)
    say(
        f"S3 latency: {rate:,.0f} items/s offered for {args.s3_seconds} s ({count} items),"
        f" {args.partitions} partitions, {args.sub_keys} sub keys, {config.workers} workers"
    )
    enqueued_at: list[float] = []
    lag: list[float] = []
    with private_redis() as server:
        run = run_workshaper(
            server.url, items, config, log_dir, feed=_paced(rate, enqueued_at, lag)
        )
    start = _stats(start_delays(items.plan, run.records, enqueued_at))
    ack = _stats(ack_delays(items.plan, run.records, run.ack_calls))
    achieved = count / run.enqueue_seconds
    met = start["p99"] <= TARGET_START_P99 and ack["p99"] <= TARGET_ACK_P99
    for name, s, target in (
        ("enqueue -> start", start, TARGET_START_P99),
        ("finish -> ack  ", ack, TARGET_ACK_P99),
    ):
        say(
            f"  {name}: p50 {s['p50'] * 1e3:.2f} ms, p95 {s['p95'] * 1e3:.2f} ms,"
            f" p99 {s['p99'] * 1e3:.2f} ms (target <= {target * 1e3:.0f} ms),"
            f" max {s['max'] * 1e3:.2f} ms"
        )
    say(
        f"  offered {achieved:,.0f} items/s achieved; producer p99 schedule lag"
        f" {percentile(lag, 99) * 1e3:.2f} ms - {run.verdict.summary()}"
    )
    return {
        "rate": rate,
        "seconds": args.s3_seconds,
        "items": count,
        "achieved_rate": achieved,
        "schedule_lag_p99": percentile(lag, 99),
        "enqueue_to_start": start,
        "finish_to_ack": ack,
        "targets": {"enqueue_to_start_p99": TARGET_START_P99, "finish_to_ack_p99": TARGET_ACK_P99},
        "met": met,
        "verdict": run.verdict.summary(),
        "_start_delays": start_delays(items.plan, run.records, enqueued_at),
        "_ack_delays": ack_delays(items.plan, run.records, run.ack_calls),
    }
