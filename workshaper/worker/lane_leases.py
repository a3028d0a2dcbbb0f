"""Lane leases: opening a lane's window, running its sub keys in parallel, and what the
coordinator records of it in each round trip (lanes.py has the window itself).

A lane lease goes through the steps of any lease (claim, renewals, completions, failures,
expiry), with these differences:

- a completion reports the window's finished prefix and how many entries it still holds
  (``held``); with room in the window it also reads on (complete_items.lua's "c" with held);
- the lease ends when its window is empty and nothing runs: then it continues, yields or
  releases as a lease does after a batch; a stopping lane releases with held 0 once its runs
  have ended (what finished above the prefix runs again: at least once);
- a failed item is recorded when it is the head; its retry waits here, holding only its sub
  key, while the lane's other sub keys go on.

A lane in its single-step window after a crash (``exact``) runs as a plain lease, one item at
a time and isolated; its window opens once that is used up.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time

from workshaper import codec, scripts
from workshaper.worker.dispatch import Dispatcher
from workshaper.worker.lanes import LaneWindow, Outcome, Run
from workshaper.worker.lease import (
    CONTINUE,
    KEEP,
    LEASE_QUANTUM,
    RELEASE,
    RUNNING,
    YIELD,
    Lease,
)
from workshaper.worker.prefetch import PrefetchPolicy, moving_average
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)

#: fail_item.lua's reply codes.
RETRY, DEAD_LETTERED, BLOCKED = 1, 2, 3

#: A run of several sub keys aims to take about this long: long enough that its hand-off to a
#: thread and its coordinator event (~10 us of CPU) are small beside it, short enough that the
#: sub keys queued behind a slow item in it wait little.
RUN_SECONDS = 0.0005
#: Most sub keys one run holds.
MOST_RUN_SUB_KEYS = 32


def is_lane(lease: Lease) -> bool:
    return isinstance(lease.sub_key, codec.Lane)


def opens_window(lease: Lease) -> bool:
    """Does the lease's next batch go into a lane window (not the single-step window)?"""
    return lease.window is not None or (isinstance(lease.sub_key, codec.Lane) and not lease.exact)


class LaneLeases:
    def __init__(
        self, state: CoordinatorState, dispatcher: Dispatcher, prefetch: PrefetchPolicy
    ) -> None:
        self._state = state
        self._dispatcher = dispatcher
        self._prefetch = prefetch
        self._retries: list[tuple[float, int, Lease, bytes]] = []  # heap: due, seq, lease, sub
        self._item_seconds = 0.0  # moving average of an item's time in a finished run
        self._retry_seq = itertools.count()

    # --- reading and running -----------------------------------------------------------------

    def open(self, lease: Lease, entries: list[bytes], attempts_record: bytes) -> None:
        """The lease's first entries (claim or completion) go into a new window."""
        if lease.window is None:
            lease.window = LaneWindow()
        lease.state = RUNNING
        lease.end_action = None
        self.read(lease, entries, attempts_record)

    def read(self, lease: Lease, entries: list[bytes], attempts_record: bytes) -> None:
        window = lease.window
        assert window is not None
        window.add(entries, attempts_record)
        self._dispatcher.start_runs(lease)

    def collect(self, run: Run) -> None:
        """Mark what the executor finished (see completions.collect for the flag's order)."""
        run.notified = False
        finished = run.finished
        if not finished:
            return
        offsets = []
        while finished:
            offsets.append(finished.popleft())
        lease = run.lease
        assert isinstance(lease, Lease) and lease.window is not None
        lease.window.finished(offsets)
        lease.unreported += lease.window.prefix()

    def run_ended(self, run: Run, outcome: Outcome) -> None:
        self.collect(run)
        lease = run.lease
        assert isinstance(lease, Lease) and lease.window is not None
        window = lease.window
        window.run_ended(run, outcome)
        self._dispatcher.batch_left()
        if outcome[0] == "finished":
            self._run_took(run, run.took)
        elif outcome[0] == "expired":
            self._state.stats["expired"] += 1
            log.warning(
                "partition %d: lane lease may have expired (no extension confirmed within the "
                "lease); not starting another item until Redis confirms it",
                lease.partition,
            )
        if lease.lost:
            if not window.in_flight:
                self._dispatcher.drop(lease)
            return
        self.failure_due(lease)
        self._dispatcher.start_runs(lease)

    def _run_took(self, run: Run, seconds: float) -> None:
        """Size runs from how long items take: several sub keys a run while they are short."""
        self._prefetch.batch_took(seconds)
        self._item_seconds = moving_average(self._item_seconds, seconds / len(run.slots))
        fits = int(RUN_SECONDS / max(self._item_seconds, 1e-9))
        self._dispatcher.lane_run_sub_keys = max(1, min(MOST_RUN_SUB_KEYS, fits))

    def failure_due(self, lease: Lease) -> None:
        """Hand the head's failure to failures.py once everything before it is recorded (a
        failure sent alongside an unrecorded prefix could find another head)."""
        window = lease.window
        if window is None or lease.unreported or lease.failure is not None:
            return
        found = window.head_failure()
        if found is None:
            return
        head, outcome = found
        lease.entries = [head.raw]
        lease.attempt = window.attempt_of(head)
        lease.failure = outcome

    # --- completions -------------------------------------------------------------------------

    def report(self, lease: Lease, now: float) -> tuple[str, int] | None:
        """What a completion of the lane asks now, (action, held), or None: nothing to send."""
        window = lease.window
        assert window is not None
        held = len(window)
        if lease.stop:
            if window.in_flight or lease.failure is not None or window.gap_startable():
                return (KEEP, held) if lease.unreported else None
            return RELEASE, 0
        if not held and not window.in_flight:  # a batch's end: go on, yield or release
            return lease.next_action(self._state.stopping, now), 0
        if not (lease.unreported or window.confirm):
            return None
        if held >= self._state.settings.batch_size or now - lease.acquired > LEASE_QUANTUM:
            # Full; or held past its quantum: no more reading, so the window drains and the
            # lane yields (others of the partition may be waiting).
            return KEEP, held
        return CONTINUE, held

    def due(self, lease: Lease) -> bool:
        """A completion is due without anything finished (its end, a stop, a confirmation)."""
        window = lease.window
        assert window is not None
        if lease.unreported:
            return True
        if lease.stop:
            return not (window.in_flight or lease.failure is not None or window.gap_startable())
        return window.confirm or (not window and not window.in_flight)

    def completed(self, lease: Lease, action: str, answer: scripts.CompletionReply) -> None:
        """A completion's reply, kept or released (fenced is the caller's)."""
        window = lease.window
        assert window is not None
        if answer.code == 2:
            if answer.requeued:
                self._state.wakes.add(lease.partition)
            self._dispatcher.drop(lease)
            return
        if action == YIELD:
            # Nobody waited for the partition: a new quantum. Else the window would drain to
            # empty before every read from here on (report: no reading past the quantum).
            lease.acquired = time.monotonic()
        self._state.extended(lease)
        window.confirm = False
        window.add(answer.next_entries, answer.attempts_record)
        self.failure_due(lease)
        self._dispatcher.start_runs(lease)

    # --- failures ----------------------------------------------------------------------------

    def failure_recorded(self, lease: Lease, code: int, attempt: int) -> None:
        """fail_item.lua's answer for the lane's head (fenced is the caller's)."""
        window = lease.window
        assert window is not None
        state = self._state
        if code == BLOCKED:  # the script released the lane: it waits for an operator
            lease.lost = lease.stop = True
            if not window.in_flight:
                self._dispatcher.drop(lease)
            return
        if code == RETRY:
            found = window.head_failure()
            if found is not None:
                window.retry_later(found[0], attempt)
                if not lease.stop:
                    delay = state.settings.retry_backoff * 2 ** (attempt - 1)
                    due = time.monotonic() + delay
                    entry = (due, next(self._retry_seq), lease, found[0].sub)
                    heapq.heappush(self._retries, entry)
            return
        window.head_dead_lettered()  # dead-lettered, or found gone (0)
        lease.unreported += window.prefix()
        self.failure_due(lease)
        self._dispatcher.start_runs(lease)

    def begin_fill(self) -> None:
        """The worker stops: each lane finishes its gaps below what finished, then releases
        (with everything it finished recorded, so nothing runs again). Called before the
        leases' stop flag is set, so no run stops at a gap first."""
        for lease in self._state.leases.values():
            if lease.window is not None and not lease.lost:
                lease.window.begin_fill()

    def fill_gaps(self) -> None:
        """Start the gaps' runs (after the stop flag is set: see begin_fill)."""
        for lease in list(self._state.leases.values()):
            if lease.window is not None:
                self._dispatcher.start_runs(lease)

    def next_retry(self) -> float | None:
        return self._retries[0][0] if self._retries else None

    def run_due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, _, lease, sub = heapq.heappop(self._retries)
            if lease.window is not None and self._state.held(lease) and not lease.stop:
                lease.window.retry_now(sub)
                self._dispatcher.start_runs(lease)

    def drop_retries(self) -> None:
        self._retries = []
