"""S3 breakdown: where an item's latency goes, hand-off by hand-off (``--s3-trace``).

Every time below is CLOCK_MONOTONIC of the same host. Per item (partition p, offset o), run
by worker w:

enqueue -> start = enqueue call + bell + coordinator + worker round trip + hand-off, where
- enqueue call: the producer's ``enqueue`` (the enqueue script and the bell's ZADD, one round
  trip), from the call to its return;
- bell: from that return until w's waker popped partition p's bell, when the round trip that
  brought the item was a claim sent after a pop of p's bell by w that came after the enqueue
  call began (0 otherwise: a claim w sent again because the last claim left sub keys ready, or
  the item came with the completion of its sub key's previous batch);
- coordinator: from then until w sent that round trip (the waker -> coordinator inbox hop,
  and the round trip w was in already). Bell + coordinator = the wait for the worker;
- worker round trip: that round trip, sent to answered;
- hand-off: from its answer to the start of the work (the coordinator hands the lease to an
  executor thread, which must get the GIL).

finish -> ack = head of line + completion + ack loop wait + offer and ack, where
- head of line: until every offset <= o of p has finished too (the watermark is contiguous);
- completion: from then until the round trip that recorded the last of those items (first
  round trip of its worker sent after it ended that carried a completion) was answered;
- ack loop wait: from that answer to the start of the producer's ack loop tick that offered
  the watermark (the loop sleeps ``ack_interval`` between ticks, and offers a partition whose
  last offers found nothing new less often, up to every 100 ms); reported with the gap
  between that tick and the partition's previous one;
- offer and ack: from that tick's start to the ``ack`` call (the offer round trip).

The stages of an item add up to its total exactly; a stage can be slightly negative where two
clocks' events overlap (a tick started while the completion's answer was on its way).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from workshaper_tools.bench.common import Items, percentile, say

if TYPE_CHECKING:
    from workshaper_tools.bench.latency import S3Run

START_STAGES = ("enqueue call", "bell", "coordinator", "worker round trip", "hand-off")
ACK_STAGES = ("head of line", "completion", "ack loop wait", "offer and ack")


class _SlotTimeline:
    """When a worker's waker was out of free slots (so it was not in ``BZPOPMIN``): its count
    is the last one the coordinator published, less the bells it popped since."""

    def __init__(self, published: list[tuple[float, int]], pops: list[float]) -> None:
        events = sorted([(at, 1, free) for at, free in published] + [(at, 0, 0) for at in pops])
        self._starts: list[float] = []
        self._blocked_before: list[float] = []  # blocked seconds from the first event on
        self._blocked: list[bool] = []
        budget, total = 0, 0.0
        for i, (at, kind, free) in enumerate(events):
            budget = free if kind else budget - 1
            self._starts.append(at)
            self._blocked_before.append(total)
            self._blocked.append(budget <= 0)
            if budget <= 0 and i + 1 < len(events):
                total += events[i + 1][0] - at

    def _upto(self, t: float) -> float:
        i = bisect.bisect_right(self._starts, t) - 1
        if i < 0:
            return 0.0
        extra = t - self._starts[i] if self._blocked[i] else 0.0
        return self._blocked_before[i] + extra

    def blocked(self, a: float, b: float) -> float:
        """Seconds in [a, b] the waker had no free slot."""
        return max(0.0, self._upto(b) - self._upto(a))


def _summary(totals: list[float], stages: dict[str, list[float]]) -> dict[str, Any]:
    """Per stage: p50, p99, mean, and the mean over the items whose total is above its p99
    (what the tail is made of)."""
    cut = percentile(totals, 99)
    tail = [i for i, t in enumerate(totals) if t > cut]
    out: dict[str, Any] = {"items": len(totals), "tail_items": len(tail), "stages": {}}
    for name, values in stages.items():
        out["stages"][name] = {
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "mean": sum(values) / len(values) if values else math.nan,
            "tail_mean": sum(values[i] for i in tail) / len(tail) if tail else math.nan,
        }
    return out


def breakdown(items: Items, run: S3Run) -> dict[str, Any]:
    ran: dict[tuple[int, int], tuple[int, float, float]] = {}  # item -> (worker, start, end)
    for w, trace in enumerate(run.traces):
        for partition, _, offset, start, end in trace.records:
            key = (partition, offset)
            if key not in ran or start < ran[key][1]:
                ran[key] = (w, start, end)
    answered = [[t[1] for t in trace.round_trips] for trace in run.traces]
    completing = [[t for t in trace.round_trips if t[3] > 0] for trace in run.traces]
    completing_sent = [[t[0] for t in trips] for trips in completing]
    if not any(answered):
        say("  breakdown: the workers recorded no round trips (tracing did not attach)")
        return {}
    to_start = _start_stages(items, run, ran, answered)
    to_ack = _ack_stages(items, run, ran, completing, completing_sent)
    result: dict[str, Any] = {
        "enqueue_to_start": to_start,
        "finish_to_ack": to_ack,
        "worker_round_trips": [len(t.round_trips) for t in run.traces],
        "bells_popped": [len(t.bells) for t in run.traces],
        "ack_loop_ticks": sum(len(t) for t in run.ticks.values()),
    }
    gaps = to_ack.pop("_gaps")
    result["ack_tick_gap"] = {q: percentile(gaps, float(q[1:])) for q in ("p50", "p99", "p99.9")}
    result["ack_tick_gap"]["max"] = max(gaps) if gaps else math.nan
    for title, part in (("enqueue -> start", to_start), ("finish -> ack", to_ack)):
        say(f"  breakdown of {title} ({part['tail_items']} items above its p99 = the tail):")
        for stage, s in part["stages"].items():
            say(
                f"    {stage:>20}: p50 {s['p50'] * 1e3:6.2f} ms, p99 {s['p99'] * 1e3:6.2f} ms,"
                f" mean {s['mean'] * 1e3:6.2f} ms, mean in the tail {s['tail_mean'] * 1e3:6.2f} ms"
            )
    blocked = to_start["bell_out_of_slots"]
    say(
        f"  of the bell stage, the waker was out of free slots: mean {blocked['mean'] * 1e3:.2f}"
        f" ms, mean in the tail {blocked['tail_mean'] * 1e3:.2f} ms"
    )
    gap = result["ack_tick_gap"]
    say(
        f"  gap between the acking tick and the partition's previous tick: p50"
        f" {gap['p50'] * 1e3:.2f} ms, p99 {gap['p99'] * 1e3:.2f} ms, max {gap['max'] * 1e3:.2f} ms"
    )
    return result


def _start_stages(
    items: Items,
    run: S3Run,
    ran: dict[tuple[int, int], tuple[int, float, float]],
    answered: list[list[float]],
) -> dict[str, Any]:
    stages: dict[str, list[float]] = {name: [] for name in START_STAGES}
    totals: list[float] = []
    plan = items.plan
    bells: list[dict[int, list[float]]] = []  # per worker: partition -> when its bell was popped
    slots: list[_SlotTimeline] = []
    for trace in run.traces:
        popped: dict[int, list[float]] = defaultdict(list)
        for partition, at in trace.bells:
            popped[partition].append(at)
        bells.append({p: sorted(at) for p, at in popped.items()})
        slots.append(_SlotTimeline(trace.published, [at for _, at in trace.bells]))
    out_of_slots: list[float] = []  # per item: seconds of its bell stage with no free slot
    for i, (partition, offset) in enumerate(zip(plan.partitions, plan.offsets, strict=True)):
        got = ran.get((partition, offset))
        if got is None:
            continue
        w, start, _ = got
        k = bisect.bisect_right(answered[w], start) - 1
        if k < 0:
            continue
        sent, back, claims, _ = run.traces[w].round_trips[k]
        called, returned = run.enqueued_at[i], run.returned_at[i]
        bell = 0.0
        pops = bells[w].get(partition, [])
        b = bisect.bisect_right(pops, sent) - 1
        if claims and b >= 0 and pops[b] >= called:
            bell = pops[b] - returned
        out_of_slots.append(slots[w].blocked(returned, returned + bell) if bell > 0 else 0.0)
        totals.append(start - called)
        stages["enqueue call"].append(returned - called)
        stages["bell"].append(bell)
        stages["coordinator"].append(sent - returned - bell)
        stages["worker round trip"].append(back - sent)
        stages["hand-off"].append(start - back)
    out = _summary(totals, stages)
    cut = percentile(totals, 99)
    tail = [i for i, t in enumerate(totals) if t > cut]
    out["bell_out_of_slots"] = {
        "mean": sum(out_of_slots) / len(out_of_slots) if out_of_slots else math.nan,
        "tail_mean": sum(out_of_slots[i] for i in tail) / len(tail) if tail else math.nan,
    }
    return out


def _ack_stages(
    items: Items,
    run: S3Run,
    ran: dict[tuple[int, int], tuple[int, float, float]],
    completing: list[list[tuple[float, float, int, int]]],
    completing_sent: list[list[float]],
) -> dict[str, Any]:
    stages: dict[str, list[float]] = {name: [] for name in ACK_STAGES}
    totals: list[float] = []
    gaps: list[float] = []  # per ack call: its tick's start - the partition's previous tick's
    by_partition: dict[int, list[int]] = defaultdict(list)
    for partition, offset in zip(items.plan.partitions, items.plan.offsets, strict=True):
        by_partition[partition].append(offset)
    acks: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for call in run.acks:
        acks[call.partition].append((call.watermark, call.at))
    for partition, offsets in by_partition.items():
        offsets.sort()
        marks = [w for w, _ in acks[partition]]
        ticks = run.ticks.get(partition, [])
        for watermark_at in (at for _, at in acks[partition]):
            t = bisect.bisect_right(ticks, watermark_at) - 1
            if t >= 1:
                gaps.append(ticks[t] - ticks[t - 1])
        last: tuple[float, int] = (-math.inf, -1)  # (latest end so far, its worker)
        for offset in offsets:
            got = ran.get((partition, offset))
            if got is None:
                continue
            w, _, end = got
            if end > last[0]:
                last = (end, w)
            index = bisect.bisect_left(marks, offset)
            if index >= len(marks):
                continue
            acked_at = acks[partition][index][1]
            ready, rw = last
            j = bisect.bisect_left(completing_sent[rw], ready)
            recorded = completing[rw][j][1] if j < len(completing[rw]) else ready
            t = bisect.bisect_right(ticks, acked_at) - 1
            tick = ticks[t] if t >= 0 else recorded
            totals.append(acked_at - end)
            stages["head of line"].append(ready - end)
            stages["completion"].append(recorded - ready)
            stages["ack loop wait"].append(tick - recorded)
            stages["offer and ack"].append(acked_at - tick)
    out = _summary(totals, stages)
    out["_gaps"] = gaps
    return out
