"""Terminal views of a namespace (``workshaper status``, ``stuck``, ``dead-letters``) with rich.

Pure functions from a ``Snapshot`` to rich renderables, so ``status`` and ``status --watch``
draw the same thing and tests can render to a string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from workshaper.ops.inspection import (
    WHY_BLOCKED,
    DeadLetter,
    PartitionView,
    Snapshot,
    StuckKey,
    sub_key_text,
)


def parse_duration(text: str) -> float:
    """Seconds from ``60``, ``60s``, ``500ms``, ``5m`` or ``1h``; ValueError names the text."""
    raw = text.strip().lower()
    number, scale = raw, 1.0
    for suffix, unit in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if raw.endswith(suffix):
            number, scale = raw[: -len(suffix)], unit
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (examples: 60s, 500ms, 5m, 1h)") from None
    if value < 0:
        raise ValueError(f"duration {text!r} must not be negative")
    return value


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass
class Rates:
    """Acked offsets per second per partition between two snapshots, and how long each
    partition's acked watermark has not moved while it had unacked items (for the warning)."""

    previous: dict[int, tuple[float, int | None]] = field(default_factory=dict)
    still_since: dict[int, float] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)

    last: float = 0.0  # the time of the latest sample

    def update(self, snapshot: Snapshot, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last = now
        for p in snapshot.partitions:
            before = self.previous.get(p.partition)
            if before is not None and now > before[0]:
                moved = (p.acked or 0) - (before[1] or 0) if p.acked is not None else 0
                self.rates[p.partition] = max(0, moved) / (now - before[0])
            if before is None or p.acked != before[1] or p.unacked_items == 0:
                self.still_since[p.partition] = now
            self.previous[p.partition] = (now, p.acked)

    def still_for(self, partition: int) -> float:
        """Seconds the partition's acked watermark stood still, up to the latest sample."""
        return self.last - self.still_since.get(partition, self.last)


def stall_warnings(snapshot: Snapshot, stall_after: float, rates: Rates | None = None) -> list[str]:
    """One line per partition whose watermark has not moved for ``stall_after`` seconds while
    items are pending: its oldest unfinished item is that old, or (watching) the acked watermark
    stood still that long although unacked items wait (is the producer's ack loop running?)."""
    out = []
    for p in snapshot.partitions:
        if p.lowest_unfinished is not None and (p.oldest_unfinished_age or 0) >= stall_after:
            holders = [
                s
                for s in snapshot.stuck
                if s.partition == p.partition and s.head_offset == p.lowest_unfinished
            ]
            cause = ""
            if holders:
                s = holders[0]
                cause = f": sub key {sub_key_text(s.sub_key)!r} {s.why}"
                if s.holder:
                    cause += f" on {s.holder}"
                if s.attempts:
                    cause += f", {s.attempts} failed attempt(s)"
            out.append(
                f"WARNING partition {p.partition}: watermark held below offset "
                f"{p.lowest_unfinished} for {age_text(p.oldest_unfinished_age)} with "
                f"{p.unacked_items} item(s) unacked{cause}"
            )
        elif rates is not None and p.unacked_items and rates.still_for(p.partition) >= stall_after:
            out.append(
                f"WARNING partition {p.partition}: acked watermark {_num(p.acked)} has not moved "
                f"for {age_text(rates.still_for(p.partition))} with {p.unacked_items} item(s) "
                "unacked (is the producer's ack loop running?)"
            )
    return out


def partitions_table(partitions: list[PartitionView], rates: Rates | None = None) -> Table:
    table = Table(title="partitions", title_justify="left", expand=False)
    for name in (
        "partition",
        "acked",
        "highest",
        "lag",
        "unacked",
        "pending",
        "running",
        "runnable",
        "blocked",
        "dead",
        "oldest",
        "acked/s",
    ):
        table.add_column(name, justify="right")
    for p in partitions:
        rate = None if rates is None else rates.rates.get(p.partition)
        table.add_row(
            str(p.partition),
            _num(p.acked),
            _num(p.highest),
            str(p.lag),
            str(p.unacked_items),
            str(p.pending_sub_keys),
            str(p.leased_sub_keys),
            str(p.runnable_sub_keys),
            str(p.blocked_sub_keys),
            str(p.dead_letters),
            age_text(p.oldest_unfinished_age),
            "-" if rate is None else f"{rate:.1f}",
        )
    return table


def workers_table(snapshot: Snapshot) -> Table:
    table = Table(title="workers", title_justify="left")
    for name in ("id", "host", "pid", "concurrency", "in-flight", "heartbeat", "reaper"):
        table.add_column(name, justify="left" if name in ("id", "host") else "right")
    for w in snapshot.workers:
        table.add_row(
            w.id,
            w.host,
            str(w.pid),
            str(w.concurrency),
            str(w.in_flight),
            f"{age_text(w.heartbeat_age)} ago",
            "yes" if w.reaper else "",
        )
    return table


def stuck_table(stuck: list[StuckKey], older_than: float) -> Table:
    table = Table(
        title=f"stuck sub keys (head older than {age_text(older_than)})", title_justify="left"
    )
    for name in ("partition", "sub key", "head", "age", "attempts", "holder", "why", "queued"):
        table.add_column(name, justify="left" if name in ("sub key", "holder", "why") else "right")
    for s in stuck:
        table.add_row(
            str(s.partition),
            sub_key_text(s.sub_key),
            _num(s.head_offset),
            age_text(s.age),
            str(s.attempts),
            s.holder or "-",
            s.why,
            str(s.queued),
        )
    return table


def dead_letters_table(letters: list[DeadLetter]) -> Table:
    table = Table(title=f"dead letters ({len(letters)})", title_justify="left")
    for name in ("partition", "offset", "sub key", "attempts", "error", "worker", "at"):
        table.add_column(
            name, justify="right" if name in ("partition", "offset", "attempts") else "left"
        )
    for d in letters:
        table.add_row(
            str(d.partition),
            _num(d.offset),
            sub_key_text(d.sub_key) if d.sub_encoded is not None else "?",
            str(d.attempts),
            f"{d.error_type}: {d.error_message}"[:80],
            d.worker,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.at_ms / 1000)) + "Z",
        )
    return table


def visible_stuck(stuck: list[StuckKey], older_than: float) -> list[StuckKey]:
    """The rows worth showing: heads at least ``older_than`` old, and every blocked key."""
    return [s for s in stuck if s.why == WHY_BLOCKED or s.age is None or s.age >= older_than]


def status_view(
    snapshot: Snapshot, stall_after: float, stuck_after: float, rates: Rates | None = None
) -> RenderableType:
    header = Text(
        f"namespace {snapshot.namespace}: {len(snapshot.partitions)} partition(s), "
        f"{len(snapshot.workers)} worker(s), "
        + time.strftime("%H:%M:%S", time.gmtime(snapshot.time))
        + " UTC",
        style="bold",
    )
    parts: list[RenderableType] = [header, partitions_table(snapshot.partitions, rates)]
    for line in stall_warnings(snapshot, stall_after, rates):
        parts.append(Text(line, style="bold red"))
    parts.append(workers_table(snapshot))
    stuck = visible_stuck(snapshot.stuck, stuck_after)
    if stuck:
        parts.append(stuck_table(stuck, stuck_after))
    return Group(*parts)
