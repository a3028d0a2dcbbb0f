"""The worker registry: each worker's heartbeat in the namespace's ``workers`` hash (host, pid,
concurrency, leases held), refreshed every few seconds and removed at a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable

from workshaper.batch import Batch
from workshaper.connection import Backend
from workshaper.worker.state import CoordinatorState

#: How often the worker refreshes its registry entry (heartbeat).
REFRESH_INTERVAL = 5.0


class Registry:
    def __init__(self, state: CoordinatorState) -> None:
        self._state = state
        self.next_due = 0.0  # CLOCK_MONOTONIC of the next heartbeat

    def add_heartbeat(self, batch: Batch, now: float) -> list[Callable[[], None]]:
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
                "seen": time.time(),
            }
        )
        batch.command("HSET", state.settings.keys.workers, state.settings.id, info)
        return []

    def unregister(self, backend: Backend) -> None:
        with contextlib.suppress(Exception):
            backend.client.hdel(self._state.settings.keys.workers, self._state.settings.id)
