"""The reaper: one elected worker of the namespace finds leases whose deadline passed (a worker
crashed or stalled), takes them back with expire_lease.lua, and rings the bell of partitions
with runnable sub keys that nobody announced.

Why one: when every worker scanned every partition every second, an idle fleet cost Redis
workers x partitions scans a second (20 x 256: 5,120 script calls, ~20,000 commands). Now:

- **Election.** The reaper holds the lock ``ws:{ns}:reaper`` (reaper_lock.lua): "term|worker",
  with a TTL of ``lock_ttl(lease)`` (at most LOCK_TTL_MAX), renewed every third of it. Every
  other worker only reads the lock's remaining TTL (one PTTL), and reads it again when that
  TTL would run out; finding it gone, it takes the lock in its next round trip. A reaper that
  crashes (SIGKILL) is so replaced within its TTL plus a round trip; since the TTL is at most a
  third of the reaper's lease, its successor is scanning before the dead reaper's own leases
  (renewed every third of the lease) can expire.
- **One read per partition per scan.** Every ``scan_interval(lease)`` the reaper reads each
  partition's expired leases with a plain ZRANGEBYSCORE bounded by the server clock (estimated
  from the lock's replies; expire_lease.lua re-checks each deadline in server time), and a
  quarter of the partitions' ``ready`` lengths (each partition's every READY_SWEEP_SCANS scans:
  bells are rung by whoever makes a sub key runnable; this only catches a process that died
  between its script and its bell). A partition whose answer was full is read again in the
  next round trip, not at the next scan.

Idle cost: W / ~TTL lock reads, P / interval lease reads and P / (READY_SWEEP_SCANS x interval)
ready reads per second: it grows with workers + partitions (docs/benchmarks.md, S6).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

from workshaper import scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend
from workshaper.worker.state import CoordinatorState

log = logging.getLogger(__name__)

#: Longest scan interval: a crashed worker's sub keys resume within lease + about this.
SCAN_INTERVAL_MAX = 1.0
#: Longest life of the reaper lock without a renewal (shorter for short leases, see lock_ttl).
LOCK_TTL_MAX = 2.0
#: Shortest lock TTL, so that tiny leases do not turn the election into a busy loop.
LOCK_TTL_MIN = 0.05
#: Each partition's ``ready`` list is read every this many scans.
READY_SWEEP_SCANS = 4
#: Most expired leases read from one partition per round trip (a full answer is read on in the
#: next round trip, so thousands of expired leases take a few round trips, not seconds).
REAP_BATCH = 1000
#: Slack added when a non-holder schedules its next look at the lock (the lock's TTL runs out
#: on the server; looking a little after it does not miss it).
LOCK_CHECK_SLACK = 0.01


def scan_interval(lease_seconds: float) -> float:
    return min(SCAN_INTERVAL_MAX, lease_seconds / 2)


def lock_ttl(lease_seconds: float) -> float:
    """At most a third of the lease: the reaper's own leases outlive its lock when it dies."""
    return max(LOCK_TTL_MIN, min(LOCK_TTL_MAX, lease_seconds / 3))


class Reaper:
    def __init__(self, state: CoordinatorState) -> None:
        self._state = state
        lease = state.settings.lease_seconds
        self._interval = scan_interval(lease)
        self._ttl = lock_ttl(lease)
        self._term = 0  # the term this worker holds, 0 while another reaps
        self._held_until = 0.0  # CLOCK_MONOTONIC until which the last renewal holds the lock
        self._take = False  # the lock was found free: try to take it in the next round trip
        self._lock_due = 0.0  # CLOCK_MONOTONIC of the next renewal (holder) or look (others)
        self._scan_due = 0.0
        self._server_offset_ms: float | None = None  # server ms - monotonic ms, estimated
        self._partitions: list[int] = []
        self._scans = 0
        self._expired: dict[int, list[bytes]] = {}  # found by the last read, to take back
        self._more: set[int] = set()  # partitions whose last read was full: read on

    # --- what the coordinator asks ---------------------------------------------------------

    @property
    def has_expired(self) -> bool:
        """Something to send at once: expiries, a full partition to read on, a free lock."""
        return bool(self._expired) or bool(self._more) or self._take

    def elected(self, now: float) -> bool:
        """Is this worker the namespace's reaper (by its last renewal and its own clock)?"""
        return self._term > 0 and now < self._held_until

    @property
    def next_due(self) -> float:
        """CLOCK_MONOTONIC of the next timer: the lock, and the scan while elected."""
        if self._term > 0:
            return min(self._lock_due, self._scan_due)
        return self._lock_due

    # --- the election ------------------------------------------------------------------------

    def add_election(self, batch: Batch, now: float) -> list[Callable[[], None]]:
        """Renew the lock (holder), take it (found free), or look at it (when it would run out)."""
        if self._take or (self._term > 0 and now >= self._lock_due):
            settings = self._state.settings
            self._take = False
            self._lock_due = now + self._ttl / 3
            reply = scripts.reaper_lock(
                batch, settings.keys, settings.id, self._term, int(self._ttl * 1000)
            )
            return [partial(self._locked, now, reply)]
        if self._term == 0 and now >= self._lock_due:
            self._lock_due = now + self._ttl  # until the answer says better
            ttl: Reply[int] = batch.command("PTTL", self._state.settings.keys.reaper, parse=int)
            return [partial(self._looked, ttl)]
        return []

    def _locked(self, sent: float, reply: Reply[scripts.ReaperLock]) -> None:
        answer = reply.get()
        received = time.monotonic()
        self._server_offset_ms = answer.server_ms - received * 1000
        if answer.held:
            if self._term != answer.term:
                log.info(
                    "worker %s reaps the namespace (term %d)", self._state.settings.id, answer.term
                )
                self._scan_due = 0.0  # a new reaper scans at once
            self._term = answer.term
            self._held_until = sent + answer.ttl_ms / 1000
            return
        if self._term:
            log.info(
                "worker %s no longer reaps: term %d holds the lock",
                self._state.settings.id,
                answer.term,
            )
        self._term = 0
        self._held_until = 0.0
        self._lock_due = received + max(0, answer.ttl_ms) / 1000 + LOCK_CHECK_SLACK

    def _looked(self, reply: Reply[int]) -> None:
        left_ms = reply.get()
        if left_ms < 0:  # -2 free; -1 a lock without TTL, not set by reaper_lock.lua
            self._take = True
        else:  # look again when it would run out unless renewed (measured from the answer)
            self._lock_due = time.monotonic() + left_ms / 1000 + LOCK_CHECK_SLACK

    def resign(self, backend: Backend) -> None:
        """A clean stop: give the lock up so another worker reaps at once."""
        if self._term == 0:
            return
        settings = self._state.settings
        with contextlib.suppress(Exception):
            run_one(
                backend, lambda b: scripts.reaper_lock(b, settings.keys, settings.id, self._term, 0)
            )
        self._term = 0

    # --- the scan ----------------------------------------------------------------------------

    def add_scan(self, batch: Batch, now: float) -> list[Callable[[], None]]:
        """Every scan interval, while elected: each known partition's expired leases, a quarter
        of the ready lists, and the partition list again (a lease in a partition that appeared
        since the last scan is found by the next one: lease + ~2 intervals at most)."""
        if not self.elected(now) or now < self._scan_due:
            return []
        settings = self._state.settings
        self._scan_due = now + self._interval
        self._scans += 1
        before = self._server_ms(now)
        handlers: list[Callable[[], None]] = []
        for index, partition in enumerate(self._partitions):
            pkeys = settings.keys.partition(partition)
            reply = scripts.expired_leases(batch, pkeys, before, REAP_BATCH)
            handlers.append(partial(self._read, partition, reply))
            if (index + self._scans) % READY_SWEEP_SCANS == 0:
                ready: Reply[int] = batch.command("LLEN", pkeys.ready, parse=int)
                handlers.append(partial(self._ready_read, partition, ready))
        partitions: Reply[list[int]] = batch.command(
            "SMEMBERS", settings.keys.partitions, parse=lambda raw: sorted(int(p) for p in raw)
        )
        handlers.append(partial(self._partitions_read, partitions))
        return handlers

    def _server_ms(self, now: float) -> int:
        if self._server_offset_ms is None:
            return 0
        return int(now * 1000 + self._server_offset_ms)

    def add_expiries(self, batch: Batch) -> list[Callable[[], None]]:
        """Take back what the last read found expired (each call re-checks the deadline), then
        read on where that read was full."""
        reaper_id = self._state.settings.id
        handlers: list[Callable[[], None]] = []
        for partition, subs in self._expired.items():
            pkeys = self._state.settings.keys.partition(partition)
            for sub in subs:
                reply = scripts.expire_lease(batch, pkeys, sub, reaper_id)
                handlers.append(partial(self._reaped, partition, reply))
        handlers.append(self._expired.clear)
        if self._more:
            before = self._server_ms(time.monotonic())
            more = sorted(self._more)
            handlers.append(self._more.clear)
            for partition in more:
                pkeys = self._state.settings.keys.partition(partition)
                reply_more = scripts.expired_leases(batch, pkeys, before, REAP_BATCH)
                handlers.append(partial(self._read, partition, reply_more))
        return handlers

    def resend_soon(self) -> None:
        """A round trip failed: renew or look, and scan, in the next one."""
        self._lock_due = 0.0
        self._scan_due = 0.0

    def _read(self, partition: int, reply: Reply[list[bytes]]) -> None:
        expired = reply.get()
        if expired:
            self._expired[partition] = expired
        if len(expired) >= REAP_BATCH:
            self._more.add(partition)

    def _ready_read(self, partition: int, reply: Reply[int]) -> None:
        if reply.get():
            self._state.wakes.add(partition)  # in case a process died before ringing

    def _partitions_read(self, reply: Reply[list[int]]) -> None:
        known = self._partitions
        self._partitions = reply.get()
        if not known and self._partitions:
            self._scan_due = 0.0  # a new reaper's first scan knew no partition yet

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
