"""The reaper: finds leases whose deadline passed (a worker crashed or stalled), takes them
back with expire_lease.lua, and rings the bell of partitions with runnable sub keys that nobody
announced (a producer that died before ringing)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from workshaper import scripts
from workshaper.batch import Batch, Reply
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)

#: How often every worker checks every partition for expired leases.
REAP_INTERVAL = 1.0


class Reaper:
    def __init__(self, state: CoordinatorState) -> None:
        self._state = state
        self._partitions: list[int] = []
        self._expired: dict[int, list[bytes]] = {}  # found by the last scan, to take back
        self.next_due = 0.0  # CLOCK_MONOTONIC of the next scan

    @property
    def has_expired(self) -> bool:
        return bool(self._expired)

    def add_expiries(self, batch: Batch) -> list[Callable[[], None]]:
        """Take back what the last scan found expired (each call re-checks the deadline)."""
        reaper_id = self._state.settings.id
        handlers: list[Callable[[], None]] = []
        for partition, subs in self._expired.items():
            pkeys = self._state.settings.keys.partition(partition)
            for sub in subs:
                reply = scripts.expire_lease(batch, pkeys, sub, reaper_id)
                handlers.append(partial(self._reaped, partition, reply))
        handlers.append(self._expired.clear)
        return handlers

    def add_scan(self, batch: Batch, now: float) -> list[Callable[[], None]]:
        """Every reap interval: scan each known partition, and re-read the partition list (a
        lease in a partition that appeared since the last scan is found by the next one:
        lease + ~2 reap intervals at most)."""
        if now < self.next_due:
            return []
        settings = self._state.settings
        self.next_due = now + min(REAP_INTERVAL, settings.lease_seconds / 2)
        handlers: list[Callable[[], None]] = []
        for partition in self._partitions:
            reply = scripts.find_expired_leases(batch, settings.keys.partition(partition))
            handlers.append(partial(self._scanned, partition, reply))
        partitions: Reply[list[int]] = batch.command(
            "SMEMBERS", settings.keys.partitions, parse=lambda raw: sorted(int(p) for p in raw)
        )
        handlers.append(partial(self._partitions_read, partitions))
        return handlers

    def resend_soon(self) -> None:
        """A round trip failed: scan in the next one."""
        self.next_due = 0.0

    def _scanned(self, partition: int, reply: Reply[tuple[int, list[bytes]]]) -> None:
        ready, expired = reply.get()
        if ready:
            self._state.wakes.add(partition)  # in case a producer died before ringing
        if expired:
            self._expired[partition] = expired

    def _partitions_read(self, reply: Reply[list[int]]) -> None:
        self._partitions = reply.get()

    def _reaped(self, partition: int, reply: Reply[tuple[int, int]]) -> None:
        code, attempts = reply.get()
        if code == 0:
            return
        self._state.stats["reaped"] += 1
        log.warning(
            "partition %d: reclaimed an expired lease (head item charged, attempts now %d)%s",
            partition,
            attempts,
            {2: "; item dead-lettered", 3: "; sub key blocked"}.get(code, ""),
        )
        self._state.wakes.add(partition)
