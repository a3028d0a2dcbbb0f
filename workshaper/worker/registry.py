"""The worker registry: each worker's heartbeat in the namespace's ``workers`` hash (host, pid,
concurrency, leases held, ``reaper``: whether it is the elected reaper, and ``seen``: the
heartbeat's server time), refreshed every REFRESH_INTERVAL and removed at a clean stop. A
worker that crashed never removes its entry: the elected reaper prunes entries whose heartbeat
is older than STALE_SECONDS, every PRUNE_INTERVAL, so an entry outlives its worker by at most
STALE_SECONDS + PRUNE_INTERVAL (20 s)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from functools import partial

from workshaper import scripts
from workshaper.batch import Batch, Reply
from workshaper.connection import Backend
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)

#: How often the worker refreshes its registry entry (heartbeat).
REFRESH_INTERVAL = 5.0
#: An entry whose heartbeat is older than this is pruned (three heartbeats missed).
STALE_SECONDS = 15.0
#: How often the elected reaper prunes the registry.
PRUNE_INTERVAL = 5.0


class Registry:
    def __init__(self, state: CoordinatorState) -> None:
        self._state = state
        self.next_due = 0.0  # CLOCK_MONOTONIC of the next heartbeat
        self.next_prune = 0.0  # CLOCK_MONOTONIC of the next pruning (while elected reaper)
        self._reaping = False  # as last written

    def add_heartbeat(self, batch: Batch, now: float, reaping: bool) -> list[Callable[[], None]]:
        """Every REFRESH_INTERVAL, and at once when ``reaping`` (is this worker the elected
        reaper?) changed, so operators see who reaps."""
        if reaping != self._reaping:
            self._reaping = reaping
            self.next_due = 0.0
        if now < self.next_due:
            return []
        self.next_due = now + REFRESH_INTERVAL
        state = self._state
        info = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "concurrency": state.settings.concurrency,
                "leases": len(state.leases),
                "reaper": reaping,
            }
        )
        # register_worker.lua adds "seen" in server time: pruning compares one clock.
        scripts.register_worker(batch, state.settings.keys, state.settings.id, info)
        return []

    def add_prune(self, batch: Batch, now: float) -> list[Callable[[], None]]:
        """Called only on the elected reaper: drop the entries of workers gone silent."""
        if now < self.next_prune:
            return []
        self.next_prune = now + PRUNE_INTERVAL
        reply = scripts.prune_workers(batch, self._state.settings.keys, int(STALE_SECONDS * 1000))
        return [partial(self._pruned, reply)]

    def _pruned(self, reply: Reply[int]) -> None:
        pruned = reply.get()
        if pruned:
            log.info("pruned %d silent worker(s) from the registry", pruned)

    def unregister(self, backend: Backend) -> None:
        with contextlib.suppress(Exception):
            backend.client.hdel(self._state.settings.keys.workers, self._state.settings.id)
