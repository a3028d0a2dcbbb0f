"""The worker: leases sub keys, runs their items in order, records results, renews and reaps.

Threads of one worker process:

- the coordinator (``run()``'s thread): the only code that changes lease state. Each turn of
  its loop drains the inbox, then sends everything due in ONE round trip (completions of all
  leases, failures, claims, batch reads, lease renewals, the reaper's checks, wake-ups);
- the waker: blocks on the namespace's wake-up sorted set (BZPOPMIN) while the worker has free
  slots, and tells the coordinator which partition has runnable sub keys; never polls;
- the executor: runs handlers (a thread per slot, or one event loop for ``async def``).

A lease lives in one of these states::

    FETCHING  claimed; its first batch is being read
    READY     a batch is read and waits for room in the executor (prefetched)
    RUNNING   a batch is in the executor (running, or queued for a thread: prefetched)
    REPORTING the batch ended; its completion / failure is being recorded
    WAITING   a failed item waits for its retry (the lease is kept, so successors wait too)

After a crash the sub keys the dead worker held get a single-step window (expire_lease.lua).
A lease in its window runs *isolated*: the worker stops its other batches after their current
item, hands its prefetched leases back, flags the lease in Redis and runs the window's items
one at a time with nothing else running, so a crash then can only be that item's and is
charged to it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis

from workshaper import codec, scripts
from workshaper.connection import Backend, connect
from workshaper.errors import InvalidInput, InvalidType
from workshaper.executor import BatchRunner, Executor, make_executor
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.producer import check_positive
from workshaper.scripts import Batch, Completion, Link
from workshaper.signals import install_stop_handlers

log = logging.getLogger(__name__)

#: How long a lease may keep a sub key while others of its partition wait (fairness).
LEASE_QUANTUM = 1.0
#: Items a worker reads per lease per round trip.
DEFAULT_BATCH_SIZE = 100
#: Longest the waker blocks in one BZPOPMIN (bounds how fast it notices a stop).
WAKE_BLOCK_SECONDS = 1.0
#: How often every worker checks every partition for expired leases.
REAP_INTERVAL = 1.0
#: How often the worker refreshes its registry entry (heartbeat).
REFRESH_INTERVAL = 5.0
#: How far ahead prefetching looks, in coordinator round trips: a lease claimed now is runnable
#: after its claim, its batch read and a coordinator turn or two.
LOOKAHEAD_ROUND_TRIPS = 4
#: Floor of the round-trip time in that estimate (a loaded host answers slower than it measured).
MIN_ROUND_TRIP = 0.001
#: Weight of the newest sample in the moving averages of batch and round-trip times.
EWMA_WEIGHT = 0.1
#: Pause after Redis was unreachable, doubled up to the max while it stays unreachable.
REDIS_RETRY_MIN, REDIS_RETRY_MAX = 0.05, 2.0

EXHAUSTED_MODES = {"dead_letter": "d", "block": "b"}

FETCHING, READY, RUNNING = "fetching", "ready", "running"
REPORTING, WAITING = "reporting", "waiting"


def moving_average(average: float, sample: float) -> float:
    """Exponentially weighted; the first sample (average 0) is taken as it is."""
    if not average:
        return sample
    return average + EWMA_WEIGHT * (sample - average)


@dataclass(eq=False)
class Lease:
    """A sub key this worker holds. Only the coordinator changes it, except ``stop``."""

    partition: int
    pkeys: PartitionKeys
    sub: bytes
    sub_key: codec.SubKey
    token: int
    exact: int  # items left to run one at a time after an unattributed crash
    attempts_record: bytes
    acquired: float = field(default_factory=time.monotonic)
    state: str = FETCHING
    entries: list[bytes] = field(default_factory=list)  # the batch, head first
    attempt: int = 1  # attempt number of entries[0]
    unreported: list[int] = field(default_factory=list)  # finished, not yet recorded
    #: Offsets the executor finished, not yet collected by the coordinator (deque: append and
    #: popleft are atomic, so the two threads need no lock).
    finished: deque[int] = field(default_factory=deque)
    notified: bool = False  # the executor posted a "done" wake-up not yet handled
    end_action: str | None = None  # "c", "y" or "r" once the batch ended
    failure: tuple[Any, ...] | None = None  # an outcome waiting to be recorded
    stop: bool = False  # read by the executor before each item
    started: float = 0.0  # CLOCK_MONOTONIC when the executor began the current batch
    #: The last read got fewer items than asked: the queue was read to its end, so once the
    #: batch is recorded the lease most likely ends (always, for a ``sub_key=None`` item).
    read_to_end: bool = False
    lost: bool = False
    isolated: bool = False  # flagged in Redis as running alone in this process

    def attempt_of_head(self) -> int:
        """1 + the attempts already used by the head entry (from the Redis record)."""
        if not self.entries or not self.attempts_record:
            return 1
        offset, _, count = self.attempts_record.partition(b"|")
        if self.entries[0].startswith(offset + b"|"):
            return int(count) + 1
        return 1


@dataclass
class _Claim:
    partition: int
    request_id: str
    count: int


class Worker:
    """Runs ``work(message, partition, offset)`` for the items of a namespace, in sub-key order.

    ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT when called from the main thread);
    ``start()`` runs the same loop in a background thread.
    """

    def __init__(
        self,
        redis: Any = None,
        namespace: str = "default",
        *,
        work: Callable[..., Any],
        on_done: Callable[..., Any] | None = None,
        on_error: Callable[..., Any] | None = None,
        concurrency: int = 8,
        lease: float = 30.0,
        max_attempts: int = 3,
        retry_backoff: float = 0.2,
        on_exhausted: str = "dead_letter",
        batch_size: int = DEFAULT_BATCH_SIZE,
        prefetch: int | None = None,
        name: str | None = None,
    ) -> None:
        codec.check_namespace(namespace)
        for label, fn in (("work", work), ("on_done", on_done), ("on_error", on_error)):
            if fn is not None and not callable(fn):
                raise InvalidType(f"{label} must be callable, got {type(fn).__name__}")
        if work is None:
            raise InvalidType("work must be callable, got None")
        check_positive("concurrency", concurrency)
        check_positive("lease", lease, allow_float=True)
        check_positive("max_attempts", max_attempts)
        check_positive("batch_size", batch_size)
        if isinstance(retry_backoff, bool) or not isinstance(retry_backoff, int | float):
            raise InvalidType(f"retry_backoff must be a number, got {retry_backoff!r}")
        if retry_backoff < 0:
            raise InvalidInput(f"retry_backoff must be >= 0, got {retry_backoff}")
        if on_exhausted not in EXHAUSTED_MODES:
            raise InvalidInput(
                f"on_exhausted must be 'dead_letter' or 'block', got {on_exhausted!r}"
            )
        if lease < 0.05:
            raise InvalidInput(f"lease must be >= 0.05 seconds, got {lease}")
        self.namespace = namespace
        self.concurrency = concurrency
        self.lease_seconds = float(lease)
        self.max_attempts = max_attempts
        self.retry_backoff = float(retry_backoff)
        self.on_exhausted = on_exhausted
        self.batch_size = batch_size
        if prefetch is None:
            prefetch = 2 * concurrency
        elif isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise InvalidInput(f"prefetch must be an int >= 0, got {prefetch!r}")
        #: Most leases held beyond ``concurrency`` (batch read ahead) while the backlog is deep;
        #: how many are used follows the batch times (see _lookahead).
        self.prefetch = prefetch
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._owns_backend = not isinstance(redis, Backend)
        self._backend = connect(redis)
        self._keys = NamespaceKeys(namespace)
        self._lease_ms = max(1, int(self.lease_seconds * 1000))
        self._mode = EXHAUSTED_MODES[on_exhausted]
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._link = Link(self._backend)  # the coordinator's connection
        self._runner = BatchRunner(work, on_done, on_error, self._inbox.put, self.id)
        self._executor: Executor | None = None  # made by run(): an unrun worker holds no threads
        # coordinator state
        self._leases: dict[tuple[int, bytes], Lease] = {}
        self._claims: list[_Claim] = []
        self._wakes: set[int] = set()
        self._retries: list[tuple[float, int, Lease]] = []
        self._retry_seq = itertools.count()
        self._request_seq = itertools.count()
        self._expired: dict[int, list[bytes]] = {}
        self._partitions: list[int] = []
        self._next_renew = self._next_reap = self._next_refresh = 0.0
        self._free = threading.Condition()
        self._free_slots = concurrency
        self._in_executor = 0  # leases whose batch is in the executor
        self._capacity = concurrency  # how many batches the executor may hold (set by run())
        self._standby: deque[Lease] = deque()  # READY leases, in the order they became ready
        self._deep_backlog = False  # the last claim left >= concurrency sub keys runnable
        self._batch_seconds = 0.0  # moving average of a finished batch's run time (0: none yet)
        self._round_trip_seconds = 0.0  # moving average of one coordinator round trip
        #: The lease in its single-step window after a crash, run with nothing else running in
        #: this process so that a crash now can only be its head item's (see expire_lease.lua).
        self._isolating: Lease | None = None
        self._stop_requested = threading.Event()
        self._stop_deadline: float | None = None
        self._running = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Counters for tests, metrics and logs.
        self.stats: dict[str, int] = {
            "claimed": 0,
            "finished": 0,
            "failed": 0,
            "dead_lettered": 0,
            "fenced": 0,
            "reaped": 0,
        }

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Worker:
        """Run the worker in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("this Worker was started already")
        self._thread = threading.Thread(target=self.run, name="workshaper-worker", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Run until stop() (or SIGTERM/SIGINT when called from the main thread)."""
        if self._running:
            raise RuntimeError("this Worker is running already")
        self._running = True
        restore = self._install_signal_handlers()
        waker = threading.Thread(target=self._wake_loop, name="workshaper-waker", daemon=True)
        try:
            scripts.register_scripts(self._backend)
            self._executor = make_executor(self._runner, self.concurrency)
            self._capacity = self.concurrency
            if self._executor.queues_beyond_concurrency:
                # Prefetched leases wait in the executor's own queue: a thread that finishes a
                # batch takes the next one at once, without waiting for a coordinator turn.
                self._capacity += self.prefetch
            self._executor.start()
            waker.start()
            log.info(
                "worker %s started: namespace %r, concurrency %d, lease %.1fs",
                self.id,
                self.namespace,
                self.concurrency,
                self.lease_seconds,
            )
            self._loop()
        except Exception:
            log.exception("worker %s crashed", self.id)
            raise
        finally:
            self._stop_requested.set()
            with self._free:
                self._free.notify_all()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self._unregister()
            self._link.close()
            restore()
            if self._owns_backend:
                self._backend.close()
            self._done.set()
            log.info("worker %s stopped", self.id)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming, let running items finish (up to ``timeout`` s), record them, release
        every lease so other workers continue at once. True when everything was drained."""
        self._request_stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._done.wait()
        return not self._leases

    def _request_stop(self, timeout: float | None) -> None:
        self._stop_deadline = None if timeout is None else time.monotonic() + timeout
        self._stop_requested.set()
        self._inbox.put(("stop",))
        with self._free:
            self._free.notify_all()

    def _install_signal_handlers(self) -> Callable[[], None]:
        return install_stop_handlers(
            partial(self._request_stop, None),
            self._stop_requested.is_set,
            forced_exit_note="held leases will expire",
        )

    # --- the coordinator loop --------------------------------------------------------------

    def _loop(self) -> None:
        retry_delay = REDIS_RETRY_MIN
        while True:
            self._drain_inbox(self._idle_timeout())
            if self._stop_requested.is_set():
                self._begin_stop()
                if self._drained() or self._stop_expired():
                    break
            self._due_retries()
            try:
                self._round_trip()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._link.broken()
                log.warning("Redis unreachable (%s); retrying in %.2fs", exc, retry_delay)
                time.sleep(retry_delay)
                retry_delay = min(retry_delay * 2, REDIS_RETRY_MAX)
                continue
            retry_delay = REDIS_RETRY_MIN
            self._publish_free_slots()

    def _drained(self) -> bool:
        return not self._leases and not self._claims and not self._wakes

    def _stop_expired(self) -> bool:
        if self._stop_deadline is None or time.monotonic() < self._stop_deadline:
            return False
        log.warning("stop timeout: %d lease(s) still running are left to expire", len(self._leases))
        return True

    def _has_outgoing(self) -> bool:
        if self._claims or self._wakes or self._expired or self._mark_due():
            return True
        return any(
            lease.unreported or lease.end_action or lease.failure or lease.state == FETCHING
            for lease in self._leases.values()
        )

    def _idle_timeout(self) -> float:
        """How long the loop may block on its inbox: until the next timer, or not at all."""
        if self._has_outgoing():
            return 0.0
        now = time.monotonic()
        timers = [self._next_reap, self._next_refresh]
        if self._leases:
            timers.append(self._next_renew)
        if self._retries:
            timers.append(self._retries[0][0])
        if self._stop_deadline is not None:
            timers.append(self._stop_deadline)
        return max(0.0, min(timers) - now)

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
            self._collect(event[1])
        elif kind == "ended":
            self._batch_ended(event[1], event[2])
        elif kind == "wake":
            self._woken(event[1])

    @staticmethod
    def _collect(lease: Lease) -> None:
        """Move what the executor finished into ``unreported``. The flag is cleared first: an
        item finished meanwhile either is drained here or posts a new wake-up."""
        lease.notified = False
        finished, take = lease.finished, lease.unreported.append
        while finished:
            take(finished.popleft())

    def _woken(self, partition: int) -> None:
        wanted = self._wanted()
        if wanted <= 0 or self._stop_requested.is_set():
            self._wakes.add(partition)  # give the bell back for another worker
            return
        if any(c.partition == partition for c in self._claims):
            return  # one claim per partition at a time: its answer says if more are left
        request_id = f"{self.id}:{next(self._request_seq)}"
        self._claims.append(_Claim(partition, request_id, wanted))

    def _batch_ended(self, lease: Lease, outcome: tuple[Any, ...]) -> None:
        self._collect(lease)
        lease.state = REPORTING
        self._in_executor -= 1
        self._dispatch_standby()
        kind = outcome[0]
        if lease.lost:
            self._drop(lease)
            return
        if kind == "finished":
            self._batch_seconds = moving_average(
                self._batch_seconds, time.monotonic() - lease.started
            )
            lease.entries = []
            lease.end_action = self._continue_action(lease)
        elif kind == "stopped":
            lease.entries = lease.entries[outcome[1] :]
            lease.end_action = "r"
        else:  # failed or corrupt: recorded by fail_item
            lease.entries = lease.entries[outcome[1] :]
            lease.failure = outcome

    def _continue_action(self, lease: Lease) -> str:
        if self._stop_requested.is_set():
            return "r"
        if time.monotonic() - lease.acquired > LEASE_QUANTUM:
            return "y"
        return "c"

    def _begin_stop(self) -> None:
        """Stop claiming; running batches stop before their next item; waiting retries and
        leases between batches are released."""
        for lease in list(self._leases.values()):
            lease.stop = True
            if lease.state in (WAITING, READY):
                lease.state = REPORTING
                lease.end_action = "r"
        self._retries = []
        self._standby.clear()
        for lease in self._leases.values():
            if lease.state == REPORTING and lease.end_action in ("c", "y"):
                lease.end_action = "r"

    def _due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, _, lease = heapq.heappop(self._retries)
            if lease.state == WAITING and self._held(lease):
                self._submit(lease)

    def _held(self, lease: Lease) -> bool:
        return self._leases.get((lease.partition, lease.sub)) is lease

    def _drop(self, lease: Lease) -> None:
        if self._held(lease):
            del self._leases[(lease.partition, lease.sub)]
        if lease.state == READY and lease in self._standby:
            self._standby.remove(lease)
        if lease.state == READY:
            lease.state = REPORTING
        if lease is self._isolating:
            self._end_isolation()

    def _wanted(self) -> int:
        """How many more leases to claim: one per executor slot, plus a few prefetched (their
        first batch read ahead) while the backlog is deep, so a slot that frees up starts its
        next sub key at once instead of after a claim and a read. With few sub keys no worker
        prefetches, so none holds sub keys that another worker could be running."""
        if self._stop_requested.is_set() or self._isolating is not None:
            return 0
        held = sum(1 for lease in self._leases.values() if self._occupies(lease))
        return self.concurrency + self._lookahead() - held - sum(c.count for c in self._claims)

    @staticmethod
    def _occupies(lease: Lease) -> bool:
        """Does the lease count against the leases to hold? Not while it waits for a retry, nor
        once its batch ended and it is about to go (released, yielded, or its queue read to
        the end): its successor is claimed in the round trip that records it, not the next."""
        if lease.state == WAITING:
            return False
        if lease.state == REPORTING and lease.end_action is not None:
            return lease.end_action == "c" and not lease.read_to_end
        return True

    def _lookahead(self) -> int:
        """Leases to prefetch: as many as batches end (across the slots) while a new lease
        becomes runnable, capped by ``prefetch`` (default twice the slots). Short batches (a
        lease per item) need many, or slots sit idle waiting for claims; long ones need one,
        and more would hold sub keys idle in this worker's queue while another worker has free
        slots."""
        if not self._deep_backlog or not self.prefetch:
            return 0
        if not self._batch_seconds:
            # Nothing measured yet: one, until batches show they are short. A greedy start
            # would queue sub keys here that another worker's idle threads could run.
            return 1
        ready_after = LOOKAHEAD_ROUND_TRIPS * max(self._round_trip_seconds, MIN_ROUND_TRIP)
        needed = math.ceil(self.concurrency * ready_after / self._batch_seconds)
        return max(1, min(self.prefetch, needed))

    def _publish_free_slots(self) -> None:
        free = self._wanted()
        if free == self._free_slots:
            return  # unchanged: no lock, no wake-up (the waker only lowers it by popping)
        with self._free:
            self._free_slots = free
            if free > 0:
                self._free.notify_all()

    # --- one round trip ----------------------------------------------------------------------

    def _round_trip(self) -> None:
        now = time.monotonic()
        batch = self._link.batch()
        handlers: list[Callable[[], None]] = []
        handlers += self._add_completions(batch)
        handlers += self._add_failures(batch)
        handlers += self._add_claims(batch)
        handlers += self._add_fetches(batch)
        handlers += self._add_mark(batch)
        handlers += self._add_expiries(batch)
        if self._leases and now >= self._next_renew:
            handlers += self._add_renewals(batch)
            self._next_renew = now + self.lease_seconds / 3
        if now >= self._next_reap:
            # The partition list is read with every scan: a lease in a partition that appeared
            # since the last scan is found by the next one (lease + ~2 reap intervals at most).
            handlers += self._add_reaper_scan(batch)
            handlers += self._add_partition_refresh(batch)
            self._next_reap = now + min(REAP_INTERVAL, self.lease_seconds / 2)
        if now >= self._next_refresh:
            handlers += self._add_heartbeat(batch)
            self._next_refresh = now + REFRESH_INTERVAL
        if self._wakes:
            wakes = sorted(self._wakes)
            batch.command(
                "ZADD", self._keys.wake, "NX", *[x for p in wakes for x in (time.time(), p)]
            )
            handlers.append(lambda: self._wakes.difference_update(wakes))
        if not len(batch):
            return
        sent = time.monotonic()
        try:
            batch.execute()
        except BaseException:
            # Nothing was applied locally: every op stays queued and is sent again (all idempotent).
            self._next_renew = self._next_reap = 0.0
            raise
        self._round_trip_seconds = moving_average(self._round_trip_seconds, time.monotonic() - sent)
        for handle in handlers:
            handle()

    def _by_partition(self, leases: list[Lease]) -> dict[int, list[Lease]]:
        grouped: dict[int, list[Lease]] = {}
        for lease in leases:
            grouped.setdefault(lease.partition, []).append(lease)
        return grouped

    def _add_completions(self, batch: Batch) -> list[Callable[[], None]]:
        # Successes before a failure are recorded in the same round trip, ahead of it.
        due = [
            lease
            for lease in self._leases.values()
            if (lease.unreported or lease.end_action) and not lease.lost
        ]
        handlers: list[Callable[[], None]] = []
        for leases in self._by_partition(due).values():
            sent = [(lease, len(lease.unreported), lease.end_action or "k") for lease in leases]
            completions = [
                Completion(lease.sub, lease.token, action, lease.unreported[:n], lease.exact > 0)
                for lease, n, action in sent
            ]
            reply = scripts.complete_items(
                batch,
                leases[0].pkeys,
                completions,
                lease_ms=self._lease_ms,
                batch_size=self.batch_size,
            )
            handlers.append(partial(self._completed, reply, sent))
        return handlers

    def _completed(
        self,
        reply: scripts.Reply[list[scripts.CompletionReply]],
        sent: list[tuple[Lease, int, str]],
    ) -> None:
        for (lease, n, action), answer in zip(sent, reply.get(), strict=True):
            del lease.unreported[:n]
            if answer.code < 0:
                self._fenced(lease, "completion")
                continue
            self.stats["finished"] += answer.finished
            self._use_window_steps(lease, answer.finished)
            if action == "k":
                continue
            lease.end_action = None
            if answer.code == 2:
                self._drop(lease)
            elif answer.next_entries:
                lease.entries = answer.next_entries
                lease.read_to_end = not lease.exact and len(lease.entries) < self.batch_size
                lease.attempts_record = answer.attempts_record
                lease.attempt = lease.attempt_of_head()
                self._submit(lease)
            else:  # held with nothing left: cannot happen, but never strand a lease
                lease.end_action = "r"

    def _fenced(self, lease: Lease, what: str) -> None:
        self.stats["fenced"] += 1
        log.warning(
            "lease lost: %s rejected for partition %d (token %d); another worker owns it",
            what,
            lease.partition,
            lease.token,
        )
        lease.lost = lease.stop = True
        if lease.state != RUNNING:
            self._drop(lease)

    def _add_failures(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for lease in self._leases.values():
            if lease.failure is None:
                continue
            outcome = lease.failure
            head = lease.entries[0]
            try:
                offset: int | None = codec.parse_entry(head).offset
            except codec.CorruptEntry:
                offset = None
            if outcome[0] == "failed":
                attempt, error, force = outcome[2], outcome[3], False
            else:
                attempt, force = lease.attempt, True
                error = json.dumps(
                    {
                        "type": "CorruptItem",
                        "message": outcome[2],
                        "traceback": "",
                        "worker": self.id,
                    }
                )
                log.error(
                    "corrupt item in partition %d (offset %s): %s; dead-lettering it",
                    lease.partition,
                    offset,
                    outcome[2],
                )
            reply = scripts.fail_item(
                batch,
                lease.pkeys,
                sub=lease.sub,
                token=lease.token,
                head_prefix=codec.head_prefix(head),
                offset=offset,
                attempt=attempt,
                max_attempts=self.max_attempts,
                exhausted_mode=self._mode,
                force=force,
                error_json=error,
                lease_ms=self._lease_ms,
            )
            handlers.append(partial(self._failed, lease, reply, attempt))
        return handlers

    def _failed(self, lease: Lease, reply: scripts.Reply[tuple[int, int]], attempt: int) -> None:
        code, _ = reply.get()
        lease.failure = None
        self.stats["failed"] += 1
        if code < 0:
            self._fenced(lease, "failure record")
        elif code == 1:  # retry the same item after a backoff; the lease is kept meanwhile
            lease.attempt = attempt + 1
            if self._stop_requested.is_set():
                lease.end_action = "r"
                return
            lease.state = WAITING
            delay = self.retry_backoff * 2 ** (attempt - 1)
            heapq.heappush(self._retries, (time.monotonic() + delay, next(self._retry_seq), lease))
        elif code == 3:  # blocked: the script released the lease
            log.error(
                "partition %d: a sub key is blocked after %d attempts", lease.partition, attempt
            )
            self._drop(lease)
        else:  # dead-lettered (2), or found already done (0): go on with the rest
            if code == 2:
                self.stats["dead_lettered"] += 1
                log.error(
                    "partition %d: item dead-lettered after %d attempt(s)", lease.partition, attempt
                )
            lease.entries = lease.entries[1:]
            lease.attempt = 1
            self._use_window_steps(lease, 1)  # a dead-lettered item used a step too
            if lease.entries and not lease.stop:
                self._submit(lease)
            else:
                lease.end_action = "r" if lease.stop else self._continue_action(lease)

    def _add_claims(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for claim in self._claims:
            reply = scripts.claim_sub_keys(
                batch,
                self._keys.partition(claim.partition),
                worker_id=self.id,
                request_id=claim.request_id,
                max_leases=claim.count,
                lease_ms=self._lease_ms,
                batch_size=self.batch_size,
                max_attempts=self.max_attempts,
                exhausted_mode=self._mode,
            )
            handlers.append(partial(self._claimed, claim, reply))
        return handlers

    def _claimed(
        self, claim: _Claim, reply: scripts.Reply[tuple[int, list[scripts.Claimed]]]
    ) -> None:
        self._claims.remove(claim)
        ready_left, claimed = reply.get()
        self._deep_backlog = ready_left >= self.concurrency
        pkeys = self._keys.partition(claim.partition)
        for c in claimed:
            lease = Lease(
                claim.partition,
                pkeys,
                c.sub,
                codec.decode_sub_key(c.sub),
                c.token,
                c.exact,
                c.attempts_record,
            )
            if self._stop_requested.is_set():
                lease.stop = True
            self._leases[(claim.partition, c.sub)] = lease
        self.stats["claimed"] += len(claimed)
        if ready_left:
            # Others may take the rest (ring the bell) and so may we, at once: no waker hop.
            self._wakes.add(claim.partition)
            self._woken(claim.partition)

    def _add_fetches(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for lease in self._leases.values():
            if lease.state != FETCHING:
                continue
            count = 1 if lease.exact > 0 else self.batch_size
            reply: scripts.Reply[list[bytes]] = batch.command(
                "LRANGE", lease.pkeys.queue(lease.sub), 0, count - 1, parse=list
            )
            handlers.append(partial(self._fetched, lease, count, reply))
        return handlers

    def _fetched(self, lease: Lease, count: int, reply: scripts.Reply[list[bytes]]) -> None:
        lease.entries = reply.get()
        lease.read_to_end = len(lease.entries) < count
        lease.attempt = lease.attempt_of_head()
        lease.state = REPORTING
        if lease.stop or not lease.entries:
            lease.end_action = "r"
        else:
            self._submit(lease)

    def _add_renewals(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for leases in self._by_partition(list(self._leases.values())).values():
            pairs = [(lease.sub, lease.token) for lease in leases]
            reply = scripts.extend_leases(batch, leases[0].pkeys, pairs, self._lease_ms)
            handlers.append(partial(self._renewed, leases, reply))
        return handlers

    def _renewed(self, leases: list[Lease], reply: scripts.Reply[list[int]]) -> None:
        for index in reply.get():
            lease = leases[index]
            # A completion earlier in this round trip may have released it (queue empty):
            # that is not a lost lease.
            if self._held(lease):
                self._fenced(lease, "lease renewal")

    def _add_reaper_scan(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for partition in self._partitions:
            reply = scripts.find_expired_leases(batch, self._keys.partition(partition))
            handlers.append(partial(self._scanned, partition, reply))
        return handlers

    def _scanned(self, partition: int, reply: scripts.Reply[tuple[int, list[bytes]]]) -> None:
        ready, expired = reply.get()
        if ready:
            self._wakes.add(partition)  # in case a producer died before ringing
        if expired:
            self._expired[partition] = expired

    def _add_expiries(self, batch: Batch) -> list[Callable[[], None]]:
        handlers: list[Callable[[], None]] = []
        for partition, subs in self._expired.items():
            pkeys = self._keys.partition(partition)
            for sub in subs:
                reply = scripts.expire_lease(batch, pkeys, sub, self.id)
                handlers.append(partial(self._reaped, partition, reply))
        handlers.append(self._expired.clear)
        return handlers

    def _reaped(self, partition: int, reply: scripts.Reply[tuple[int, int]]) -> None:
        code, attempts = reply.get()
        if code == 0:
            return
        self.stats["reaped"] += 1
        log.warning(
            "partition %d: reclaimed an expired lease (head item charged, attempts now %d)%s",
            partition,
            attempts,
            {2: "; item dead-lettered", 3: "; sub key blocked"}.get(code, ""),
        )
        self._wakes.add(partition)

    def _add_partition_refresh(self, batch: Batch) -> list[Callable[[], None]]:
        partitions: scripts.Reply[list[int]] = batch.command(
            "SMEMBERS", self._keys.partitions, parse=lambda raw: sorted(int(p) for p in raw)
        )

        def refreshed() -> None:
            self._partitions = partitions.get()

        return [refreshed]

    def _add_heartbeat(self, batch: Batch) -> list[Callable[[], None]]:
        info = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "concurrency": self.concurrency,
                "leases": len(self._leases),
                "seen": time.time(),
            }
        )
        batch.command("HSET", self._keys.workers, self.id, info)
        return []

    def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            self._backend.client.hdel(self._keys.workers, self.id)

    # --- handing batches to the executor -----------------------------------------------------

    def _submit(self, lease: Lease) -> None:
        """Run the lease's batch now if an executor slot is free, else keep it ready. A lease in
        its single-step window runs isolated; while one does, other leases are handed back."""
        if lease.exact > 0 and not lease.stop:
            if self._isolating is None:
                self._begin_isolation(lease)
                return
            if self._isolating is lease:
                lease.state = READY
                self._run_isolated()
                return
        if self._isolating is not None:
            lease.state = REPORTING
            lease.end_action = "r"  # another worker runs it meanwhile
            return
        if self._in_executor >= self._capacity:
            lease.state = READY
            self._standby.append(lease)
            return
        self._dispatch(lease)

    def _dispatch(self, lease: Lease) -> None:
        assert self._executor is not None
        lease.state = RUNNING
        self._in_executor += 1
        self._executor.submit(lease, lease.entries, lease.attempt)

    def _dispatch_standby(self) -> None:
        if self._isolating is not None:
            self._run_isolated()
            return
        while self._standby and self._in_executor < self._capacity:
            lease = self._standby.popleft()
            if lease.stop:
                lease.state = REPORTING
                lease.end_action = "r"
            else:
                self._submit(lease)

    # --- isolation after a crash -------------------------------------------------------------

    def _begin_isolation(self, lease: Lease) -> None:
        log.info(
            "partition %d: running a sub key alone after a crash (%d item(s) one at a time)",
            lease.partition,
            lease.exact,
        )
        self._isolating = lease
        lease.state = READY
        while self._standby:  # hand prefetched leases back: other workers run them meanwhile
            waiting = self._standby.popleft()
            waiting.state = REPORTING
            waiting.end_action = "r"
        for held in self._leases.values():
            if held.state == RUNNING:
                # Batches still queued in the executor hand their sub keys back without running;
                # running ones stop after their current item, so the isolated one starts sooner.
                held.stop = True
        self._run_isolated()

    def _run_isolated(self) -> None:
        """Start the isolated lease's item once nothing else runs and the flag is in Redis."""
        lease = self._isolating
        if lease is None or lease.state != READY or self._in_executor:
            return
        if lease.isolated:
            self._dispatch(lease)

    def _mark_due(self) -> bool:
        lease = self._isolating
        return (
            lease is not None
            and not lease.isolated
            and lease.state == READY
            and not self._in_executor
        )

    def _add_mark(self, batch: Batch) -> list[Callable[[], None]]:
        if not self._mark_due():
            return []
        lease = self._isolating
        assert lease is not None
        # Idempotent, and rebuilt from state each turn: a failed round trip just sends it again.
        reply = scripts.mark_isolated(batch, lease.pkeys, lease.sub, lease.token)
        return [partial(self._marked, lease, reply)]

    def _marked(self, lease: Lease, reply: scripts.Reply[int]) -> None:
        if reply.get() < 0:
            self._fenced(lease, "isolation mark")
            return
        lease.isolated = True
        if lease is self._isolating:
            self._run_isolated()

    def _use_window_steps(self, lease: Lease, steps: int) -> None:
        """Count items that ended (finished or dead-lettered) against the lease's single-step
        window; isolation ends with the window (the scripts clear the flag in Redis)."""
        if not lease.exact:
            return
        lease.exact = max(0, lease.exact - steps)
        if not lease.exact and lease is self._isolating:
            self._end_isolation()

    def _end_isolation(self) -> None:
        lease = self._isolating
        self._isolating = None
        if lease is not None:
            lease.isolated = False
        self._dispatch_standby()

    # --- the waker -----------------------------------------------------------------------------

    def _wake_loop(self) -> None:
        client = self._backend.client
        pause = REDIS_RETRY_MIN  # after a failed BZPOPMIN; doubles while Redis stays away
        while not self._stop_requested.is_set():
            with self._free:
                while self._free_slots <= 0 and not self._stop_requested.is_set():
                    self._free.wait(WAKE_BLOCK_SECONDS)
            if self._stop_requested.is_set():
                return
            try:
                popped = client.bzpopmin(self._keys.wake, timeout=WAKE_BLOCK_SECONDS)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.debug("waker: Redis unreachable (%s); retrying in %.2fs", exc, pause)
                self._stop_requested.wait(pause)
                pause = min(pause * 2, REDIS_RETRY_MAX)
                continue
            pause = REDIS_RETRY_MIN
            if popped is None:
                continue
            with self._free:
                self._free_slots -= 1  # until the coordinator publishes the real number
            self._inbox.put(("wake", int(popped[1])))
