"""What the parts of the coordinator share: the settings, the leases held, the bells to ring,
the stop flag and the counters. Only the coordinator thread changes it (``stop_requested`` is
set from any thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from workshaper.worker.lease import Lease
from workshaper.worker.settings import WorkerSettings


def new_stats() -> dict[str, int]:
    """Counters for tests, metrics and logs."""
    return {
        "claimed": 0,
        "finished": 0,
        "failed": 0,
        "dead_lettered": 0,
        "fenced": 0,
        "reaped": 0,
        # batches stopped before an item because the lease may have expired (zombie rule)
        "expired": 0,
        "retried": 0,  # failed attempts that will be retried
        "blocked": 0,  # items that blocked their sub key (on_exhausted="block")
        "redis_errors": 0,  # round trips lost to a connection error
    }


class Observer(Protocol):
    """Timings for metrics (workshaper.ops.metrics.WorkerMetrics); None when metrics are off."""

    def handler(self, seconds: float) -> None: ...
    def round_trip(self, seconds: float) -> None: ...
    def claimed(self, count: int) -> None: ...


@dataclass
class CoordinatorState:
    settings: WorkerSettings
    stop_requested: threading.Event = field(default_factory=threading.Event)
    leases: dict[tuple[int, bytes], Lease] = field(default_factory=dict)
    #: Partitions whose wake-up bell to ring in the next round trip (others may claim there).
    wakes: set[int] = field(default_factory=set)
    #: No other worker shares the backend (Worker.mark_alone): a bell rung for others would
    #: only come back through this worker's own waker.
    alone: bool = False
    stats: dict[str, int] = field(default_factory=new_stats)
    observer: Observer | None = None
    #: lease.clock() when the current round trip was sent: a lease that Redis extends in it is
    #: valid until at least then + the lease duration (Lease.extended).
    sent_at: float = 0.0

    def extended(self, lease: Lease) -> None:
        """Redis extended ``lease`` in the current round trip."""
        lease.extended(self.sent_at, self.settings.lease_seconds)

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    def held(self, lease: Lease) -> bool:
        """Is this very lease (not a later one of the same sub key) still in the table?"""
        return self.leases.get(lease.key) is lease

    def forget(self, lease: Lease) -> None:
        if self.held(lease):
            del self.leases[lease.key]


def by_partition(leases: Iterable[Lease]) -> dict[int, list[Lease]]:
    grouped: dict[int, list[Lease]] = {}
    for lease in leases:
        grouped.setdefault(lease.partition, []).append(lease)
    return grouped
