"""Claims: leasing runnable sub keys of a partition that rang its bell. The claim's reply holds
each new lease's first batch, so a lease runs without another read or round trip."""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from workshaper import codec, scripts
from workshaper.batch import Batch, Reply
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.lane_leases import LaneLeases, opens_window
from workshaper.worker.lease import REPORTING, Lease, valid_until
from workshaper.worker.prefetch import PrefetchPolicy
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)


@dataclass
class _Claim:
    partition: int
    request_id: str
    count: int


class Claims:
    def __init__(
        self,
        state: CoordinatorState,
        prefetch: PrefetchPolicy,
        dispatcher: Dispatcher,
        lanes: LaneLeases,
    ) -> None:
        self._state = state
        self._prefetch = prefetch
        self._dispatcher = dispatcher
        self._lanes = lanes
        self._pending: list[_Claim] = []
        #: Partitions that had runnable sub keys left when this worker had no room: claimed
        #: in the first round trip that has room again, without waiting for the waker to pop
        #: the bell (its bell was rung too, so other workers may take them meanwhile).
        self._deferred: set[int] = set()
        # Request ids must never repeat, not even across restarts of a worker under a fixed
        # name: claim_sub_keys answers a known request id from its cache (>= 60 s), so a
        # restarted process counting from 0 again would be handed its predecessor's leases and
        # tokens, and the crash that killed the predecessor would never be charged.
        self._incarnation = secrets.token_hex(8)
        self._request_seq = itertools.count()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def wanted(self) -> int:
        """How many more leases to claim now (0 while stopping or running a crash window)."""
        if self._state.stopping or self._dispatcher.isolation.lease is not None:
            return 0
        claiming = sum(c.count for c in self._pending)
        return self._prefetch.wanted(self._state.leases.values(), claiming)

    def woken(self, partition: int) -> None:
        """The partition may have runnable sub keys: claim there if there is room."""
        wanted = self.wanted()
        if wanted <= 0 or self._state.stopping:
            if not self._state.alone:
                self._state.wakes.add(partition)  # give the bell back for another worker
            if not self._state.stopping:
                self._deferred.add(partition)
            return
        self._claim(partition, wanted)

    def _claim(self, partition: int, count: int) -> None:
        self._deferred.discard(partition)
        if any(c.partition == partition for c in self._pending):
            return  # one claim per partition at a time: its answer says if more are left
        request_id = f"{self._incarnation}:{next(self._request_seq)}"
        self._pending.append(_Claim(partition, request_id, count))

    @property
    def deferred_due(self) -> bool:
        """Partitions wait for room, and there is room now: claim in the next round trip."""
        return bool(self._deferred) and self.wanted() > 0

    def _claim_deferred(self) -> None:
        """Room again (batches ended since the last turn): claim where sub keys were left.
        With a lease per item this saves the waker's pop and a coordinator turn per claim."""
        if not self._deferred:
            return
        for partition in sorted(self._deferred):
            wanted = self.wanted()
            if wanted <= 0:
                if self._state.stopping:
                    self._deferred.clear()
                return
            self._claim(partition, wanted)

    # --- claims --------------------------------------------------------------------------

    def add_claims(self, batch: Batch) -> list[Callable[[], None]]:
        self._claim_deferred()
        settings = self._state.settings
        handlers: list[Callable[[], None]] = []
        for claim in self._pending:
            reply = scripts.claim_sub_keys(
                batch,
                settings.keys.partition(claim.partition),
                worker_id=settings.id,
                request_id=claim.request_id,
                max_leases=claim.count,
                lease_ms=settings.lease_ms,
                batch_size=settings.batch_size,
                max_attempts=settings.max_attempts,
                exhausted_mode=settings.exhausted_mode,
            )
            handlers.append(partial(self._claimed, claim, reply))
        return handlers

    def _claimed(self, claim: _Claim, reply: Reply[tuple[int, list[scripts.Claimed]]]) -> None:
        ready_left, claimed = reply.get()  # first: a refused claim (-OOM) stays pending
        self._pending.remove(claim)
        self._prefetch.claim_left(ready_left)
        state = self._state
        partition = claim.partition
        pkeys = state.settings.keys.partition(partition)
        # Every lease of the claim is valid as long (Lease.extended, once for all of them).
        valid = valid_until(state.sent_at, state.settings.lease_seconds)
        # Looked up once per claim, not per lease (with a lease per item, a claim brings dozens).
        stopping, leases, start = state.stopping, state.leases, self._start
        batch_size = state.settings.batch_size
        for c in claimed:
            sub = c.sub
            lease = Lease(
                partition, pkeys, sub, _sub_key(partition, sub), c.token, c.exact, c.attempts_record
            )
            lease.valid_until = valid
            if stopping:
                lease.stop = True
            leases[(partition, sub)] = lease  # lease.key
            start(lease, c.entries, batch_size)
        state.stats["claimed"] += len(claimed)
        if state.observer is not None:
            state.observer.claimed(len(claimed))
        if ready_left:
            # Others may take the rest (ring the bell) and so may we, at once: no waker hop.
            if not state.alone:
                state.wakes.add(claim.partition)
            self.woken(claim.partition)

    def _start(self, lease: Lease, entries: list[bytes], batch_size: int) -> None:
        """Run the first batch the claim handed back (or give the lease back at once)."""
        lease.entries = entries
        lease.read_to_end = len(entries) < (1 if lease.exact > 0 else batch_size)
        lease.attempt = lease.attempt_of_head() if lease.attempts_record else 1
        lease.state = REPORTING
        if lease.stop or not entries:
            lease.hand_back()
        elif opens_window(lease):
            self._lanes.open(lease, entries, lease.attempts_record)
        else:
            self._dispatcher.submit(lease)


def _sub_key(partition: int, encoded: bytes) -> codec.StoredSubKey:
    """The claimed sub key, decoded. One WorkShaper did not write (garbage pushed to ``ready``)
    is run as its raw bytes: its lease goes through the usual steps and ends, where raising
    here would end the worker."""
    try:
        return codec.decode_sub_key(encoded)
    except ValueError as exc:
        log.error("partition %d: claimed sub key %r is corrupt (%s)", partition, encoded[:40], exc)
        return encoded
