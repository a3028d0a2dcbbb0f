"""The coordinator: the only thread that changes lease state.

Each turn of its loop drains the inbox (batches finished or ended by the executor, bells
popped by the waker), then sends everything due in ONE round trip: completions of all leases,
failures, claims, first-batch reads, the isolation mark, expiries, lease renewals, the reaper's
election and (on the elected worker) its scan and the registry's pruning, the heartbeat and
wake-ups. Then it dispatches every reply to the part that asked.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

import redis

from workshaper.batch import Batch, Link, Reply
from workshaper.errors import ScriptError
from workshaper.worker.claims import Claims
from workshaper.worker.completions import Completions, collect
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.failures import Failures
from workshaper.worker.lane_leases import LaneLeases
from workshaper.worker.lanes import Run
from workshaper.worker.lease import (
    CONTINUE,
    READY,
    RELEASE,
    REPORTING,
    WAITING,
    YIELD,
)
from workshaper.worker.lease import clock as lease_clock
from workshaper.worker.prefetch import PrefetchPolicy
from workshaper.worker.reaper import Reaper
from workshaper.worker.registry import Registry
from workshaper.worker.renewals import Renewals
from workshaper.worker.state import CoordinatorState
from workshaper.worker.waker import REDIS_RETRY_MAX, REDIS_RETRY_MIN, Waker

log = logging.getLogger(__name__)

Handler = Callable[[], None]


class Coordinator:
    def __init__(
        self,
        state: CoordinatorState,
        link: Link,
        inbox: queue.SimpleQueue[tuple[Any, ...]],
        waker: Waker,
    ) -> None:
        settings = state.settings
        self.state = state
        self._link = link
        self._inbox = inbox
        self._waker = waker
        self.prefetch = PrefetchPolicy(settings.concurrency, settings.prefetch)
        self.dispatcher = Dispatcher(state)
        self.lanes = LaneLeases(state, self.dispatcher, self.prefetch)
        self.claims = Claims(state, self.prefetch, self.dispatcher, self.lanes)
        self.completions = Completions(state, self.dispatcher, self.prefetch, self.lanes)
        self.failures = Failures(state, self.dispatcher, self.lanes)
        self.renewals = Renewals(state, self.dispatcher)
        self.reaper = Reaper(state)
        self.registry = Registry(state)
        self.stop_deadline: float | None = None
        self._oom_delay = 0.0  # the current backoff while Redis is out of memory, else 0

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Turn until a requested stop has drained every lease (or its timeout passed)."""
        retry_delay = REDIS_RETRY_MIN
        while True:
            self._drain_inbox(self._idle_timeout())
            if self.state.stopping:
                self._begin_stop()
                if self._drained() or self._stop_expired():
                    break
            self.failures.run_due_retries()
            self.lanes.run_due_retries()
            try:
                refused = self._round_trip()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.state.stats["redis_errors"] += 1
                self._link.broken()
                log.warning("Redis unreachable (%s); retrying in %.2fs", exc, retry_delay)
                time.sleep(retry_delay)
                retry_delay = min(retry_delay * 2, REDIS_RETRY_MAX)
                continue
            retry_delay = REDIS_RETRY_MIN
            self._out_of_memory(refused)
            self._waker.publish_free_slots(self.claims.wanted())

    def _out_of_memory(self, refused: int) -> None:
        """Redis at maxmemory refuses writes that grow memory (-OOM): the refused ops stay
        queued (each part applies a reply only once it got one) and are sent again after a
        backoff, doubling while Redis refuses, until memory is freed. Writes that free memory
        (recording finished items, acks) still go through meanwhile."""
        if not refused:
            if self._oom_delay:
                log.info("Redis accepts writes again; the refused ones were sent again")
                self._oom_delay = 0.0
            return
        if not self._oom_delay:
            log.warning(
                "Redis refused %d write(s) (out of memory, maxmemory reached, unless an error"
                " was logged); retrying with backoff until it accepts them",
                refused,
            )
        self._oom_delay = min(max(self._oom_delay * 2, REDIS_RETRY_MIN), REDIS_RETRY_MAX)
        self.renewals.resend_soon()  # a refused renewal must not wait a full interval
        time.sleep(self._oom_delay)

    def _drain_inbox(self, timeout: float) -> None:
        try:
            event = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(event)
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "done":
            holder = event[1]
            if type(holder) is Run:
                self.lanes.collect(holder)
            else:
                collect(holder)
        elif kind == "ended":
            holder = event[1]
            if type(holder) is Run:
                self.lanes.run_ended(holder, event[2])
            else:
                self.completions.batch_ended(holder, event[2])
        elif kind == "wake":
            self.claims.woken(event[1])

    def _has_outgoing(self) -> bool:
        if self.claims.pending or self.state.wakes or self.reaper.has_expired:
            return True
        if self.dispatcher.isolation.mark_due() or self.claims.deferred_due:
            return True
        return any(
            lease.unreported
            or lease.end_action
            or lease.failure
            or (lease.window is not None and self.lanes.due(lease))
            for lease in self.state.leases.values()
        )

    def _idle_timeout(self) -> float:
        """How long the loop may block on its inbox: until the next timer, or not at all."""
        if self._has_outgoing():
            return 0.0
        now = time.monotonic()
        timers = [self.reaper.next_due, self.registry.next_due]
        if self.reaper.elected(now):
            timers.append(self.registry.next_prune)
        if self.state.leases:
            timers.append(self.renewals.next_due)
        for next_retry in (self.failures.next_retry(), self.lanes.next_retry()):
            if next_retry is not None:
                timers.append(next_retry)
        if self.stop_deadline is not None:
            timers.append(self.stop_deadline)
        return max(0.0, min(timers) - now)

    # --- stopping ----------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        """Stop claiming; running batches stop before their next item; waiting retries and
        leases between batches are released."""
        self.lanes.begin_fill()
        leases = self.state.leases.values()
        for lease in leases:
            lease.stop = True
            if lease.state in (WAITING, READY):
                lease.hand_back()
        self.failures.drop_retries()
        self.lanes.drop_retries()
        self.lanes.fill_gaps()
        self.dispatcher.standby.clear()
        for lease in leases:
            if lease.state == REPORTING and lease.end_action in (CONTINUE, YIELD):
                lease.end_action = RELEASE

    def _drained(self) -> bool:
        return not self.state.leases and not self.claims.pending and not self.state.wakes

    def _stop_expired(self) -> bool:
        if self.stop_deadline is None or time.monotonic() < self.stop_deadline:
            return False
        log.warning(
            "stop timeout: %d lease(s) still running are left to expire", len(self.state.leases)
        )
        return True

    # --- one round trip ----------------------------------------------------------------------

    def _round_trip(self) -> int:
        """One round trip; returns how many ops Redis refused (for lack of memory, or with
        another error reply)."""
        now = time.monotonic()
        batch = self._link.batch()
        handlers: list[Handler] = []
        handlers += self.completions.add(batch)
        handlers += self.failures.add(batch)
        handlers += self.claims.add_claims(batch)
        handlers += self.dispatcher.isolation.add_mark(batch)
        handlers += self.reaper.add_expiries(batch)
        handlers += self.renewals.add(batch, now)
        handlers += self.reaper.add_election(batch, now)
        handlers += self.reaper.add_scan(batch, now)
        elected = self.reaper.elected(now)
        handlers += self.registry.add_heartbeat(batch, now, reaping=elected)
        if elected:
            handlers += self.registry.add_prune(batch, now)
        handlers += self._add_wakes(batch)
        if not len(batch):
            return 0
        sent = time.monotonic()
        self.state.sent_at = lease_clock()
        try:
            batch.execute()
        except BaseException:
            # Nothing was applied locally: every op stays queued and is sent again (all idempotent).
            self.renewals.resend_soon()
            self.reaper.resend_soon()
            raise
        took = time.monotonic() - sent
        self.prefetch.round_trip_took(took)
        if self.state.observer is not None:
            self.state.observer.round_trip(took)
        refused = 0
        for handle in handlers:
            try:
                handle()
            except ScriptError as exc:
                # Nothing of the op was applied here (each part reads its reply first): it is
                # sent again after the backoff of _out_of_memory. Besides -OOM, an error reply
                # means state under our keys an operator must repair (a key of the wrong type):
                # the worker says which and keeps running its other work.
                if not isinstance(exc.__cause__, redis.exceptions.OutOfMemoryError):
                    log.error("Redis refused an operation (%s); sending it again later", exc)
                refused += 1
        return refused

    def _add_wakes(self, batch: Batch) -> list[Handler]:
        wakes = self.state.wakes
        if not wakes:
            return []
        rung = sorted(wakes)
        now = time.time()
        replies: list[tuple[list[int], Reply[Any]]] = [
            (group, batch.command("ZADD", key, "NX", *[x for p in group for x in (now, p)]))
            for key, group in self.state.settings.keys.by_wake_key(rung).items()
        ]

        def rang() -> None:
            for group, reply in replies:
                reply.get()  # a refused bell (-OOM) stays to be rung again
                wakes.difference_update(group)

        return [rang]
