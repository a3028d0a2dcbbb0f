"""Failures and retries: recording a failed attempt (fail_item.lua), waiting out the backoff
while holding the lease, dead-lettering or blocking an item that used its last attempt."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from workshaper import codec, scripts
from workshaper.batch import Batch, Reply
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.lane_leases import BLOCKED, DEAD_LETTERED, RETRY, LaneLeases
from workshaper.worker.lease import RELEASE, WAITING, Lease
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)


class Failures:
    def __init__(self, state: CoordinatorState, dispatcher: Dispatcher, lanes: LaneLeases) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self._lanes = lanes
        self._retries: list[tuple[float, int, Lease]] = []  # heap of (due, seq, lease)
        self._retry_seq = itertools.count()

    # --- recording ---------------------------------------------------------------------------

    def add(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for lease in self._state.leases.values():
            if lease.failure is not None:
                handlers.append(self._add_one(batch, lease, lease.failure))
        return handlers

    def _add_one(self, batch: Batch, lease: Lease, outcome: tuple[Any, ...]) -> Callable[[], None]:
        settings = self._state.settings
        head = lease.entries[0]
        try:
            offset: int | None = codec.parse_entry(head).offset
        except codec.CorruptEntry:
            offset = None
        if outcome[0] == "failed":
            attempt, error, force = outcome[2], outcome[3], False
        else:  # corrupt: no attempt can fix it
            attempt, force = lease.attempt, True
            error = self._corrupt_error(lease, offset, outcome[2])
        reply = scripts.fail_item(
            batch,
            lease.pkeys,
            sub=lease.sub,
            token=lease.token,
            head_prefix=codec.head_prefix(head),
            offset=offset,
            attempt=attempt,
            max_attempts=settings.max_attempts,
            exhausted_mode=settings.exhausted_mode,
            force=force,
            error_json=error,
            lease_ms=settings.lease_ms,
        )
        return partial(self._failed, lease, reply, attempt)

    def _corrupt_error(self, lease: Lease, offset: int | None, reason: str) -> str:
        log.error(
            "corrupt item in partition %d (offset %s): %s; dead-lettering it",
            lease.partition,
            offset,
            reason,
        )
        return json.dumps(
            {
                "type": "CorruptItem",
                "message": reason,
                "traceback": "",
                "worker": self._state.settings.id,
            }
        )

    def _failed(self, lease: Lease, reply: Reply[tuple[int, int]], attempt: int) -> None:
        code, _ = reply.get()
        lease.failure = None
        state, dispatcher = self._state, self._dispatcher
        state.stats["failed"] += 1
        if code in (RETRY, DEAD_LETTERED):  # the script extended the lease
            state.extended(lease)
        if code < 0:
            dispatcher.fenced(lease, "failure record")
        elif lease.window is not None:
            self._count(code, lease.partition, attempt)
            self._lanes.failure_recorded(lease, code, attempt)
        elif code == RETRY:  # the same item after a backoff; the lease is kept meanwhile
            state.stats["retried"] += 1
            lease.attempt = attempt + 1
            lease.isolated = False  # unflagged by the script: flagged again before the retry
            if state.stopping:
                lease.end_action = RELEASE
                return
            self._schedule_retry(lease, attempt)
        elif code == BLOCKED:  # the script released the lease
            state.stats["blocked"] += 1
            log.error(
                "partition %d: a sub key is blocked after %d attempts", lease.partition, attempt
            )
            dispatcher.drop(lease)
        else:  # dead-lettered, or found already done (0): go on with the rest
            if code == DEAD_LETTERED:
                state.stats["dead_lettered"] += 1
                log.error(
                    "partition %d: item dead-lettered after %d attempt(s)", lease.partition, attempt
                )
            lease.entries = lease.entries[1:]
            lease.attempt = 1
            dispatcher.isolation.use_window_steps(lease, 1)  # a dead-lettered item used a step
            if lease.entries and not lease.stop:
                dispatcher.submit(lease)
            else:
                lease.end_action = RELEASE if lease.stop else lease.next_action(state.stopping)

    def _count(self, code: int, partition: int, attempt: int) -> None:
        """A lane's failure record: counted and logged as a lease's is."""
        stats = self._state.stats
        if code == RETRY:
            stats["retried"] += 1
        elif code == BLOCKED:
            stats["blocked"] += 1
            log.error("partition %d: a lane is blocked after %d attempts", partition, attempt)
        elif code == DEAD_LETTERED:
            stats["dead_lettered"] += 1
            log.error("partition %d: item dead-lettered after %d attempt(s)", partition, attempt)

    # --- retries -----------------------------------------------------------------------------

    def _schedule_retry(self, lease: Lease, attempt: int) -> None:
        lease.state = WAITING
        delay = self._state.settings.retry_backoff * 2 ** (attempt - 1)
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._retry_seq), lease))

    def next_retry(self) -> float | None:
        """When the earliest retry is due (CLOCK_MONOTONIC), or None."""
        return self._retries[0][0] if self._retries else None

    def run_due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, _, lease = heapq.heappop(self._retries)
            if lease.state == WAITING and self._state.held(lease):
                self._dispatcher.submit(lease)

    def drop_retries(self) -> None:
        """Stopping: leases waiting for a retry are released instead (by the caller)."""
        self._retries = []
