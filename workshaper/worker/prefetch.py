"""How many leases to hold: one per executor slot, plus a few read ahead while the backlog is
deep, as many as the measured batch and round-trip times call for."""

from __future__ import annotations

import math
from collections.abc import Iterable

from workshaper.worker.lease import CONTINUE, REPORTING, WAITING, Lease

#: How far ahead prefetching looks, in coordinator round trips: a lease claimed now is runnable
#: after its claim, its batch read and a coordinator turn or two.
LOOKAHEAD_ROUND_TRIPS = 4
#: Floor of the round-trip time in that estimate (a loaded host answers slower than it measured).
MIN_ROUND_TRIP = 0.001
#: Weight of the newest sample in the moving averages of batch and round-trip times.
EWMA_WEIGHT = 0.1


def moving_average(average: float, sample: float) -> float:
    """Exponentially weighted; the first sample (average 0) is taken as it is."""
    if not average:
        return sample
    return average + EWMA_WEIGHT * (sample - average)


def occupies(lease: Lease) -> bool:
    """Does the lease count against the leases to hold? Not while it waits for a retry, nor
    once its batch ended and it is about to go (released, yielded, or its queue read to
    the end): its successor is claimed in the round trip that records it, not the next."""
    if lease.state == WAITING:
        return False
    if lease.state == REPORTING and lease.end_action is not None:
        return lease.end_action == CONTINUE and not lease.read_to_end
    return True


class PrefetchPolicy:
    def __init__(self, concurrency: int, prefetch: int) -> None:
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.deep_backlog = False  # the last claim left >= concurrency sub keys runnable
        self.batch_seconds = 0.0  # moving average of a finished batch's run time (0: none yet)
        self.round_trip_seconds = 0.0  # moving average of one coordinator round trip
        #: lookahead() as of the last change of its inputs (None: to compute). wanted() runs
        #: several times per coordinator turn; the inputs change once per batch or round trip.
        self._lookahead: int | None = None

    def batch_took(self, seconds: float) -> None:
        self.batch_seconds = moving_average(self.batch_seconds, seconds)
        self._lookahead = None

    def round_trip_took(self, seconds: float) -> None:
        self.round_trip_seconds = moving_average(self.round_trip_seconds, seconds)
        self._lookahead = None

    def claim_left(self, ready_left: int) -> None:
        """A claim's answer: how many runnable sub keys its partition still has."""
        self.deep_backlog = ready_left >= self.concurrency
        self._lookahead = None

    def wanted(self, leases: Iterable[Lease], claiming: int) -> int:
        """How many more leases to claim: one per executor slot, plus a few prefetched (their
        first batch read ahead) while the backlog is deep, so a slot that frees up starts its
        next sub key at once instead of after a claim and a read. With few sub keys no worker
        prefetches, so none holds sub keys that another worker could be running.
        ``claiming``: leases asked for by claims still in flight."""
        held = lanes = 0
        concurrency = self.concurrency
        for lease in leases:  # occupies(lease), inlined: this runs per lease, per call
            window = lease.window
            if window is not None:  # a lane counts the slots its sub keys can keep busy
                held += window.occupies(concurrency)
                lanes += 1
                continue
            state = lease.state
            if state == WAITING:
                continue
            if state == REPORTING and lease.end_action is not None:
                held += lease.end_action == CONTINUE and not lease.read_to_end
            else:
                held += 1
        lookahead = self._lookahead
        if lookahead is None:
            lookahead = self._lookahead = self.lookahead()
        wanted = concurrency + lookahead - held - claiming
        if lanes:
            # At most a lane per slot: a lane a worker holds stays held while it has entries,
            # so a worker that took more than it keeps busy (an empty-looking lane fills a
            # moment later) would leave another worker nothing to claim.
            wanted = min(wanted, concurrency - lanes - claiming)
        return wanted

    def lookahead(self) -> int:
        """Leases to prefetch: as many as batches end (across the slots) while a new lease
        becomes runnable, capped by ``prefetch`` (default 8 per slot). Short batches (a
        lease per item) need many, or slots sit idle waiting for claims; long ones need one,
        and more would hold sub keys idle in this worker's queue while another worker has free
        slots."""
        if not self.deep_backlog or not self.prefetch:
            return 0
        if not self.batch_seconds:
            # Nothing measured yet: one, until batches show they are short. A greedy start
            # would queue sub keys here that another worker's idle threads could run.
            return 1
        ready_after = LOOKAHEAD_ROUND_TRIPS * max(self.round_trip_seconds, MIN_ROUND_TRIP)
        needed = math.ceil(self.concurrency * ready_after / self.batch_seconds)
        return max(1, min(self.prefetch, needed))
