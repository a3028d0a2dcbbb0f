"""Lease renewals: every lease this worker holds is extended every lease / 3, one script call
per partition; a lease whose token no longer owns its sub key is given up."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from workshaper import scripts
from workshaper.batch import Batch, Reply
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.lease import Lease
from workshaper.worker.state import CoordinatorState, by_partition


class Renewals:
    def __init__(self, state: CoordinatorState, dispatcher: Dispatcher) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self.next_due = 0.0  # CLOCK_MONOTONIC

    def add(self, batch: Batch, now: float) -> list[Callable[[], None]]:
        state = self._state
        if not state.leases or now < self.next_due:
            return []
        self.next_due = now + state.settings.lease_seconds / 3
        handlers: list[Callable[[], None]] = []
        for leases in by_partition(list(state.leases.values())).values():
            pairs = [(lease.sub, lease.token) for lease in leases]
            reply = scripts.extend_leases(batch, leases[0].pkeys, pairs, state.settings.lease_ms)
            handlers.append(partial(self._renewed, leases, reply))
        return handlers

    def _renewed(self, leases: list[Lease], reply: Reply[list[int]]) -> None:
        lost = reply.get()
        kept = set(range(len(leases))).difference(lost)
        for index, lease in enumerate(leases):
            if index in kept:
                self._state.extended(lease)
        for index in lost:
            lease = leases[index]
            # A completion earlier in this round trip may have released it (queue empty):
            # that is not a lost lease.
            if self._state.held(lease):
                self._dispatcher.fenced(lease, "lease renewal")

    def resend_soon(self) -> None:
        """A round trip failed: renew in the next one."""
        self.next_due = 0.0
