"""The plan, a deterministic endless stream of items, and the files of a run directory that
the producer process and the harness share: progress, acks, poison items."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workshaper.admin import Admin
from workshaper_tools.testing.checker import Ack


@dataclass(frozen=True)
class PlanSpec:
    seed: int
    partitions: int
    sub_keys: int
    none_share: float = 0.05  # items with sub_key None (no order)


def plan_items(spec: PlanSpec) -> Iterator[tuple[str | None, int, int]]:
    """(sub_key, partition, offset), forever; offsets grow per partition with gaps."""
    rng = random.Random(f"plan:{spec.seed}:{spec.partitions}:{spec.sub_keys}")
    offsets = [-1] * spec.partitions
    while True:
        partition = rng.randrange(spec.partitions)
        offsets[partition] += rng.choice((1, 1, 1, 2))
        sub = None if rng.random() < spec.none_share else f"k{rng.randrange(spec.sub_keys)}"
        yield sub, partition, offsets[partition]


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_progress(path: Path) -> tuple[int, bool]:
    """(items enqueued, finished) from a producer progress file."""
    count, final = 0, False
    if path.exists():
        for line in path.read_text().splitlines():
            word, _, number = line.partition(" ")
            if word in ("enqueued", "final") and number.isdigit():
                count = max(count, int(number))
                final = final or word == "final"
    return count, final


def read_sent(path: Path) -> int:
    """How many items a producer may have sent: it writes ``sending N`` before each enqueue, so
    a producer killed mid-send leaves the upper bound of what Redis may hold."""
    count = read_progress(path)[0]
    if path.exists():
        for line in path.read_text().splitlines():
            word, _, number = line.partition(" ")
            if word == "sending" and number.isdigit():
                count = max(count, int(number))
    return count


def read_acks(path: Path) -> list[Ack]:
    acks: list[Ack] = []
    if not path.exists():
        return acks
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            acks.append(Ack(int(parts[0]), int(parts[1]), float(parts[2]), parts[3]))
    return acks


def read_poison(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out.append((int(parts[0]), int(parts[1])))
    return out


def namespace_idle(url: str, namespace: str) -> bool:
    """True when Redis has nothing pending, queued or leased left in the namespace (False when
    it cannot be read). A drain that finds this while the producer still waits knows the
    offsets it waits for are gone from Redis."""
    try:
        admin = Admin(url, namespace)
        try:
            status = admin.status()
        finally:
            admin.close()
    except Exception:
        return False
    return bool(status) and not any(
        s.pending or s.ready_sub_keys or s.leased_sub_keys for s in status
    )
