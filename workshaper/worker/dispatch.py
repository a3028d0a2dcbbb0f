"""Handing lease batches to the executor, keeping read-ahead leases on standby, and forgetting
leases that ended or were lost."""

from __future__ import annotations

import logging
from collections import deque

from workshaper.worker.executor import Executor
from workshaper.worker.isolation import Isolation
from workshaper.worker.lanes import LaneWindow
from workshaper.worker.lease import READY, REPORTING, RUNNING, Lease
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs a lease's batch now if the executor has room, else keeps it READY on standby.

    The executor holds up to ``capacity`` batches: ``concurrency`` running, plus (for the
    thread executor) prefetched ones queued behind them, so a thread that finishes a batch
    takes the next one at once, without waiting for a coordinator turn.
    """

    def __init__(self, state: CoordinatorState) -> None:
        self._state = state
        self._executor: Executor | None = None  # attached by run(): an unrun worker has none
        self.capacity = state.settings.concurrency
        self.in_executor = 0  # leases whose batch is in the executor
        self.standby: deque[Lease] = deque()  # READY leases, in the order they became ready
        #: Lane leases with runnable sub keys and no executor slot, in the order they waited.
        self.lanes_waiting: deque[Lease] = deque()
        #: How many sub keys a lane's run may hold (lane_leases.py sets it from item times).
        self.lane_run_sub_keys = 1
        self.isolation = Isolation(state, self)

    def attach(self, executor: Executor, prefetch: int) -> None:
        self._executor = executor
        self.capacity = self._state.settings.concurrency
        if executor.queues_beyond_concurrency:
            self.capacity += prefetch

    def submit(self, lease: Lease) -> None:
        """Run the lease's batch now if an executor slot is free, else keep it ready. A lease in
        its single-step window runs isolated; while one does, other leases are handed back."""
        isolation = self.isolation
        if lease.exact > 0 and not lease.stop:
            if isolation.lease is None:
                isolation.begin(lease)
                return
            if isolation.lease is lease:
                lease.state = READY
                isolation.run()
                return
        if isolation.lease is not None:
            lease.hand_back()  # another worker runs it meanwhile
            return
        if self.in_executor >= self.capacity:
            lease.state = READY
            self.standby.append(lease)
            return
        self.dispatch(lease)

    def dispatch(self, lease: Lease) -> None:
        assert self._executor is not None
        lease.state = RUNNING
        self.in_executor += 1
        lease.begin_slice()
        self._executor.submit(lease, lease.entries, lease.attempt)

    def start_runs(self, lease: Lease) -> None:
        """Hand a lane's runnable sub keys to the executor while it has room; the rest wait
        for slots in ``lanes_waiting``."""
        window = lease.window
        if window is None or not window.runnable or window.confirm:
            return
        if not self._state.held(lease):
            return
        if lease.stop:
            self._start_gap_runs(lease, window)
            return
        if self.isolation.lease is not None:
            # Another lease runs alone: this lane is released once its runs have ended.
            lease.stop = True
            return
        assert self._executor is not None
        submit, lane, most = self._executor.submit, lease.sub_key, self.lane_run_sub_keys
        while window.runnable and self.in_executor < self.capacity:
            run, attempt = window.take_run(lease, lane, most)
            self.in_executor += 1
            submit(run, run.entries, attempt)
        if window.runnable and not window.waiting_for_slot:
            window.waiting_for_slot = True
            self.lanes_waiting.append(lease)

    def _start_gap_runs(self, lease: Lease, window: LaneWindow) -> None:
        """A stopping worker runs a lane's gaps (lanes.LaneWindow.fill_until), not while a
        lease runs alone, and never for a lane it lost."""
        if lease.lost or window.fill_until is None or self.isolation.lease is not None:
            return
        assert self._executor is not None
        while self.in_executor < self.capacity:
            taken = window.take_gap_run(lease, lease.sub_key)
            if taken is None:
                return
            run, attempt = taken
            self.in_executor += 1
            self._executor.submit(run, run.entries, attempt)
        if window.gap_startable() and not window.waiting_for_slot:
            window.waiting_for_slot = True
            self.lanes_waiting.append(lease)

    def batch_left(self) -> None:
        """A batch left the executor: its slot goes to the next lease on standby."""
        self.in_executor -= 1
        if self.standby or self.lanes_waiting or self.isolation.lease is not None:
            self.dispatch_standby()  # else nothing waits for it

    def dispatch_standby(self) -> None:
        if self.isolation.lease is not None:
            self.isolation.run()
            return
        while self.standby and self.in_executor < self.capacity:
            lease = self.standby.popleft()
            if lease.stop:
                lease.hand_back()
            else:
                self.submit(lease)
        lanes = self.lanes_waiting
        while lanes and self.in_executor < self.capacity:
            lease = lanes.popleft()
            if lease.window is not None:
                lease.window.waiting_for_slot = False
                self.start_runs(lease)

    def hand_back_standby(self) -> None:
        """Give every prefetched lease back: other workers run them meanwhile."""
        while self.standby:
            self.standby.popleft().hand_back()

    def drop(self, lease: Lease) -> None:
        """Forget a lease that ended or was lost (its batch may still be running)."""
        self._state.forget(lease)
        if lease.window is not None and lease.window.waiting_for_slot:
            lease.window.waiting_for_slot = False
            self.lanes_waiting.remove(lease)
        if lease.state == READY and lease in self.standby:
            self.standby.remove(lease)
        if lease.state == READY:
            lease.state = REPORTING
        if lease is self.isolation.lease:
            self.isolation.end()

    def fenced(self, lease: Lease, what: str) -> None:
        """A script refused the lease's token: another worker owns the sub key now."""
        self._state.stats["fenced"] += 1
        log.warning(
            "lease lost: %s rejected for partition %d (token %d); another worker owns it",
            what,
            lease.partition,
            lease.token,
        )
        lease.lost = lease.stop = True
        if lease.state != RUNNING or (lease.window is not None and not lease.window.in_flight):
            self.drop(lease)
