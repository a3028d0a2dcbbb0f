"""Crash windows: running a sub key alone after a crash nobody could attribute.

After a crash the sub keys the dead worker held get a single-step window (expire_lease.lua):
nobody knows which of its items was running, so the next ``batch_size`` items of each such
sub key must each run alone. A lease in its window runs *isolated*: the worker stops its other
batches after their current item, hands its prefetched leases back, flags the lease in Redis
(mark_isolated.lua) and runs the window's items one at a time with nothing else running in
this process. A crash then can only be that item's, and expire_lease.lua charges it in full.
The flag is set only while an item runs: the scripts clear it when the item ends (finished,
failed and waiting for its retry, dead-lettered), and the next item is flagged again first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Protocol

from workshaper import scripts
from workshaper.batch import Batch, Reply
from workshaper.worker.lease import READY, RUNNING, Lease
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)


class Slots(Protocol):
    """What isolation needs of the dispatcher."""

    in_executor: int

    def dispatch(self, lease: Lease) -> None: ...
    def dispatch_standby(self) -> None: ...
    def hand_back_standby(self) -> None: ...
    def fenced(self, lease: Lease, what: str) -> None: ...


class Isolation:
    def __init__(self, state: CoordinatorState, slots: Slots) -> None:
        self._state = state
        self._slots = slots
        #: The lease in its single-step window, run with nothing else running in this process.
        self.lease: Lease | None = None

    def begin(self, lease: Lease) -> None:
        log.info(
            "partition %d: running a sub key alone after a crash (%d item(s) one at a time)",
            lease.partition,
            lease.exact,
        )
        self.lease = lease
        lease.state = READY
        self._slots.hand_back_standby()
        for held in self._state.leases.values():
            if held.state == RUNNING:
                # Batches still queued in the executor hand their sub keys back without running;
                # running ones stop after their current item, so the isolated one starts sooner.
                held.stop = True
        self.run()

    def run(self) -> None:
        """Start the isolated lease's item once nothing else runs and the flag is in Redis."""
        lease = self.lease
        if lease is None or lease.state != READY or self._slots.in_executor:
            return
        if lease.isolated:
            self._slots.dispatch(lease)

    def mark_due(self) -> bool:
        lease = self.lease
        return (
            lease is not None
            and not lease.isolated
            and lease.state == READY
            and not self._slots.in_executor
        )

    def add_mark(self, batch: Batch) -> list[Callable[[], None]]:
        if not self.mark_due():
            return []
        lease = self.lease
        assert lease is not None
        # Idempotent, and rebuilt from state each turn: a failed round trip just sends it again.
        reply = scripts.mark_isolated(batch, lease.pkeys, lease.sub, lease.token)
        return [partial(self._marked, lease, reply)]

    def _marked(self, lease: Lease, reply: Reply[int]) -> None:
        if reply.get() < 0:
            self._slots.fenced(lease, "isolation mark")
            return
        lease.isolated = True
        if lease is self.lease:
            self.run()

    def use_window_steps(self, lease: Lease, steps: int) -> None:
        """Count items that ended (finished or dead-lettered) against the lease's single-step
        window; isolation ends with the window (the scripts clear the flag in Redis)."""
        if not lease.exact or steps <= 0:
            return
        # The scripts unflagged the lease as its item ended: the next item waits for a new
        # mark, so a crash between two items is never charged in full.
        lease.isolated = False
        lease.exact = max(0, lease.exact - steps)
        if not lease.exact and lease is self.lease:
            self.end()

    def end(self) -> None:
        lease = self.lease
        self.lease = None
        if lease is not None:
            lease.isolated = False
        self._slots.dispatch_standby()
