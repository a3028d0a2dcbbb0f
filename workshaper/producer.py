"""The producer: validates, encodes and enqueues items; owns the ack loop of its partitions."""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import redis

from workshaper import codec, scripts
from workshaper.ackloop import AckCallback, AckLoop
from workshaper.batch import Link, Reply
from workshaper.connection import Backend, connect
from workshaper.errors import (
    BackendUnavailable,
    InvalidInput,
    InvalidType,
    ProducerClosed,
    QueueFull,
    RedisLostWrites,
    RedisOutOfMemory,
    ScriptError,
)
from workshaper.keys import PartitionKeys, namespace_keys
from workshaper.lanes import record_lane_count
from workshaper.options import check_bool, check_positive
from workshaper.scripts import EncodedItem

log = logging.getLogger(__name__)

#: Items per partition sent in one script call: large enough to amortise the round trip, small
#: enough to keep one script's run (which blocks Redis) in the low milliseconds.
MAX_ITEMS_PER_CALL = 1000
#: Upper bounds of the options: beyond them a value is a typo, not a setting (an ack loop
#: that sleeps for hours, a message Redis cannot store: 512 MB is its string limit).
MAX_IN_QUEUE, MAX_ACK_INTERVAL, MAX_MESSAGE_BYTES = 10**9, 60.0, 512 * 1024 * 1024
#: While a partition is full, how often to look again even without a local ack (another
#: process may be acking it).
FULL_RECHECK = 0.1


class Enqueued(enum.Enum):
    """What happened to an enqueued item."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # pending, running, or finished above the watermark
    ALREADY_ACKED = "already_acked"  # at or below the (being) acked watermark


_STATUS = {0: Enqueued.ACCEPTED, 1: Enqueued.DUPLICATE, 2: Enqueued.ALREADY_ACKED}
_FULL = 3
#: Covered by a watermark offered to ack but not committed (its producer may have died between
#: ack and commit): reported as ALREADY_ACKED, but flush still waits for that ack.
_BEING_ACKED = 4
#: The partition's highest accepted offset went below one this producer saw accepted.
_LOST = 5

Item = tuple[codec.SubKey, codec.Message, int, int]


def _describe(value: object) -> str:
    """A value's type and length, for error messages (never its content: it may be a payload)."""
    try:
        return f"{type(value).__name__} of {len(value)}"  # type: ignore[arg-type]
    except Exception:
        return type(value).__name__


class Producer:
    """Enqueue (sub_key, message, partition, offset) items and ack contiguous watermarks.

    Use one producer per partition at a time (like a Kafka consumer owns its partitions): its
    ack loop advances the watermark of the partitions it enqueued to.
    """

    def __init__(
        self,
        redis: Any = None,
        namespace: str = "default",
        *,
        max_in_queue: int = 1000,
        ack: AckCallback | None = None,
        ack_interval: float = 0.005,
        ack_each: bool = False,
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
        recorded: AckCallback | None = None,
        runnable: Callable[[list[int]], object] | None = None,
        lanes: int | None = None,
    ) -> None:
        """``runnable``: called after each round trip with the partitions it wrote accepted
        items to, *instead of* ringing the namespace's wake-up bell. Only for a caller that
        runs the only worker of a private backend (the Manager): it tells that worker
        in-process, without a hop through the waker thread.

        ``lanes``: spread each partition's sub keys over this many lanes (1 to
        codec.MAX_LANES) by a hash of the sub key; a worker leases a lane (docs/lanes.md).
        The count is fixed per namespace (LaneCountMismatch)."""
        codec.check_namespace(namespace)
        self.lanes = codec.check_lanes(lanes)
        check_positive("max_in_queue", max_in_queue, maximum=MAX_IN_QUEUE)
        check_positive("ack_interval", ack_interval, allow_float=True, maximum=MAX_ACK_INTERVAL)
        check_positive("max_message_bytes", max_message_bytes, maximum=MAX_MESSAGE_BYTES)
        check_bool("ack_each", ack_each)
        for label, fn in (("ack", ack), ("recorded", recorded), ("runnable", runnable)):
            if fn is not None and not callable(fn):
                raise InvalidType(f"{label} must be callable, got {type(fn).__name__}")
        self.namespace = namespace
        self.max_in_queue = max_in_queue
        self.max_message_bytes = max_message_bytes
        #: A Backend given by the caller may serve others (a worker, a Manager): not ours to close.
        self._owns_backend = not isinstance(redis, Backend)
        self._backend: Backend = connect(redis)
        self._keys = namespace_keys(namespace, self._backend.cluster)
        self._partition_keys: dict[int, PartitionKeys] = {}
        self._registered: set[int] = set()
        #: Whether the namespace's lane count was found to be ours (lanes.record_lane_count).
        #: Checked once per Producer, at its first enqueue, before anything is written, and
        #: by every Producer, with lanes or without: a Producer without lanes records "no
        #: lanes" too (SET NX), so whichever kind enqueues first fixes the namespace's kind
        #: and a later one of the other kind is refused, even while the first still runs (a
        #: read-only check by producers without lanes would let a Producer with lanes start
        #: after it and split their sub keys). It costs one round trip per Producer, not per
        #: enqueue call; a count changed under a running Producer (by a purge) is not seen.
        self._lanes_checked = False
        #: Enqueue request ids are unique across processes and restarts: a random prefix.
        self._producer_id = uuid.uuid4().hex[:16]
        self._requests = 0
        #: partition -> the highest offset Redis accepted from this producer (or found there as
        #: a duplicate); Redis holding less later means it lost writes.
        self._highest: dict[int, int] = {}
        self._unrung: set[int] = set()  # partitions whose wake-up bell Redis refused to ring
        self._runnable = runnable
        self._lock = threading.Lock()  # one enqueue at a time keeps per-partition order
        self._link = Link(self._backend)  # used under the lock only
        self._closed = False
        #: Enqueue outcomes and waits, for metrics (``metrics_collector``): plain counters.
        self._counts: Counter[Enqueued] = Counter()
        self._full_waits = 0
        self._ack_loop = AckLoop(
            self._backend, self._keys, ack, ack_interval, ack_each, recorded=recorded
        )
        self._ack_loop.start()

    # --- enqueue -----------------------------------------------------------------------------

    def enqueue(
        self,
        sub_key: codec.SubKey,
        message: codec.Message,
        partition: int,
        offset: int,
        timeout: float | None = None,
    ) -> Enqueued:
        """Enqueue one item; block while its partition is full (QueueFull after ``timeout``)."""
        return self.enqueue_many([(sub_key, message, partition, offset)], timeout=timeout)[0]

    def enqueue_many(self, items: Iterable[Item], timeout: float | None = None) -> list[Enqueued]:
        """Enqueue items in order: one round trip moves every partition's share of the batch.

        Every item is validated before anything is written. A full partition blocks until its
        ack loop frees room; after ``timeout`` seconds QueueFull is raised (its ``statuses``
        say which items were written).
        """
        try:
            listed = list(items)
        except TypeError:
            raise InvalidType(
                f"items must be an iterable of tuples, got {_describe(items)}"
            ) from None
        return self.enqueue_encoded(self._encode_all(listed), timeout)

    def enqueue_encoded(
        self, encoded: list[tuple[int, EncodedItem]], timeout: float | None = None
    ) -> list[Enqueued]:
        """``enqueue_many`` of items already checked and encoded (``codec.encode_item`` with
        this producer's ``lanes``): a caller that queues items before sending them checks
        each one first."""
        by_partition: dict[int, list[tuple[int, EncodedItem]]] = {}
        for index, (partition, item) in enumerate(encoded):
            by_partition.setdefault(partition, []).append((index, item))
        statuses: list[Enqueued | None] = [None] * len(encoded)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            if encoded and not self._lanes_checked:
                record_lane_count(self._backend, self.namespace, self.lanes, self._link)
                self._lanes_checked = True
            self._send_until_done(by_partition, statuses, deadline)
            result = [s for s in statuses if s is not None]
            self._counts.update(result)
        return result

    def _encode_all(self, items: list[Item]) -> list[tuple[int, EncodedItem]]:
        out: list[tuple[int, EncodedItem]] = []
        append = out.append
        max_bytes, lanes = self.max_message_bytes, self.lanes
        for position, item in enumerate(items):
            try:
                if isinstance(item, str | bytes | bytearray):
                    raise TypeError  # would unpack into characters
                sub_key, message, partition, offset = item
            except (TypeError, ValueError):
                raise self._item_error(
                    items,
                    position,
                    InvalidType(
                        "an item must be a (sub_key, message, partition, offset) tuple,"
                        f" got {_describe(item)}"
                    ),
                ) from None
            try:
                partition, sub, offset, entry = codec.encode_item(
                    sub_key, message, partition, offset, max_bytes, lanes=lanes
                )
            except InvalidInput as exc:
                raise self._item_error(items, position, exc) from None
            append((partition, EncodedItem(sub, offset, entry)))
        return out

    @staticmethod
    def _item_error(items: list[Item], position: int, exc: InvalidInput) -> InvalidInput:
        """The error for a bad item, naming its position in a batch."""
        if len(items) > 1:
            return type(exc)(f"item {position}: {exc}")
        return exc

    def _pkeys(self, partition: int) -> PartitionKeys:
        pkeys = self._partition_keys.get(partition)
        if pkeys is None:
            pkeys = self._partition_keys[partition] = self._keys.partition(partition)
        return pkeys

    def _send_until_done(
        self,
        by_partition: dict[int, list[tuple[int, EncodedItem]]],
        statuses: list[Enqueued | None],
        deadline: float | None,
    ) -> None:
        cursor = dict.fromkeys(by_partition, 0)  # next item to send, per partition
        while True:
            todo = {p: c for p, c in cursor.items() if c < len(by_partition[p])}
            if not todo:
                return
            seen = {p: self._ack_loop.commits(p) for p in todo}
            full = self._send_round(by_partition, todo, cursor, statuses)
            for partition in full:
                self._wait_for_room(partition, seen[partition], deadline, statuses)
                if self._closed:  # close() stopped the ack loop: no room will come
                    raise ProducerClosed(
                        f"this Producer was closed while partition {partition} of namespace"
                        f" {self.namespace!r} was full; statuses say which items were written",
                        list(statuses),
                    )

    def _send_round(
        self,
        by_partition: dict[int, list[tuple[int, EncodedItem]]],
        todo: dict[int, int],
        cursor: dict[int, int],
        statuses: list[Enqueued | None],
    ) -> list[int]:
        """One round trip: a script call per partition. Returns the partitions found full."""
        batch = self._link.batch()
        # New partitions join the namespace index the reapers walk (once per producer), in the
        # same round trip, before their items: SADD is idempotent, so a re-sent batch is fine.
        new = [p for p in todo if p not in self._registered]
        registered: Reply[Any] | None = None
        if new:
            registered = batch.command("SADD", self._keys.partitions, *new)
        sent: dict[int, tuple[list[tuple[int, EncodedItem]], Reply[list[int]]]] = {}
        # One id for the round (each partition keeps its own answer): a re-sent round is
        # answered as it was the first time, its accepted items not turned into duplicates.
        self._requests += 1
        request_id = f"{self._producer_id}:{self._requests}"
        for partition, start in todo.items():
            chunk = by_partition[partition][start : start + MAX_ITEMS_PER_CALL]
            reply = scripts.enqueue_items(
                batch,
                self._pkeys(partition),
                [item for _, item in chunk],
                self.max_in_queue,
                request_id,
                expected_highest=self._highest.get(partition, -1),
            )
            sent[partition] = (chunk, reply)
        # Ring the wake-up bell for every partition written to (a cheap no-op when it rings),
        # and again for any whose bell a refused write (maxmemory) left silent.
        bells: list[tuple[list[int], Reply[Any]]] = []
        if self._runnable is None:
            now = time.time()
            rung = sorted(self._unrung.union(todo))
            bells = [
                (group, batch.command("ZADD", key, "NX", *[x for p in group for x in (now, p)]))
                for key, group in self._keys.by_wake_key(rung).items()
            ]
        try:
            batch.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(
                f"lost Redis at {self._backend.where} while enqueueing ({exc}); the batch may be"
                " partly written: enqueue it again (written items come back as duplicates)"
            ) from exc
        if registered is not None and registered.error is None:
            self._registered.update(new)
        self._unrung = {p for group, bell in bells if bell.error is not None for p in group}
        full: list[int] = []
        accepted: list[int] = []  # partitions with items to run now (told to ``runnable``)
        out_of_memory: list[int] = []
        lost: list[int] = []
        failed: ScriptError | None = None
        for partition, (chunk, reply) in sent.items():
            try:
                codes = reply.get()
            except ScriptError as exc:  # this partition's script wrote nothing
                if isinstance(exc.__cause__, redis.exceptions.OutOfMemoryError):
                    out_of_memory.append(partition)
                else:
                    failed = failed or exc
                continue
            if codes and codes[0] == _LOST:
                lost.append(partition)
                continue
            to_ack = -1  # the highest offset this producer must see acked
            for (index, item), code in zip(chunk, codes, strict=True):
                if code in (0, 1) and item.offset > self._highest.get(partition, -1):
                    self._highest[partition] = item.offset
                if code == _FULL:
                    full.append(partition)
                    self._ack_loop.watch_full(partition)
                    break
                statuses[index] = _STATUS.get(code, Enqueued.ALREADY_ACKED)
                cursor[partition] += 1
                if code != 2 and item.offset > to_ack:
                    to_ack = item.offset
            if to_ack >= 0:
                self._ack_loop.track(partition, to_ack)
            if self._runnable is not None and 0 in codes:  # an item accepted: new work
                accepted.append(partition)
        if accepted and self._runnable is not None:
            self._runnable(accepted)
        if out_of_memory:
            raise RedisOutOfMemory(
                f"Redis at {self._backend.where} is out of memory (it reached maxmemory and evicts"
                f" nothing): nothing was written to partition"
                f" {', partition '.join(map(str, out_of_memory))} of namespace"
                f" {self.namespace!r}; let workers drain or raise maxmemory, then enqueue the"
                " same items again (statuses say which were written)",
                list(statuses),
            )
        if lost:
            for partition in lost:  # from now on, check against what Redis holds again
                self._highest.pop(partition, None)
            log.error(
                "Redis at %s lost writes of namespace %r: partition(s) %s hold less than they"
                " accepted from this producer; nothing was written to them",
                self._backend.where,
                self.namespace,
                lost,
            )
            raise RedisLostWrites(
                f"Redis at {self._backend.where} lost items of namespace {self.namespace!r}"
                f" partition(s) {lost} it had accepted (restarted from an older snapshot, or a"
                " failover): nothing was written to them; enqueue again from the last offset"
                " known finished",
                lost,
                list(statuses),
            )
        if failed is not None:
            raise failed
        return full

    def _wait_for_room(
        self,
        partition: int,
        seen_commits: int,
        deadline: float | None,
        statuses: list[Enqueued | None],
    ) -> None:
        self._full_waits += 1
        if deadline is not None and time.monotonic() >= deadline:
            raise QueueFull(
                f"partition {partition} of namespace {self.namespace!r} stayed full"
                f" (max_in_queue={self.max_in_queue}) past the timeout",
                partition,
                list(statuses),
            )
        wait = FULL_RECHECK
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        self._ack_loop.wait_commit(partition, seen_commits, wait)

    # --- watermark, flush, lifecycle ---------------------------------------------------------

    def watermark(self, partition: int) -> int | None:
        """The acked watermark of ``partition`` as stored in Redis (None: nothing acked yet)."""
        codec.check_partition(partition)
        try:
            value = self._backend.client.hget(self._pkeys(partition).meta, "acked")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(
                f"cannot reach Redis at {self._backend.where} to read the watermark: {exc}"
            ) from exc
        return None if value is None else int(value)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: accepted, duplicate, already_acked, full_waits, ack_errors."""
        out = {status.value: self._counts[status] for status in Enqueued}
        out["full_waits"] = self._full_waits
        out["ack_errors"] = self._ack_loop.ack_errors
        return out

    def acked_watermarks(self) -> dict[int, int]:
        """partition -> the last watermark this producer's ack callback returned for."""
        return self._ack_loop.acked_watermarks()

    def metrics_collector(self) -> Any:
        """A prometheus_client collector of this producer's counters, for your registry:
        ``registry.register(producer.metrics_collector())`` (see docs/metrics.md)."""
        from workshaper.ops.metrics import ProducerMetrics  # noqa: PLC0415 - optional use

        return ProducerMetrics(self)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every item this producer enqueued (accepted, or found still in flight
        as a duplicate) is acked. False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._ack_loop.wait_caught_up(deadline)

    @property
    def backend(self) -> Backend:
        return self._backend

    def _check_open(self) -> None:
        if self._closed:
            raise ProducerClosed("this Producer is closed")

    def close(self, timeout: float | None = None) -> bool:
        """Stop the ack loop and release the connection. Items stay in Redis; workers go on,
        and the next producer of these partitions acks what is left. An enqueue waiting for
        room in a full partition wakes and raises ProducerClosed. A watermark ``ack``
        accepted but not recorded yet (Redis unreachable) is retried for up to ``timeout``
        seconds (default 5); False when one was left unrecorded."""
        if self._closed:
            return True
        self._closed = True
        # Wakes every wait on the loop (waiting enqueues see _closed); retries an unrecorded
        # watermark until the timeout.
        recorded = self._ack_loop.stop(timeout)
        with self._lock:
            self._link.close()
        if self._owns_backend:
            self._backend.close()
        return recorded

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
