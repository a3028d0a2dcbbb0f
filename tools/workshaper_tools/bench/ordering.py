"""S2: Confluent Parallel Consumer's own table, run on WorkShaper.

10,000 items in one partition; each item's work is a seeded random sleep of 0-5 ms (the same
sleeps in every row); 16 concurrent slots in total. Rows: 1 to 10,000 keys (each item's key
drawn uniformly, seeded), "partition order" (one sub key for the whole partition) and
"unordered" (``sub_key=None``). The ideal bound is max(total work / slots, the longest key's
chain of work); parallel efficiency = ideal / measured. Parallel Consumer's published times for
the same workload sit next to ours (they ran on other hardware: compare efficiencies).

The producer feeds the items in ``enqueue_many`` calls of ``ENQUEUE_BATCH`` (500, a Kafka
poll's ``max.poll.records``), as a consumer hands over what one poll returned. One call of all
10,000 items would encode every item before the first reaches Redis (``enqueue_many`` checks
and encodes the whole batch before it writes), and the workers would idle through that lead:
~50 ms, 3% of the ideal, that no stream consumer pays.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from workshaper_tools.bench.common import SEED, BenchFailure, Items, private_redis, say
from workshaper_tools.bench.throughput import RunConfig, run_workshaper
from workshaper_tools.bench.verify import Plan

SLOTS = 16
MAX_SLEEP_US = 5000
#: Parallel Consumer's README table (seconds), same workload, 16 threads.
PC_PUBLISHED = {"partition order": 22.2, "1000": 2.056, "unordered": 2.829}
#: The Ruby seed on the same workload (DESIGN.md section 4), max_in_queue 25.
SEED_PUBLISHED = {"1000": 4.46, "100": 4.13}
FULL_ROWS: list[str] = [
    "partition order",
    "1",
    "2",
    "5",
    "10",
    "100",
    "1000",
    "10000",
    "unordered",
]
QUICK_ROWS = ["partition order", "10", "100", "unordered"]
#: The target applies from this many keys up (and to "unordered").
TARGET_FROM_KEYS = 100
TARGET_FACTOR = 1.1
#: Items per ``enqueue_many`` call of the S2 producer (``--s2-enqueue-batch``).
ENQUEUE_BATCH = 500


def plan_sleeps(items: int, row: str, seed: int = SEED) -> tuple[Items, list[int]]:
    sleeps_rng = random.Random(seed)
    keys_rng = random.Random(seed + 1)
    sleeps = [sleeps_rng.randrange(MAX_SLEEP_US + 1) for _ in range(items)]
    subs: list[Any] = []
    for _ in range(items):
        if row == "partition order":
            subs.append("partition")
        elif row == "unordered":
            subs.append(None)
        else:
            subs.append(f"k{keys_rng.randrange(int(row))}")
    offsets = list(range(items))
    tuples = [(sub, us, 0, o) for sub, us, o in zip(subs, sleeps, offsets, strict=True)]
    return Items(Plan(subs, [0] * items, offsets), tuples), sleeps


def ideal_seconds(items: Items, sleeps: list[int], slots: int) -> tuple[float, float, float]:
    """(ideal, total work, longest chain) in seconds."""
    chains: dict[Any, int] = defaultdict(int)
    longest = 0
    for sub, us in zip(items.plan.sub_keys, sleeps, strict=True):
        if sub is None:
            longest = max(longest, us)
        else:
            chains[sub] += us
    if chains:
        longest = max(longest, *chains.values())
    total = sum(sleeps)
    return max(total / slots, longest) / 1e6, total / 1e6, longest / 1e6


def schedule_bound(items: Items, sleeps: list[int], slots: int) -> float:
    """Seconds of the longest-chain-first schedule of whole key chains on ``slots``.

    A key's items run one after another, so no schedule beats the best packing of the chains
    onto the slots; with few keys that is well above total / slots (100 chains of ~0.25 s on
    16 slots cannot end together). LPT is within 4/3 of that optimum and near it here.
    """
    chains: dict[Any, int] = defaultdict(int)
    singles: list[int] = []
    for sub, us in zip(items.plan.sub_keys, sleeps, strict=True):
        if sub is None:
            singles.append(us)
        else:
            chains[sub] += us
    loads = [0] * slots
    for chain in sorted([*chains.values(), *singles], reverse=True):
        heapq.heapreplace(loads, loads[0] + chain)
    return max(loads) / 1e6


def backpressure_run(
    items: Items,
    sleeps: list[int],
    slots: int,
    max_in_queue: int,
    *,
    start_us: int = 0,
    ack_us: int = 0,
) -> float:
    """Seconds of a run that costs nothing but the work, under backpressure (README: at most
    ``max_in_queue`` accepted-but-unacked items per partition).

    The ideal of ``ideal_seconds`` ignores backpressure; a small ``max_in_queue`` does not:
    room comes back only when the contiguous watermark passes an item, so one long item holds
    back every item enqueued after it (the seed's max_in_queue of 25 costs S2 ~13% before any
    overhead). This is that run, event by event in whole microseconds: one producer enqueues in
    plan order and waits while the item's partition is full; a free slot takes the runnable
    item (the head of its sub key's queue; ``None``: always runnable) that became runnable
    first; a finished item's watermark frees room ``ack_us`` later; each item occupies its slot
    ``start_us`` longer than its work (what a real run pays per item and per ack, to see how
    fast overheads eat the margin).
    """
    plan = items.plan
    n = len(plan)
    unacked: dict[int, deque[int]] = defaultdict(deque)  # partition -> items above its watermark
    held: dict[int, int] = defaultdict(int)  # partition -> items counted against max_in_queue
    done = [False] * n
    waiting: dict[Any, deque[int]] = defaultdict(deque)  # sub key -> its queued items
    runnable: deque[int] = deque()
    events: list[tuple[int, int, int, int]] = []  # (us, 0 finish / 1 room, item or partition, n)
    free, now, enqueued = slots, 0, 0

    def admit() -> None:
        nonlocal enqueued
        while enqueued < n and held[plan.partitions[enqueued]] < max_in_queue:
            i, sub = enqueued, plan.sub_keys[enqueued]
            held[plan.partitions[i]] += 1
            unacked[plan.partitions[i]].append(i)
            if sub is None:
                runnable.append(i)
            else:
                waiting[sub].append(i)
                if len(waiting[sub]) == 1:
                    runnable.append(i)
            enqueued += 1

    def finish(i: int) -> None:
        """Item i ended: its slot is free, its sub key's next item runnable, and the items the
        watermark passes now free their room ``ack_us`` later."""
        nonlocal free
        free += 1
        done[i] = True
        sub = plan.sub_keys[i]
        if sub is not None:
            waiting[sub].popleft()
            if waiting[sub]:
                runnable.append(waiting[sub][0])
        partition, passed = plan.partitions[i], 0
        pending = unacked[partition]
        while pending and done[pending[0]]:
            pending.popleft()
            passed += 1
        if passed:
            heapq.heappush(events, (now + ack_us, 1, partition, passed))

    admit()
    while True:
        while free and runnable:
            i = runnable.popleft()
            free -= 1
            heapq.heappush(events, (now + sleeps[i] + start_us, 0, i, 0))
        if not events:
            break
        now, kind, what, count = heapq.heappop(events)
        if kind == 0:
            finish(what)
        else:
            held[what] -= count
            admit()
    if enqueued < n:
        raise ValueError(f"max_in_queue {max_in_queue} admits nothing")
    return now / 1e6


def in_target(row: str) -> bool:
    return row == "unordered" or (row.isdigit() and int(row) >= TARGET_FROM_KEYS)


def scenario_s2(args: Any, log_dir: Path) -> dict[str, Any]:
    rows = QUICK_ROWS if args.quick else FULL_ROWS
    if getattr(args, "s2_rows", None):
        rows = [r.strip() for r in args.s2_rows.split(",") if r.strip()]
        unknown = [r for r in rows if not (r.isdigit() or r in ("partition order", "unordered"))]
        if unknown:
            raise BenchFailure(
                f"unknown S2 row(s) {unknown}: a key count, 'partition order' or 'unordered'"
            )
    workers = args.workers
    enqueue_batch = getattr(args, "s2_enqueue_batch", None) or ENQUEUE_BATCH
    config = RunConfig(
        workers=workers,
        concurrency=SLOTS // workers,
        max_in_queue=args.s2_items + 1,
        lanes=getattr(args, "lanes", None),
        enqueue_batch=enqueue_batch,
    )
    lanes = "" if config.lanes is None else f", producer with {config.lanes} lanes"
    say(
        f"S2 Parallel Consumer's table: {args.s2_items} items, 1 partition, sleep 0-5 ms,"
        f" {SLOTS} slots ({workers} workers x {config.concurrency}), enqueue_many of"
        f" {enqueue_batch}{lanes}"
    )
    out: list[dict[str, Any]] = []
    with private_redis() as server:
        for row in rows:
            items, sleeps = plan_sleeps(args.s2_items, row)
            ideal, total, longest = ideal_seconds(items, sleeps, SLOTS)
            bound = schedule_bound(items, sleeps, SLOTS)
            run = run_workshaper(
                server.url, items, config, log_dir, handler="workshaper_tools.bench.handlers:sleep"
            )
            worked = sum(end - start for _, _, _, start, end in run.records)
            # The same bound from the work as it ran (time.sleep overshoots by ~0.1 ms).
            measured_ideal = max(worked / SLOTS, longest * worked / total) if total else 0.0
            result = {
                "row": row,
                "seconds": run.seconds,
                "ideal": ideal,
                "total_work": total,
                "measured_work": worked,
                "measured_ideal": measured_ideal,
                "measured_factor": run.seconds / measured_ideal if measured_ideal else None,
                "longest_chain": longest,
                "schedule_bound": bound,
                "schedule_factor": run.seconds / bound,
                "efficiency": ideal / run.seconds,
                "factor": run.seconds / ideal,
                "pc_published": PC_PUBLISHED.get(row),
                "seed_published": SEED_PUBLISHED.get(row),
                "in_target": in_target(row),
                "met": (run.seconds <= TARGET_FACTOR * ideal) if in_target(row) else None,
                "verdict": run.verdict.summary(),
            }
            out.append(result)
            pc = f", Parallel Consumer {result['pc_published']} s" if result["pc_published"] else ""
            say(
                f"  {row:>15}: {run.seconds:6.3f} s, ideal {ideal:6.3f} s"
                f" ({run.seconds / ideal:.2f}x, efficiency {ideal / run.seconds:.0%};"
                f" {run.seconds / measured_ideal:.2f}x the bound of the work as run,"
                f" {run.seconds / bound:.2f}x the best chain schedule){pc}"
                f" - {run.verdict.summary()}"
            )
    met = all(r["met"] for r in out if r["in_target"])
    scenario: dict[str, Any] = {
        "items": args.s2_items,
        "slots": SLOTS,
        "workers": workers,
        "enqueue_batch": enqueue_batch,
        "rows": out,
        "target": f"<= {TARGET_FACTOR}x ideal from {TARGET_FROM_KEYS} keys up",
        "met": met,
    }
    if config.lanes is not None:
        scenario["lanes"] = config.lanes
    return scenario
