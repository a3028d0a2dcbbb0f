"""Checks the invariants of DESIGN.md section 2 from a run's plan, journal, acks and Redis.

- lost: accepted items that neither ended successfully (journal) nor were dead-lettered.
- order: an item started before an end of its predecessor (same partition and sub key).
- watermark: an ack passed an offset that had not finished by then, or acks of a partition did
  not strictly increase. One exception: when the process calling ``ack`` was replaced (the
  ``source`` of the acks changed, e.g. a producer killed between its ack and recording it), the
  new one may repeat the last value once; such repeats are counted in ``reacks``, a smaller value
  is always a violation.
- re-runs: starts beyond the first per item (at-least-once delivery after faults).
- sub key (``check(..., sub_keys=True)``): a start whose handler saw a ``current_job().sub_key``
  other than the item's own (with the producer's lanes, Redis holds the lane, the entry the
  item's sub key: the handler must see the latter).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from workshaper_tools.testing.journal import Event


@dataclass(frozen=True)
class PlannedItem:
    sub_key: Any  # as the journal writes it (bytes decoded as latin-1)
    partition: int
    offset: int


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int
    at: float  # CLOCK_MONOTONIC when ack was called
    source: str = ""  # which producer process called ack ("" when only one)


@dataclass
class Report:
    accepted: int = 0
    finished: int = 0
    dead_lettered: int = 0
    lost: list[tuple[int, int]] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    watermark_violations: list[str] = field(default_factory=list)
    starts: int = 0
    reruns: int = 0
    reacks: int = 0  # repeats of the last ack by a replacement producer (allowed)
    sub_key_violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.order_violations
            or self.watermark_violations
            or self.sub_key_violations
        )

    def summary(self) -> str:
        return (
            f"accepted {self.accepted}, finished {self.finished}, dead-lettered "
            f"{self.dead_lettered}, lost {len(self.lost)}, order violations "
            f"{len(self.order_violations)}, watermark violations "
            f"{len(self.watermark_violations)}, re-runs {self.reruns}"
            + (
                f", sub key violations {len(self.sub_key_violations)}"
                if self.sub_key_violations
                else ""
            )
        )


def check(
    plan: Iterable[PlannedItem],
    events: list[Event],
    acks: Iterable[Ack] = (),
    dead_lettered: Iterable[tuple[int, int]] = (),
    *,
    sub_keys: bool = False,
) -> Report:
    """Dead-lettered items count as finished (their time is not in the journal). With
    ``sub_keys``, also check that every start saw its item's own sub key."""
    items = list(plan)
    dead = set(dead_lettered)
    report = Report(accepted=len(items), dead_lettered=len(dead))

    first_end: dict[tuple[int, int], float] = {}
    starts: dict[tuple[int, int], list[float]] = defaultdict(list)
    runs: dict[tuple[int, int], list[Event]] = defaultdict(list)  # starts and ends, with tokens
    for e in events:
        key = (e.partition, e.offset)
        runs[key].append(e)
        if e.kind == "s":
            starts[key].append(e.at)
        elif e.kind == "e" and key not in first_end:
            first_end[key] = e.at
    report.starts = sum(len(v) for v in starts.values())
    report.reruns = sum(len(v) - 1 for v in starts.values() if v)

    # lost
    for item in items:
        key = (item.partition, item.offset)
        if key in first_end:
            report.finished += 1
        elif key not in dead:
            report.lost.append(key)

    # order: every start of an item comes after its predecessor ended (or was given up)
    chains: dict[tuple[int, Any], list[int]] = defaultdict(list)
    for item in items:
        if item.sub_key is not None:
            chains[(item.partition, item.sub_key)].append(item.offset)
    for (partition, sub), offsets in chains.items():
        offsets.sort()
        for previous, current in pairwise(offsets):
            if (partition, previous) in dead:
                report.order_violations += dead_predecessor_overlaps(
                    partition, sub, runs[(partition, previous)], runs[(partition, current)]
                )
                continue
            ended = first_end.get((partition, previous))
            for started in starts.get((partition, current), []):
                if ended is None or started < ended:
                    report.order_violations.append(
                        f"partition {partition} sub key {sub!r}: offset {current} started at "
                        f"{started:.6f} before offset {previous} ended ({ended})"
                    )

    if sub_keys:
        report.sub_key_violations = sub_key_mismatches(items, events)

    # watermark
    by_partition: dict[int, list[int]] = defaultdict(list)
    for item in items:
        by_partition[item.partition].append(item.offset)
    for offsets in by_partition.values():
        offsets.sort()
    last: dict[int, Ack] = {}
    checked: dict[int, int] = {}  # partition -> offsets[:n] already checked
    for ack in sorted(acks, key=lambda a: a.at):
        previous_ack = last.get(ack.partition)
        if previous_ack is not None and ack.offset <= previous_ack.offset:
            if ack.offset == previous_ack.offset and ack.source != previous_ack.source:
                report.reacks += 1
            else:
                report.watermark_violations.append(
                    f"partition {ack.partition}: ack {ack.offset} at {ack.at:.6f} after ack "
                    f"{previous_ack.offset} at {previous_ack.at:.6f}"
                )
        last[ack.partition] = ack
        # Offsets at or below an earlier ack were checked against that earlier (smaller) time.
        offsets = by_partition.get(ack.partition, [])
        position = checked.get(ack.partition, 0)
        while position < len(offsets) and offsets[position] <= ack.offset:
            offset = offsets[position]
            position += 1
            key = (ack.partition, offset)
            ended = first_end.get(key)
            if ended is not None and ended <= ack.at:
                continue
            if key in dead:
                continue
            report.watermark_violations.append(
                f"partition {ack.partition}: ack {ack.offset} at {ack.at:.6f} passed offset "
                f"{offset}, unfinished then"
            )
        checked[ack.partition] = position
    return report


def sub_key_mismatches(items: Iterable[PlannedItem], events: Iterable[Event]) -> list[str]:
    """Each start whose handler saw a ``current_job().sub_key`` (the journal's ``sub``) other
    than its item's own; starts of items not in the plan are not judged."""
    own = {(item.partition, item.offset): item.sub_key for item in items}
    found = []
    for e in events:
        key = (e.partition, e.offset)
        if e.kind == "s" and key in own and e.sub_key != own[key]:
            found.append(
                f"partition {e.partition} offset {e.offset}: the handler saw sub key"
                f" {e.sub_key!r} at {e.at:.6f}, the item's own is {own[key]!r}"
            )
    return found


def dead_predecessor_overlaps(
    partition: int, sub: Any, previous: list[Event], current: list[Event]
) -> list[str]:
    """Order after a dead-lettered item: its successors may start once it is dead-lettered, a
    moment the journal does not record. A run of it still going on then can only be the holder
    that lost the lease while paused mid-item (README's zombie rule), under an older token than
    the successor's lease; a start or end of it under the successor's token or a newer one is a
    violation (it ran again after its successor was handed out)."""
    violations = []
    for start in (e for e in current if e.kind == "s"):
        for e in previous:
            if e.token >= start.token and e.at > start.at:
                violations.append(
                    f"partition {partition} sub key {sub!r}: offset {start.offset} started at "
                    f"{start.at:.6f} (token {start.token}) before dead-lettered offset "
                    f"{e.offset} ran under token {e.token} ({e.kind} at {e.at:.6f})"
                )
    return violations
