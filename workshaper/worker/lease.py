"""A lease: a sub key this worker holds, the batch it runs, and the states it moves through.

::

    CLAIMED   claimed; its first batch (handed back by the claim) not yet looked at
    READY     a batch is read and waits for room in the executor (prefetched)
    RUNNING   a batch is in the executor (running, or queued for a thread: prefetched)
    REPORTING the batch ended; its completion / failure is being recorded
    WAITING   a failed item waits for its retry (the lease is kept, so successors wait too)

Only the coordinator thread changes a lease, except the executor, which appends to
``finished`` and sets ``notified``, and reads ``stop``, ``valid_until`` and ``yield_at`` before
each item.

Slices: a plain lease runs its sub key for a slice (``FIRST_SLICE``, 20 ms) and then yields at
the next item boundary, mid-batch too: the rest of its backlog goes back behind the sub keys of
its partition that wait for a worker, so a key with a long backlog cannot hold a slot while
others queue up behind it (with 100 keys of ~100 items each, whole batches of 0.25 s each ran
their keys in waves: S2 took 1.16x its ideal). A yield nobody took (Redis keeps the lease when
no other sub key of the partition is ready) doubles the next slice, up to ``LEASE_QUANTUM``:
a lone long backlog pays a round trip per second, not one per 20 ms.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from workshaper import codec
from workshaper.keys import PartitionKeys
from workshaper.worker.lanes import LaneWindow

CLAIMED, READY, RUNNING = "claimed", "ready", "running"
REPORTING, WAITING = "reporting", "waiting"

#: How long a lease may keep a sub key while others of its partition wait (fairness): the
#: longest slice of a plain lease, and a lane's quantum (lane_leases.py).
LEASE_QUANTUM = 1.0
#: A plain lease's first slice; each yield nobody took doubles it, up to LEASE_QUANTUM.
FIRST_SLICE = 0.02

#: Part of the lease kept as a safety margin by the zombie rule (``BatchRunner.steps``):
#: no item starts later than ``lease * (1 - LEASE_MARGIN)`` after the last confirmed extension
#: was sent. Covers the drift between this host's and Redis's clocks over one lease.
LEASE_MARGIN = 0.1

_monotonic = time.monotonic


def valid_until(sent: float, lease_seconds: float) -> float:
    """When a lease Redis extended in a round trip sent at ``sent`` may have expired there."""
    return sent + lease_seconds * (1 - LEASE_MARGIN)


def clock() -> float:
    """CLOCK_MONOTONIC, read through a module global so a test can move it."""
    return _monotonic()


#: What the completion of a batch asks of its lease (complete_items.lua): keep it, continue
#: with the next batch, yield (continue unless others wait), or release it.
KEEP, CONTINUE, YIELD, RELEASE = "k", "c", "y", "r"


class _Sliced(Protocol):
    slice_seconds: float  # FIRST_SLICE at first
    yield_at: float  # clock() at which the current slice ends; inf: none running


class Slices:
    """The slices of a lease that runs one sub key, mixed into the Worker's Lease below and the
    embedded runner's lease; each holds the two fields of ``_Sliced`` (the empty __slots__
    keeps the leases' own)."""

    __slots__ = ()

    def begin_slice(self: _Sliced) -> None:
        """A batch goes to be run: the slice starts now, unless one is running already (a
        lease that went on without yielding keeps the slice it began)."""
        if self.yield_at == math.inf:
            self.yield_at = clock() + self.slice_seconds

    def next_slice(self: _Sliced) -> None:
        """A yield that nobody took: the lease goes on with a slice twice as long, at most
        LEASE_QUANTUM."""
        self.slice_seconds = min(self.slice_seconds * 2, LEASE_QUANTUM)
        self.yield_at = math.inf


@dataclass(eq=False, slots=True)
class Lease(Slices):
    """A sub key this worker holds."""

    partition: int
    pkeys: PartitionKeys
    sub: bytes
    sub_key: codec.StoredSubKey  # a Lane: each entry carries its own sub key
    token: int
    exact: int  # items left to run one at a time after an unattributed crash
    attempts_record: bytes
    acquired: float = field(default_factory=time.monotonic)
    state: str = CLAIMED
    entries: list[bytes] = field(default_factory=list)  # the batch, head first
    attempt: int = 1  # attempt number of entries[0]
    unreported: list[int] = field(default_factory=list)  # finished, not yet recorded
    #: Offsets the executor finished, not yet collected by the coordinator (deque: append and
    #: popleft are atomic, so the two threads need no lock).
    finished: deque[int] = field(default_factory=deque)
    notified: bool = False  # the executor posted a "done" wake-up not yet handled
    end_action: str | None = None  # CONTINUE, YIELD or RELEASE once the batch ended
    failure: tuple[Any, ...] | None = None  # an outcome waiting to be recorded
    stop: bool = False  # read by the executor before each item
    started: float = 0.0  # CLOCK_MONOTONIC when the executor began the current batch
    took: float = 0.0  # how long the last batch ran, set by the executor as it ended
    #: The last read got fewer items than asked: the queue was read to its end, so once the
    #: batch is recorded the lease most likely ends (always, for a ``sub_key=None`` item).
    read_to_end: bool = False
    lost: bool = False
    isolated: bool = False  # flagged in Redis as running alone in this process
    #: clock() after which the lease may have expired in Redis: counted from when the claim or
    #: the last extension Redis confirmed was *sent*, minus LEASE_MARGIN. Written by the
    #: coordinator, read by the executor before each item (a float: atomic).
    valid_until: float = 0.0
    #: A lane's window (lane_leases.py): its entries, run in parallel by their own sub key.
    window: LaneWindow | None = None
    #: The length of the current slice, and clock() at which it ends (inf: no slice running).
    #: The executor yields at the first item boundary past ``yield_at`` (a float: atomic).
    slice_seconds: float = FIRST_SLICE
    yield_at: float = math.inf

    @property
    def key(self) -> tuple[int, bytes]:
        """Where the lease is filed in the coordinator's table."""
        return (self.partition, self.sub)

    @property
    def item_reader(self) -> None:
        """None: the executor decodes each entry of a lease's batch itself."""
        return None

    def stops_before(self, index: int) -> bool:
        """A stopped lease's batch stops before its next item, whichever it is."""
        return True

    def attempt_of_head(self) -> int:
        """1 + the attempts already used by the head entry (from the Redis record)."""
        if not self.entries or not self.attempts_record:
            return 1
        offset, _, count = self.attempts_record.partition(b"|")
        if self.entries[0].startswith(offset + b"|"):
            return int(count) + 1
        return 1

    def extended(self, sent: float, lease_seconds: float) -> None:
        """Redis extended the lease (claim, renewal, completion, failure) in a round trip sent
        at ``sent``: its deadline there is at least ``sent + lease_seconds``."""
        self.valid_until = max(self.valid_until, valid_until(sent, lease_seconds))

    def hand_back(self) -> None:
        """Give the sub key back without running its batch: released in the next round trip."""
        self.state = REPORTING
        self.end_action = RELEASE

    def next_action(self, stopping: bool, now: float | None = None) -> str:
        """After a batch ended well: release when stopping, yield once its slice (a lane: its
        quantum) is over, else go on. ``now``: ``clock()``, when the caller read it already."""
        if stopping:
            return RELEASE
        now = clock() if now is None else now
        if self.window is None:
            return YIELD if now >= self.yield_at else CONTINUE
        if now - self.acquired > LEASE_QUANTUM:
            return YIELD
        return CONTINUE
