"""The bench's invariant check: order per sub key, watermark, no loss (DESIGN.md section 2).

Cheap enough for 10**6 items: one pass over the handler records (``handlers.py``), one pass over
the plan, and a prefix maximum per partition for the acks, so every benchmark run is checked and
fails when an invariant breaks.

- order: every start of an item comes at or after the first end of the previous item of its
  (partition, sub key); the record's sub key must be the planned one.
- watermark: the values given to ``ack`` strictly increase per partition, and an ack of W at
  time t comes after every planned offset <= W of that partition ended.
- lost: a planned item that never ended, or a partition whose last ack is not its last offset.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workshaper_tools.bench.handlers import Record

#: How many examples of each kind of violation a verdict keeps.
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Plan:
    """What was enqueued, in enqueue order (offsets increase per partition)."""

    sub_keys: Sequence[Any]
    partitions: Sequence[int]
    offsets: Sequence[int]

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass(frozen=True)
class AckCall:
    partition: int
    watermark: int
    at: float  # CLOCK_MONOTONIC when ack was called


@dataclass
class Verdict:
    items: int = 0
    finished: int = 0
    reruns: int = 0
    lost: int = 0
    order_violations: int = 0
    watermark_violations: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.order_violations or self.watermark_violations)

    def summary(self) -> str:
        text = (
            f"{self.finished}/{self.items} finished, {self.reruns} re-runs, {self.lost} lost,"
            f" {self.order_violations} order violations,"
            f" {self.watermark_violations} watermark violations"
        )
        if self.examples:
            text += "; e.g. " + " | ".join(self.examples)
        return text

    def _example(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)


def _first_ends(
    records: Iterable[Record],
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], list[float]], list[Record]]:
    """(first end per item, every start per item, records in arrival order)."""
    first_end: dict[tuple[int, int], float] = {}
    starts: dict[tuple[int, int], list[float]] = defaultdict(list)
    kept = list(records)
    for partition, _, offset, start, end in kept:
        key = (partition, offset)
        starts[key].append(start)
        previous = first_end.get(key)
        if previous is None or end < previous:
            first_end[key] = end
    return first_end, starts, kept


def verify(plan: Plan, records: Iterable[Record], acks: Iterable[AckCall]) -> Verdict:
    verdict = Verdict(items=len(plan))
    first_end, starts, kept = _first_ends(records)
    verdict.reruns = sum(len(s) - 1 for s in starts.values())

    planned_sub: dict[tuple[int, int], Any] = {}
    chains: dict[tuple[int, Any], list[int]] = defaultdict(list)
    by_partition: dict[int, list[int]] = defaultdict(list)
    for sub, partition, offset in zip(plan.sub_keys, plan.partitions, plan.offsets, strict=True):
        planned_sub[(partition, offset)] = sub
        by_partition[partition].append(offset)
        if sub is not None:
            chains[(partition, sub)].append(offset)

    for key in planned_sub:
        if key in first_end:
            verdict.finished += 1
        else:
            verdict.lost += 1
            verdict._example(f"lost: partition {key[0]} offset {key[1]}")

    for partition, sub, offset, _, _ in kept:
        want = planned_sub.get((partition, offset), sub)
        if want != sub:
            verdict.order_violations += 1
            verdict._example(
                f"partition {partition} offset {offset} ran as sub key {sub!r}, planned {want!r}"
            )

    for (partition, sub), offsets in chains.items():
        for previous, current in itertools.pairwise(offsets):
            ended = first_end.get((partition, previous), math.inf)
            for started in starts.get((partition, current), ()):
                if started < ended:
                    verdict.order_violations += 1
                    verdict._example(
                        f"partition {partition} sub key {sub!r}: offset {current} started"
                        f" before offset {previous} ended"
                    )

    calls: dict[int, list[AckCall]] = defaultdict(list)
    for call in acks:
        calls[call.partition].append(call)
    for partition, offsets in by_partition.items():
        offsets.sort()
        prefix_end: list[float] = []
        latest = -math.inf
        for offset in offsets:
            latest = max(latest, first_end.get((partition, offset), math.inf))
            prefix_end.append(latest)
        last = -1
        for call in calls.get(partition, []):
            if call.watermark <= last:
                verdict.watermark_violations += 1
                verdict._example(f"partition {partition}: ack {call.watermark} after ack {last}")
            last = max(last, call.watermark)
            covered = bisect.bisect_right(offsets, call.watermark)
            if covered and prefix_end[covered - 1] > call.at:
                verdict.watermark_violations += 1
                verdict._example(
                    f"partition {partition}: ack {call.watermark} passed an offset that had"
                    " not finished by then"
                )
        if last < offsets[-1]:
            verdict.lost += 1
            verdict._example(
                f"partition {partition}: last ack {last}, but offsets run to {offsets[-1]}"
            )
    for partition in calls:
        if partition not in by_partition:
            verdict.watermark_violations += 1
            verdict._example(f"ack of partition {partition}, which had no items")
    return verdict


def ack_delays(plan: Plan, records: Iterable[Record], acks: Iterable[AckCall]) -> list[float]:
    """Seconds from the end of each item's work to the first ack that covered it."""
    first_end, _, _ = _first_ends(records)
    calls: dict[int, list[AckCall]] = defaultdict(list)
    for call in acks:
        calls[call.partition].append(call)
    marks = {p: [c.watermark for c in cs] for p, cs in calls.items()}
    delays: list[float] = []
    for partition, offset in zip(plan.partitions, plan.offsets, strict=True):
        end = first_end.get((partition, offset))
        index = bisect.bisect_left(marks.get(partition, []), offset)
        if end is None or index >= len(marks.get(partition, [])):
            continue
        delays.append(calls[partition][index].at - end)
    return delays


def start_delays(
    plan: Plan, records: Iterable[Record], enqueued_at: Sequence[float]
) -> list[float]:
    """Seconds from each item's enqueue call to the first start of its work."""
    first_start: dict[tuple[int, int], float] = {}
    for partition, _, offset, start, _ in records:
        key = (partition, offset)
        if start < first_start.get(key, math.inf):
            first_start[key] = start
    out: list[float] = []
    for partition, offset, at in zip(plan.partitions, plan.offsets, enqueued_at, strict=True):
        started = first_start.get((partition, offset))
        if started is not None:
            out.append(started - at)
    return out
