"""The embedded Manager's driver: a Manager's items run in this process on one
``PartitionEngine`` per partition, with no server, no coordinator, ack-loop, writer or waker
thread, and no bells.

The threads that run items also do what the fleet's other threads do, under one lock (as
Redis runs one script at a time): a thread that ends a batch records it (complete_items,
fail_item) and goes on with the sub key's next batch, or claims runnable sub keys for the free
slots (claim_sub_keys); then it offers the partition's watermark and calls ``ack`` outside the
lock, one ack at a time per partition, and commits it. ``enqueue`` calls enqueue_items itself,
waits while the partition is full, and claims what it made runnable while slots are free.
Claimed leases wait in a ``queue.SimpleQueue``, whose ``get`` blocks in C: an idle thread
costs nothing, and handing it a lease costs one put.
Every step is one of the partition operations the Lua scripts define (engine.py follows them
and is tested against them), so the Manager keeps the fleet's guarantees: order per sub key,
retries before successors, dead letters or a blocked sub key after the last attempt, dedupe,
backpressure and acks of the contiguous watermark only, strictly increasing.

What the fleet needs for other processes is not here: leases never expire (the process that
holds them owns the state), so there is no renewal, reaping, crash window or isolation, and
``lease`` and ``prefetch`` are checked but change nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from workshaper import codec
from workshaper.ackloop import MAX_ACK_RETRY_DELAY, ack_each_offset
from workshaper.embedded.engine import (
    ACCEPTED,
    BLOCKED,
    DEAD_LETTERED,
    FULL,
    RETRY,
    PartitionEngine,
)
from workshaper.errors import QueueFull
from workshaper.jobs import new_job, set_current_job
from workshaper.keys import NamespaceKeys
from workshaper.producer import Enqueued
from workshaper.scripts import Completion, EncodedItem, Offer
from workshaper.worker.executor import (
    call_on_done,
    error_json,
    is_async_handler,
    report_failure,
)
from workshaper.worker.lease import FIRST_SLICE, Slices
from workshaper.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

_STATUS = {0: Enqueued.ACCEPTED, 1: Enqueued.DUPLICATE, 2: Enqueued.ALREADY_ACKED}

Callback = Callable[..., Any]


@dataclass(slots=True)
class _Lease(Slices):
    """A claimed sub key and the entries it runs next (the head first)."""

    partition: int
    sub: bytes
    sub_key: codec.StoredSubKey
    token: int
    entries: list[bytes]
    attempt: int  # the head entry's attempt, 1-based; the later entries are on their first
    #: The current slice and when it ends (CLOCK_MONOTONIC; inf: none running). Past it, the
    #: batch yields its thread to waiting sub keys at the next item boundary, as a Worker's
    #: lease does (worker/lease.py).
    slice_seconds: float = FIRST_SLICE
    yield_at: float = math.inf


@dataclass(slots=True)
class _Ended:
    """How a batch ended: the offsets that succeeded, in order, and the failure that stopped
    it (``index`` of the failed entry, ``error`` as JSON, ``force``: a corrupt entry no
    attempt can fix), if any."""

    offsets: list[int]
    index: int = -1
    error: str = ""
    force: bool = False
    stopped: bool = False
    yielded: bool = False  # the slice ended before the batch did


def _attempt_of_head(record: bytes, entries: list[bytes]) -> int:
    """1 + the attempts the head entry used already (the record names its offset)."""
    offset, _, count = record.partition(b"|")
    if record and entries and entries[0].startswith(offset + b"|") and count.isdigit():
        return int(count) + 1
    return 1


class Runner:
    """Enqueue, run in sub-key order, record and ack, all in this process."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        work: Callback,
        on_done: Callback | None,
        on_error: Callback | None,
        ack: Callable[[int, int], Any] | None,
        ack_each: bool,
        ack_interval: float,
        max_in_queue: int,
        max_message_bytes: int,
        lanes: int | None = None,
    ) -> None:
        """``lanes``: spread each partition's sub keys over this many lanes (checked by the
        caller, codec.check_lanes), as a Producer with ``lanes`` does; each item still runs
        with its own sub key. Each Runner starts empty: no other producer shares its count."""
        self._settings = settings
        self._lanes = lanes
        self._lease_ms = settings.lease_ms
        self._work, self._on_done, self._on_error, self._ack = work, on_done, on_error, ack
        self._async = is_async_handler(work)
        self._ack_each, self._ack_interval = ack_each, ack_interval
        self._max_in_queue, self._max_message_bytes = max_in_queue, max_message_bytes
        self._keys = NamespaceKeys(settings.namespace)
        self._lock = threading.Lock()
        #: enqueue (for room) and flush (for acks) wait here; notified at each commit.
        self._room = threading.Condition(self._lock)
        self._engines: dict[int, PartitionEngine] = {}
        #: What the item threads take: a lease to run, a partition whose failed ack is due
        #: again, or None (stop).
        self._tasks: queue.SimpleQueue[_Lease | int | None] = queue.SimpleQueue()
        self._runnable: set[int] = set()  # partitions that may have runnable sub keys
        #: Leases queued or running (not those waiting out a retry's backoff): claims keep it
        #: at most ``concurrency``.
        self._outstanding = 0
        #: Retries and failed acks waiting out their backoff: (due on CLOCK_MONOTONIC, seq,
        #: task), a heap that one timer thread serves (a thread per retry would be thousands
        #: when a downstream outage fails every item).
        self._later_tasks: list[tuple[float, int, _Lease | int]] = []
        self._later_seq = itertools.count()
        self._later_changed = threading.Condition(self._lock)
        self._requests = itertools.count()
        #: partition -> did a batch of it end while a thread calls its ``ack`` (that thread
        #: offers again after its commit only then)
        self._acking: dict[int, bool] = {}
        self._ack_failures: dict[int, int] = {}
        self._stopping = False
        self._error: BaseException | None = None  # what killed a thread (a bug here)
        self.total_enqueued = 0
        self.total_acked = 0
        self._threads = [
            threading.Thread(target=self._serve, name=f"workshaper-work-{i}", daemon=True)
            for i in range(settings.concurrency)
        ]
        self._threads.append(
            threading.Thread(target=self._serve_later, name="workshaper-timer", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    # --- enqueue, flush, stop ----------------------------------------------------------------

    def enqueue(
        self,
        sub_key: codec.SubKey,
        message: codec.Message,
        partition: int,
        offset: int,
        timeout: float | None,
    ) -> Enqueued:
        p, sub, o, entry = codec.encode_item(
            sub_key, message, partition, offset, self._max_message_bytes, lanes=self._lanes
        )
        item = [EncodedItem(sub, o, entry)]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            engine = self._engine(p)
            while True:
                self._raise_error()
                (status,) = engine.enqueue_items(item, self._max_in_queue, self._request_id())
                if status != FULL:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._stopping or (remaining is not None and remaining <= 0):
                    raise QueueFull(
                        f"partition {p} stayed full (max_in_queue={self._max_in_queue})"
                        " past the timeout",
                        p,
                        [None],
                    )
                self._room.wait(remaining)  # a commit frees room
            if status == ACCEPTED:
                self.total_enqueued += 1
                self._runnable.add(p)
                self._claim()  # an idle thread gets it at once
        return _STATUS.get(status, Enqueued.ALREADY_ACKED)  # 4, being acked: as the producer

    def flush(self, timeout: float | None) -> bool:
        """Wait until every accepted item is acked (False if ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while any(engine.in_queue for engine in self._engines.values()) or self._acking:
                self._raise_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._room.wait(remaining)
        return True

    def stop(self, timeout: float | None) -> None:
        """Threads end their current item and stop; what was not run is dropped with this
        private state (as the seed's was)."""
        with self._lock:
            self._stopping = True
            self._later_changed.notify()
            self._room.notify_all()
        for _ in self._threads:
            self._tasks.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)

    def _engine(self, partition: int) -> PartitionEngine:
        engine = self._engines.get(partition)
        if engine is None:
            engine = self._engines[partition] = PartitionEngine(self._keys.partition(partition))
        return engine

    def _request_id(self) -> str:
        return str(next(self._requests))

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("a thread of the embedded Manager died") from self._error

    # --- the threads -------------------------------------------------------------------------

    def _serve(self) -> None:
        """Run tasks until stopped. Each step that needs the lock takes it once: recording a
        batch, claiming for a freed slot and offering the watermark together; then, when the
        watermark moved, committing the ack and offering again together."""
        loop = asyncio.new_event_loop() if self._async else None
        try:
            while (task := self._tasks.get()) is not None:
                if isinstance(task, int):  # a failed ack, due again
                    with self._lock:
                        offer = self._take_offer(task, retry=True)
                    self._ack_all(task, offer)
                    continue
                lease: _Lease | None = task
                while lease is not None:  # the sub key's batches, one after another
                    ended = self._run(lease, loop)
                    partition = lease.partition
                    with self._lock:
                        lease = self._record(lease, ended)
                        offer = self._take_offer(partition)
                    self._ack_all(partition, offer)
        except BaseException as exc:  # a bug here: enqueue and flush raise it, not wait
            log.exception("a thread of the embedded Manager died")
            with self._lock:
                self._error = exc
                self._room.notify_all()
        finally:
            if loop is not None:
                loop.close()

    def _ack_all(self, partition: int, offer: Offer | None) -> None:
        """Ack what was offered and commit it, offering again until nothing is left."""
        while offer is not None:
            accepted = self._deliver(partition, offer)
            with self._lock:
                offer = self._committed(partition, offer, accepted)

    def _claim(self) -> None:
        """Claim runnable sub keys for the free slots and queue them for the item threads
        (the caller holds the lock)."""
        s = self._settings
        free = s.concurrency - self._outstanding
        for partition in list(self._runnable):
            if free <= 0 or self._stopping:
                return
            left, claimed = self._engines[partition].claim_sub_keys(
                worker_id=s.id,
                request_id=self._request_id(),
                max_leases=free,
                lease_ms=self._lease_ms,
                batch_size=s.batch_size,
                max_attempts=s.max_attempts,
                exhausted_mode=s.exhausted_mode,
            )
            for c in claimed:
                sub_key = codec.decode_sub_key(c.sub)
                attempt = _attempt_of_head(c.attempts_record, c.entries)
                lease = _Lease(partition, c.sub, sub_key, c.token, c.entries, attempt)
                self._tasks.put(lease)
            self._outstanding += len(claimed)
            free -= len(claimed)
            if not left:
                self._runnable.discard(partition)

    def _later(self, delay: float, task: _Lease | int) -> None:
        """Queue ``task`` again after ``delay`` seconds (a retry's or a failed ack's backoff;
        the caller holds the lock)."""
        due = time.monotonic() + delay
        heapq.heappush(self._later_tasks, (due, next(self._later_seq), task))
        if self._later_tasks[0][0] == due:  # the earliest now: the timer thread waits less
            self._later_changed.notify()

    def _serve_later(self) -> None:
        """The timer thread: queue each task of ``_later`` when it is due."""
        tasks = self._later_tasks
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                if tasks and tasks[0][0] <= now:
                    task = heapq.heappop(tasks)[2]
                    if isinstance(task, _Lease):
                        self._outstanding += 1
                    self._tasks.put(task)
                    continue
                self._later_changed.wait(tasks[0][0] - now if tasks else None)

    def _run(self, lease: _Lease, loop: asyncio.AbstractEventLoop | None) -> _Ended:
        """Run the lease's entries in order until one fails (or stopping)."""
        ended = _Ended([])
        partition, sub_key, token = lease.partition, lease.sub_key, lease.token
        lane = isinstance(sub_key, codec.Lane)
        attempt = lease.attempt
        clock = time.monotonic
        lease.begin_slice()
        yield_at = lease.yield_at
        try:
            for index, raw in enumerate(lease.entries):
                if self._stopping:
                    ended.stopped = True
                    return ended
                if index and clock() >= yield_at:  # never before the first: every batch moves
                    ended.yielded = True
                    return ended
                try:
                    if lane:  # a lane's entries each carry their item's own sub key
                        offset, sub_key, message = codec.decode_lane_item(raw)
                    else:
                        entry = codec.parse_entry(raw)
                        offset, message = entry.offset, codec.decode_message(entry.payload)
                except ValueError as exc:  # CorruptEntry, or a sub key that does not decode
                    return self._corrupt(ended, index, lease, str(exc))
                job = new_job((sub_key, partition, offset, attempt, token))  # type: ignore[arg-type]
                attempt = 1
                set_current_job(job)
                try:
                    if loop is None:
                        self._work(message, partition, offset)
                    else:
                        coroutine: Coroutine[Any, Any, Any] = self._work(message, partition, offset)
                        loop.run_until_complete(coroutine)
                except BaseException as exc:  # the item's failure, whatever it is
                    report_failure(self._on_error, exc, message, job)
                    ended.index, ended.error = index, error_json(exc, self._settings.id)
                    return ended
                ended.offsets.append(offset)
                if self._on_done is not None:
                    call_on_done(self._on_done, message, partition, offset)
            return ended
        finally:
            set_current_job(None)

    def _corrupt(self, ended: _Ended, index: int, lease: _Lease, reason: str) -> _Ended:
        log.error(
            "corrupt item in partition %d (sub key %r): %s; dead-lettering it",
            lease.partition,
            lease.sub[:40],
            reason,
        )
        ended.index, ended.force = index, True
        ended.error = json.dumps(
            {"type": "CorruptItem", "message": reason, "traceback": "", "worker": self._settings.id}
        )
        return ended

    # --- recording a batch (the caller holds the lock) ------------------------------------------

    def _record(self, lease: _Lease, ended: _Ended) -> _Lease | None:
        """Record how the batch ended; the lease, when this thread runs its next batch now.
        A lease that ends frees its slot for the next runnable sub key (the caller holds the
        lock)."""
        if ended.index >= 0:
            if ended.offsets:  # the items before the failed one finished: record them
                self._complete(lease, ended.offsets, "k")
                lease.entries, lease.attempt = lease.entries[ended.index :], 1
            going_on = self._fail(lease, ended)
        elif ended.stopped:
            going_on = self._complete(lease, ended.offsets, "r")
        else:
            # Past its slice the lease yields: Redis (here the engine) keeps it for the next
            # batch only when no other sub key of the partition waits, and then the next
            # slice is longer.
            yielding = ended.yielded or time.monotonic() >= lease.yield_at
            going_on = self._complete(lease, ended.offsets, "y" if yielding else "c")
            if going_on and yielding:
                lease.next_slice()
        if going_on:
            return lease
        self._outstanding -= 1
        self._claim()
        return None

    def _complete(self, lease: _Lease, offsets: list[int], action: str) -> bool:
        """Record finished items; True when the lease goes on with its next batch."""
        s = self._settings
        if self._stopping:
            action = "r"
        (reply,) = self._engines[lease.partition].complete_items(
            [Completion(lease.sub, lease.token, action, offsets)],
            lease_ms=self._lease_ms,
            batch_size=s.batch_size,
        )
        if reply.code == 1 and reply.next_entries:  # the sub key's next batch
            lease.entries = reply.next_entries
            lease.attempt = _attempt_of_head(reply.attempts_record, reply.next_entries)
            return True
        if reply.code == 2 and reply.requeued:  # released with items left: claim it again
            self._runnable.add(lease.partition)
        elif reply.code < 0:
            log.error("partition %d: a lease was fenced in this process", lease.partition)
        return action == "k"

    def _fail(self, lease: _Lease, ended: _Ended) -> bool:
        """Record the failed attempt; True when the lease goes on at once (its next item)."""
        s = self._settings
        head = lease.entries[0]
        offset = codec.parse_entry(head).offset if not ended.force else None
        code, attempts = self._engines[lease.partition].fail_item(
            sub=lease.sub,
            token=lease.token,
            head_prefix=codec.head_prefix(head),
            offset=offset,
            attempt=lease.attempt,
            max_attempts=s.max_attempts,
            exhausted_mode=s.exhausted_mode,
            force=ended.force,
            error_json=ended.error,
            lease_ms=self._lease_ms,
        )
        if code == RETRY:  # the same item after a backoff, the lease kept meanwhile
            delay = s.retry_backoff * 2 ** (lease.attempt - 1)
            lease.attempt += 1
            if not self._stopping:
                self._later(delay, lease)
            return False
        if code == BLOCKED:  # the script released the lease
            log.error(
                "partition %d: a sub key is blocked after %d attempts", lease.partition, attempts
            )
            return False
        if code == DEAD_LETTERED:
            log.error(
                "partition %d: item dead-lettered after %d attempt(s)", lease.partition, attempts
            )
            lease.entries, lease.attempt = lease.entries[1:], 1
            if lease.entries and not self._stopping:
                return True
            return self._complete(lease, [], "c")
        return False

    # --- acks --------------------------------------------------------------------------------

    def _take_offer(self, partition: int, *, retry: bool = False) -> Offer | None:
        """The partition's watermark to ack, unless it did not move, a thread is acking it
        already (that thread offers again after its commit, so no finished item waits), or
        its ``ack`` raised and the backoff has not passed (``retry``: it has). The caller
        holds the lock and calls ``ack`` with it let go."""
        if partition in self._acking:
            self._acking[partition] = True
            return None
        if partition in self._ack_failures and not retry:
            return None
        offer = self._engines[partition].offer_watermark(self._ack_each)
        if not offer.advances:
            return None
        self._acking[partition] = False
        return offer

    def _committed(self, partition: int, offer: Offer, accepted: int | None) -> Offer | None:
        """Record what ``ack`` accepted, then the next offer (None: nothing more to ack now).
        A raising ``ack`` is offered again after a backoff. The caller holds the lock."""
        engine = self._engines[partition]
        again = self._acking.pop(partition)
        if accepted is not None:
            before = engine.in_queue
            engine.commit_watermark(accepted)
            self.total_acked += before - engine.in_queue
        self._room.notify_all()  # room for enqueue; flush looks again
        if accepted is None or accepted < offer.watermark:  # ack raised: later
            failures = self._ack_failures.get(partition, 0) + 1
            self._ack_failures[partition] = failures
            delay = min(self._ack_interval * 2 ** min(failures, 64), MAX_ACK_RETRY_DELAY)
            if not self._stopping:
                self._later(delay, partition)
            return None
        self._ack_failures.pop(partition, None)
        return self._take_offer(partition) if again else None

    def _deliver(self, partition: int, offer: Offer) -> int | None:
        """Call ``ack``; the watermark it accepted (None: none)."""
        if self._ack is None:
            return offer.watermark
        if not self._ack_each:
            return offer.watermark if self._call_ack(partition, offer.watermark) else None
        # Nothing here was delivered past the acked watermark: a commit in this process
        # cannot fail after its ack returned.
        return ack_each_offset(partial(self._call_ack, partition), offer, offer.acked)

    def _call_ack(self, partition: int, offset: int) -> bool:
        assert self._ack is not None
        try:
            self._ack(partition, offset)
        except Exception:
            log.exception("ack(%d, %d) raised; offering it again later", partition, offset)
            return False
        return True
