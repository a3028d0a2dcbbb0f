"""Completions: collecting what the executor finished, recording it in Redis, and going on with
the next batch of the same sub key (or releasing it) in the same round trip."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from workshaper import scripts
from workshaper.batch import Batch, Reply
from workshaper.scripts import Completion
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.lane_leases import LaneLeases, opens_window
from workshaper.worker.lease import CONTINUE, KEEP, RELEASE, REPORTING, YIELD, Lease
from workshaper.worker.prefetch import PrefetchPolicy
from workshaper.worker.state import CoordinatorState, by_partition

log = logging.getLogger(__name__)


def collect(lease: Lease) -> None:
    """Move what the executor finished into ``unreported``. The flag is cleared first: an
    item finished meanwhile either is drained here or posts a new wake-up."""
    lease.notified = False
    finished, take = lease.finished, lease.unreported.append
    while finished:
        take(finished.popleft())


class Completions:
    def __init__(
        self,
        state: CoordinatorState,
        dispatcher: Dispatcher,
        prefetch: PrefetchPolicy,
        lanes: LaneLeases,
    ) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self._prefetch = prefetch
        self._lanes = lanes

    def batch_ended(self, lease: Lease, outcome: tuple[Any, ...]) -> None:
        """The executor is done with the lease's batch: decide what to record."""
        collect(lease)
        lease.state = REPORTING
        self._dispatcher.batch_left()
        kind = outcome[0]
        if lease.lost:
            self._dispatcher.drop(lease)
            return
        if kind == "finished":
            now = time.monotonic()
            self._prefetch.batch_took(now - lease.started)
            lease.entries = []
            lease.end_action = self._gives_way(lease.next_action(self._state.stopping, now))
        elif kind == "yielded":
            # The slice ended mid-batch: the items not run stay at the head of the sub key's
            # queue in Redis, which hands them back if nobody else waits.
            lease.entries = []
            lease.end_action = RELEASE if self._state.stopping else self._gives_way(YIELD)
        elif kind == "stopped":
            lease.entries = lease.entries[outcome[1] :]
            lease.end_action = RELEASE
        elif kind == "expired":
            # The zombie rule stopped the batch: ask Redis. If the lease is still ours the
            # completion extends it and hands out the rest again; if not, it is fenced.
            self._state.stats["expired"] += 1
            log.warning(
                "partition %d: lease may have expired (no extension confirmed within the "
                "lease); not starting another item until Redis confirms it",
                lease.partition,
            )
            lease.entries = []
            lease.end_action = RELEASE if self._state.stopping else CONTINUE
        else:  # failed or corrupt: recorded by fail_item
            lease.entries = lease.entries[outcome[1] :]
            lease.failure = outcome

    def _gives_way(self, action: str) -> str:
        """A yield while this worker has leases on standby releases the sub key: Redis sees
        only the partition's ready sub keys, not the ones claimed here that wait for a slot,
        and would hand the batch back to run ahead of them."""
        return RELEASE if action == YIELD and self._dispatcher.standby else action

    def add(self, batch: Batch) -> list[Callable[[], None]]:
        """One complete_items call per partition, for every lease with something to record.
        Successes before a failure are recorded in the same round trip, ahead of it."""
        settings = self._state.settings
        due: list[Lease] = []
        held: dict[Lease, tuple[str, int]] = {}  # lane leases: (action, held entries)
        now = time.monotonic()
        for lease in self._state.leases.values():
            if lease.lost:
                continue
            if lease.window is None:
                if lease.unreported or lease.end_action:
                    due.append(lease)
            elif (report := self._lanes.report(lease, now)) is not None:
                held[lease] = report
                due.append(lease)
        handlers: list[Callable[[], None]] = []
        for leases in by_partition(due).values():
            sent = [
                (lease, len(lease.unreported), held.get(lease, (lease.end_action or KEEP, 0)))
                for lease in leases
            ]
            completions = [
                Completion(
                    lease.sub, lease.token, action, lease.unreported[:n], lease.exact > 0, holds
                )
                for lease, n, (action, holds) in sent
            ]
            reply = scripts.complete_items(
                batch,
                leases[0].pkeys,
                completions,
                lease_ms=settings.lease_ms,
                batch_size=settings.batch_size,
            )
            handlers.append(partial(self._completed, reply, sent))
        return handlers

    def _completed(
        self,
        reply: Reply[list[scripts.CompletionReply]],
        sent: list[tuple[Lease, int, tuple[str, int]]],
    ) -> None:
        # Looked up once per reply, not per lease (with a lease per item, a reply has dozens).
        state, dispatcher = self._state, self._dispatcher
        isolation, drop, submit = dispatcher.isolation, dispatcher.drop, dispatcher.submit
        finished = 0
        for (lease, n, (action, _)), answer in zip(sent, reply.get(), strict=True):
            del lease.unreported[:n]
            code = answer.code
            if code < 0:
                dispatcher.fenced(lease, "completion")
                continue
            finished += answer.finished
            if lease.window is not None:
                self._lanes.completed(lease, action, answer)
                continue
            if lease.exact:  # only a lease in its single-step window counts its steps
                isolation.use_window_steps(lease, answer.finished)
            if code == 1:  # held: the script extended the lease
                state.extended(lease)
            if action == KEEP:
                continue
            lease.end_action = None
            if code == 2:
                if answer.requeued:
                    # Released with items left (stop, hand-back, yield): the script put it back
                    # in ready, so ring its bell; the reaper's ready sweep comes only every few
                    # seconds.
                    state.wakes.add(lease.partition)
                drop(lease)
            elif answer.next_entries and opens_window(lease):
                self._lanes.open(lease, answer.next_entries, answer.attempts_record)
            elif answer.next_entries:
                if action == YIELD:  # nobody took the yield: a longer slice
                    lease.next_slice()
                lease.entries = answer.next_entries
                lease.read_to_end = (
                    not lease.exact and len(lease.entries) < state.settings.batch_size
                )
                lease.attempts_record = answer.attempts_record
                lease.attempt = lease.attempt_of_head()
                submit(lease)
            else:  # held with nothing left: cannot happen, but never strand a lease
                lease.end_action = RELEASE
        state.stats["finished"] += finished
