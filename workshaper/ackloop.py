"""The ack loop: advances each partition's contiguous watermark and calls the user's ack.

Every ``interval`` seconds, for each partition with items still unacked, one round trip offers
the next watermark (the highest finished offset below the lowest unfinished one); the user's
``ack`` is called; a second round trip commits the partitions whose ack returned. The acked
watermark therefore moves in Redis only after ``ack`` returned, and an ``ack`` that raises is
offered again later (with a growing pause, so a broken ack does not spin or flood the log).
After each commit the optional ``recorded`` callback gets the watermark now recorded in Redis.
A partition whose offers keep finding nothing new (slow work, a blocked sub key) is checked
less often, down to every 100 ms, until its watermark moves again. A partition that was all
acked is first offered ``FIRST_CHECK`` of the interval after an enqueue gives it new items, not
at once: those items cannot have finished yet, and with sparse enqueues the offer at once found
nothing and the item waited most of an interval for the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import redis

from workshaper import scripts
from workshaper.batch import Link
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys
from workshaper.scripts import Offer

log = logging.getLogger(__name__)

AckCallback = Callable[[int, int], object]

#: Longest pause between retries of an ack that keeps raising.
MAX_ACK_RETRY_DELAY = 1.0
#: Offers in a row that may find nothing new before a partition is checked less often, and the
#: longest interval it then backs off to (reset as soon as its watermark moves).
QUIET_CHECKS, MAX_QUIET_INTERVAL = 4, 0.1
#: When a caught-up partition gets new items, its first offer comes this fraction of the
#: interval later (not at once: the items cannot have finished yet).
FIRST_CHECK = 0.2
#: Pause after Redis was unreachable before the loop tries again.
REDIS_RETRY_DELAY = 0.5
#: How long stop() keeps retrying to record watermarks ``ack`` accepted (Redis unreachable).
STOP_COMMIT_TIMEOUT = 5.0


def _backoff(interval: float, doublings: int, longest: float) -> float:
    """``interval * 2**doublings``, at most ``longest``. The exponent is capped: the counts
    keep growing while a partition stays stalled (minutes of quiet checks, an ack failing for
    long), and past ~1,000 doublings the product overflows a float, which failed the tick."""
    return min(interval * float(2 ** min(doublings, 64)), longest)


def ack_each_offset(call_ack: Callable[[int], bool], offer: Offer, delivered: int) -> int | None:
    """``ack_each``: call ``call_ack`` for each finished offset of ``offer`` above ``delivered``
    (what ``ack`` already returned for), in order, stopping at the first that fails (returns
    False). The highest offset ``ack`` accepted, counting ``delivered`` when it is above the
    acked watermark; None when nothing new was accepted."""
    accepted: int | None = delivered if delivered > offer.acked else None
    for offset in offer.offsets:
        if offset <= delivered:
            continue
        if not call_ack(offset):
            break
        accepted = offset
    return accepted


class AckLoop:
    def __init__(
        self,
        backend: Backend,
        keys: NamespaceKeys,
        ack: AckCallback | None,
        interval: float,
        ack_each: bool,
        *,
        recorded: AckCallback | None = None,
    ) -> None:
        self._backend = backend
        self._keys = keys
        self._ack = ack
        self._interval = interval
        self._first_check = interval * FIRST_CHECK
        self._ack_each = ack_each
        self._recorded = recorded
        self._changed = threading.Condition()
        self._targets: dict[int, int] = {}  # partition -> highest offset waiting to be acked
        self.ack_errors = 0  # calls of ack that raised (metrics)
        self._acked: dict[int, int] = {}  # partition -> acked watermark as last seen
        self._generation: dict[int, int] = {}  # partition -> commits made by this loop
        #: partition -> when it is offered next (after a failed ack, or after quiet checks)
        self._next_check: dict[int, float] = {}
        self._quiet: dict[int, int] = {}  # partition -> offers in a row that found no advance
        #: partition -> the last watermark ack() returned for (committed to Redis or not yet)
        self._delivered: dict[int, int] = {}
        self._failures: dict[int, int] = {}
        #: Partitions an enqueue found full: offered even without a target of this loop, since
        #: the items filling them may be a previous producer's, finished but never acked (its
        #: ack loop died); without an offer nothing would ever free room.
        self._full: set[int] = set()
        #: Embedded backend: partition by its first key, and the partitions whose items
        #: finished in this process since the last tick: offered at once, not after ack_interval
        #: (a completion may move the watermark; the server rings in-process, see batch.py).
        self._first_keys: dict[bytes, int] = {}
        self._rung: set[int] = set()
        if backend.server is not None:
            backend.server.listen(self._on_finished)
        self._stopping = False
        self._stop_deadline: float | None = None
        self._link = Link(backend)  # used by the loop's thread only
        self._thread = threading.Thread(target=self._run, name="workshaper-ack", daemon=True)

    # --- used by the producer --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the loop. A watermark ``ack`` accepted but not yet recorded in Redis (Redis
        was unreachable) is retried until ``timeout`` (default ``STOP_COMMIT_TIMEOUT``)
        rather than dropped. False when such a watermark is left unrecorded."""
        wait = STOP_COMMIT_TIMEOUT if timeout is None else timeout
        if self._backend.server is not None:
            self._backend.server.unlisten(self._on_finished)
        with self._changed:
            self._stopping = True
            self._stop_deadline = time.monotonic() + wait
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(wait + REDIS_RETRY_DELAY)
        unrecorded = self.unrecorded()
        if unrecorded:
            log.warning(
                "ack loop stopped with watermarks acked but not recorded in Redis: %s;"
                " the next producer of these partitions offers them again",
                unrecorded,
            )
        return not unrecorded

    def unrecorded(self) -> dict[int, int]:
        """partition -> a watermark ``ack`` accepted that is not recorded in Redis yet."""
        with self._changed:
            return {p: w for p, w in self._delivered.items() if self._acked.get(p, -1) < w}

    def watch_full(self, partition: int) -> None:
        """An enqueue found ``partition`` full: offer its watermark at the next check."""
        with self._changed:
            if partition not in self._full:
                self._full.add(partition)
                self._changed.notify_all()

    def track(self, partition: int, offset: int) -> None:
        """Remember that ``offset`` of ``partition`` must be acked before flush returns."""
        with self._changed:
            old = self._targets.get(partition, -1)
            if offset > old:
                if partition not in self._targets and self._backend.server is not None:
                    self._first_keys[self._keys.partition(partition).fixed[0]] = partition
                self._targets[partition] = offset
                # Wake the loop only if the partition was caught up (the loop may be idle);
                # one already behind is offered at its next check anyway. Waking on every
                # enqueue cost an offer per item.
                if self._acked.get(partition, -1) >= old:
                    if self._backend.server is None:
                        # What was just enqueued cannot have finished yet: the first offer
                        # comes a fraction of the interval later, when short work has.
                        self._next_check[partition] = time.monotonic() + self._first_check
                    self._changed.notify_all()

    def _on_finished(self, first_keys: list[bytes]) -> None:
        """Embedded backend, any thread: items of these partitions (by first key) finished."""
        with self._changed:
            rung = {self._first_keys[k] for k in first_keys if k in self._first_keys}
            if rung:
                self._rung |= rung
                self._changed.notify_all()

    def caught_up(self) -> bool:
        with self._changed:
            return self._caught_up_locked()

    def _caught_up_locked(self) -> bool:
        return all(self._acked.get(p, -1) >= t for p, t in self._targets.items())

    def wait_caught_up(self, deadline: float | None) -> bool:
        with self._changed:
            while not self._caught_up_locked():
                if self._stopping:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def acked_watermarks(self) -> dict[int, int]:
        with self._changed:
            return dict(self._acked)

    def commits(self, partition: int) -> int:
        """How many times this loop has moved the partition's acked watermark."""
        with self._changed:
            return self._generation.get(partition, 0)

    def wait_commit(self, partition: int, seen: int, timeout: float) -> None:
        """Block until the partition's watermark moved since ``commits()`` returned ``seen``,
        or ``timeout`` passed (which also covers acks made by another process)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._stopping and self._generation.get(partition, 0) == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    # --- the loop ----------------------------------------------------------------------------

    def _due(self) -> tuple[list[int], float | None]:
        """Partitions to offer now, and how long to wait when there are none (None: until an
        enqueue gives a new target)."""
        now = time.monotonic()
        behind = [p for p, target in self._targets.items() if self._acked.get(p, -1) < target]
        behind += [p for p in self._full if p not in behind]
        due = [p for p in behind if self._next_check.get(p, 0.0) <= now]
        if due or not behind:
            return due, None
        return due, max(0.0, min(self._next_check.get(p, 0.0) for p in behind) - now)

    def _run(self) -> None:
        while True:
            with self._changed:
                stopping = self._stopping
                for partition in self._rung:  # finished items: no quiet back-off for them
                    if partition not in self._failures:
                        self._next_check.pop(partition, None)
                        self._quiet.pop(partition, None)
                self._rung.clear()
                if not stopping:
                    due, wait = self._due()
                    if not due:
                        self._changed.wait(wait)
                        continue
            if stopping:
                self._record_delivered()
                self._link.close()
                return
            try:
                self._tick(due)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._link.broken()
                log.warning("ack loop: Redis unreachable (%s); retrying", exc)
                self._sleep(REDIS_RETRY_DELAY)
                continue
            except Exception:
                log.exception("ack loop: unexpected error; retrying")
                self._sleep(REDIS_RETRY_DELAY)
                continue
            self._sleep(self._interval)

    def _quiet_check(self, partition: int) -> None:
        """An offer found nothing new: after a few such checks, look less often (an idle or
        stuck partition should not cost a script every ack_interval)."""
        quiet = self._quiet.get(partition, 0) + 1
        self._quiet[partition] = quiet
        if quiet > QUIET_CHECKS:
            delay = _backoff(self._interval, quiet - QUIET_CHECKS, MAX_QUIET_INTERVAL)
            self._next_check[partition] = time.monotonic() + delay

    def _sleep(self, seconds: float) -> None:
        with self._changed:
            if not self._stopping and not self._rung:
                self._changed.wait(seconds)

    def _tick(self, partitions: list[int]) -> None:
        batch = self._link.batch()
        offers = {
            p: scripts.offer_watermark(batch, self._keys.partition(p), self._ack_each)
            for p in partitions
        }
        batch.execute()
        if self._full:  # (only ever filled under the lock; one found later is offered again)
            with self._changed:
                self._full.difference_update(partitions)  # offered; a full enqueue asks again
        commits: dict[int, int] = {}
        for partition, reply in offers.items():
            offer = reply.get()
            self._note(partition, offer.acked)
            if not offer.advances:
                self._quiet_check(partition)
                continue
            self._quiet.pop(partition, None)
            acked_to = self._deliver(partition, offer)
            if acked_to is not None:
                commits[partition] = acked_to
                self._delivered[partition] = acked_to
        if not commits:
            return
        batch = self._link.batch()
        committed = [
            scripts.commit_watermark(batch, self._keys.partition(p), w) for p, w in commits.items()
        ]
        batch.execute()
        for done in committed:
            done.get()
        with self._changed:  # one lock and one wake-up for every partition committed
            for partition, watermark in commits.items():
                self._generation[partition] = self._generation.get(partition, 0) + 1
                if watermark > self._acked.get(partition, -1):
                    self._acked[partition] = watermark
            self._changed.notify_all()
        for partition, watermark in commits.items():
            self._call_recorded(partition, watermark)

    def _call_recorded(self, partition: int, watermark: int) -> None:
        if self._recorded is None:
            return
        try:
            self._recorded(partition, watermark)
        except Exception:  # the watermark is recorded: nothing to retry
            log.exception("recorded(%d, %d) raised", partition, watermark)

    def _record_delivered(self) -> None:
        """At stop: record the watermarks ``ack`` accepted whose commit to Redis failed,
        retrying until the stop deadline, so a returned ack is not silently dropped."""
        while True:
            pending = self.unrecorded()
            if not pending:
                return
            try:
                batch = self._link.batch()
                committed = [
                    scripts.commit_watermark(batch, self._keys.partition(p), w)
                    for p, w in pending.items()
                ]
                batch.execute()
                for done in committed:
                    done.get()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._link.broken()
                assert self._stop_deadline is not None
                remaining = self._stop_deadline - time.monotonic()
                if remaining <= 0:
                    return
                log.warning("ack loop stopping: Redis unreachable (%s); retrying", exc)
                time.sleep(min(REDIS_RETRY_DELAY, remaining))
                continue
            for partition, watermark in pending.items():
                self._note(partition, watermark)
                self._call_recorded(partition, watermark)

    def _deliver(self, partition: int, offer: Offer) -> int | None:
        """Call the user's ack; return the watermark it accepted (None: nothing accepted).

        What ``ack`` already returned for (its commit to Redis may have failed since) is not
        offered to it again: only the commit is retried, so ack values strictly increase."""
        delivered = self._delivered.get(partition, -1)
        if self._ack is None or offer.watermark <= delivered:
            return offer.watermark
        if not self._ack_each:
            return offer.watermark if self._call_ack(partition, offer.watermark) else None
        return ack_each_offset(partial(self._call_ack, partition), offer, delivered)

    def _call_ack(self, partition: int, offset: int) -> bool:
        assert self._ack is not None
        try:
            self._ack(partition, offset)
        except Exception:
            failures = self._failures.get(partition, 0) + 1
            self._failures[partition] = failures
            self.ack_errors += 1
            delay = _backoff(self._interval, failures, MAX_ACK_RETRY_DELAY)
            self._next_check[partition] = time.monotonic() + delay
            log.exception(
                "ack(%d, %d) raised (failure %d); offering it again in %.3fs",
                partition,
                offset,
                failures,
                delay,
            )
            return False
        self._failures.pop(partition, None)
        self._next_check.pop(partition, None)
        return True

    def _note(self, partition: int, acked: int) -> None:
        # Only the ticking thread writes _acked: an offer that found the acked watermark where
        # it was (most do) takes no lock and wakes no one.
        if acked <= self._acked.get(partition, -1):
            return
        with self._changed:
            if acked > self._acked.get(partition, -1):
                self._acked[partition] = acked
            self._changed.notify_all()
