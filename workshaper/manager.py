"""The seed's all-in-one facade: a Producer and an in-process Worker on one backend.

``redis=None`` runs on a private embedded backend (the same Lua scripts, run in this process
on its own in-memory server), so the seed-style program needs no server.

On that private backend the Manager is the only producer, so it knows what the enqueue script
would answer for an offset above every offset it ever sent: ACCEPTED, once the partition has
room (its own count of accepted-but-unacked items, freed once the acked watermark is recorded,
as the script's count is). Such an item is checked and encoded at once, counted, and queued;
everything queued goes in one script call (group commit), so the seed-style one-call-per-item
loop costs one script call per batch, not per item. The enqueueing thread sends the queue itself
when it is about to wait (for room, or in flush); otherwise a writer thread sends it, a moment
after its first item (GATHER_SECONDS), so items never wait for the next enqueue. One send runs
at a time, which keeps each partition's order. Anything else (an offset at or below one already
sent: a re-delivery) waits until everything queued was sent and asks the script, so every
status is the script's. Each send checks that the script accepted every item.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from workshaper import codec
from workshaper.connection import connect, embedded_backend
from workshaper.errors import InvalidType, QueueFull
from workshaper.producer import Enqueued, Producer
from workshaper.scripts import EncodedItem
from workshaper.worker import Worker

log = logging.getLogger(__name__)

#: How long the writer gathers queued items before sending them while the enqueueing thread
#: keeps going (it sends at once when that thread is about to wait for room, or for a drain),
#: and how many items make it send at once anyway.
GATHER_SECONDS, GATHER_ITEMS = 0.0005, 256


class Manager:
    """Enqueue items, run ``work`` on them in sub-key order, ack contiguous watermarks."""

    def __init__(
        self,
        work: Callable[..., Any],
        on_done: Callable[..., Any] | None = None,
        ack: Callable[[int, int], Any] | None = None,
        on_error: Callable[..., Any] | None = None,
        max_in_queue: int = 25,
        *,
        redis: Any = None,
        namespace: str = "default",
        concurrency: int = 8,
        ack_interval: float = 0.005,
        ack_each: bool = False,
        **worker_options: Any,
    ) -> None:
        if not callable(work):
            raise InvalidType(f"work must be callable, got {type(work).__name__}")
        if ack is not None and not callable(ack):
            raise InvalidType(f"ack must be callable, got {type(ack).__name__}")
        self._user_ack = ack
        self._max_in_queue = max_in_queue
        self._lock = threading.Lock()
        #: Notified when a recorded watermark frees room (enqueue waits on it).
        self._room = threading.Condition(self._lock)
        #: Notified when items wait for the writer (the writer waits on it).
        self._work = threading.Condition(self._lock)
        #: Notified when the writer finished a send (drain and flush wait on it).
        self._sent = threading.Condition(self._lock)
        #: partition -> accepted offsets not covered by a recorded watermark yet, ascending (what
        #: the enqueue script counts against max_in_queue)
        self._unacked: dict[int, list[int]] = {}
        self._acked_to: dict[int, int] = {}  # partition -> highest offset ack returned for
        self._total_enqueued = 0
        self._total_acked = 0
        # redis=None: a private embedded server, so each Manager starts empty like the seed's.
        self._backend = embedded_backend() if redis is None else connect(redis)
        try:
            self._producer = Producer(
                self._backend,
                namespace,
                max_in_queue=max_in_queue,
                ack=self._ack,
                ack_interval=ack_interval,
                recorded=self._recorded,
                ack_each=ack_each,
                # Its private backend has no worker but ours: tell it in-process (no bell).
                runnable=self._runnable if redis is None else None,
            )
        except BaseException:
            self._backend.close()
            raise
        try:
            self._worker = Worker(
                self._backend,
                namespace,
                work=work,
                on_done=on_done,
                on_error=on_error,
                concurrency=concurrency,
                **worker_options,
            )
            if redis is None:
                self._worker.mark_alone()  # nobody else can reach its private backend
            self._worker.start()
        except BaseException:  # a bad worker option: leave no ack loop or connection behind
            self._producer.close()
            self._backend.close()
            raise
        self._closed = False
        #: Private embedded backend only: the group-commit writer (see the module's doc).
        self._writer: threading.Thread | None = None
        self._waiting: list[tuple[int, EncodedItem]] = []  # checked, counted, not sent yet
        self._writing = False
        self._urgent = False  # someone waits for the queued items to be sent: no gathering
        self._stopping = False
        self._write_error: BaseException | None = None
        self._sent_to: dict[int, int] = {}  # partition -> highest offset sent or waiting
        if redis is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="workshaper-enqueue", daemon=True
            )
            self._writer.start()

    def _ack(self, partition: int, offset: int) -> None:
        if self._user_ack is not None:
            self._user_ack(partition, offset)
        with self._lock:
            before = self._acked_to.get(partition, -1)
            if offset <= before:
                return
            self._acked_to[partition] = offset
            pending = self._unacked.get(partition, [])
            self._total_acked += bisect.bisect_right(pending, offset) - bisect.bisect_right(
                pending, before
            )

    def _runnable(self, partitions: list[int]) -> None:
        self._worker.runnable(partitions)

    def _recorded(self, partition: int, watermark: int) -> None:
        """The acked watermark is committed: its items leave the partition's count here only
        now, as they leave the script's (room freed at ack made queued sends find the
        partition full until the commit)."""
        with self._lock:
            pending = self._unacked.get(partition)
            if pending:
                del pending[: bisect.bisect_right(pending, watermark)]
                self._room.notify_all()

    def enqueue(
        self,
        sub_key: codec.SubKey,
        message: codec.Message,
        partition: int,
        offset: int,
        timeout: float | None = None,
    ) -> Enqueued:
        if self._closed:
            raise RuntimeError("this Manager is shut down")
        if self._writer is not None:
            p, sub, o, entry = codec.encode_item(
                sub_key, message, partition, offset, self._producer.max_message_bytes
            )
            if self._queue_new((p, EncodedItem(sub, o, entry)), timeout):
                return Enqueued.ACCEPTED
            self._drain(None)  # a re-delivery: the script decides, after what was queued
        # Never hold the lock here: enqueue may block until the ack loop (which takes the lock
        # in _ack) frees room.
        status = self._producer.enqueue(sub_key, message, partition, offset, timeout)
        if status is Enqueued.ACCEPTED:
            with self._lock:
                self._total_enqueued += 1
                self._sent_to[partition] = max(offset, self._sent_to.get(partition, -1))
                if offset <= self._acked_to.get(partition, -1):
                    self._total_acked += 1  # its ack came before enqueue returned
                else:
                    bisect.insort(self._unacked.setdefault(partition, []), offset)
        return status

    # --- group commit (private embedded backend) ----------------------------------------------

    def _queue_new(self, encoded: tuple[int, EncodedItem], timeout: float | None) -> bool:
        """Queue an item above every offset sent to its partition, once the partition has room
        (QueueFull after ``timeout``); False for any other offset (the script must decide)."""
        partition, item = encoded
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._raise_write_error()
                if item.offset <= self._sent_to.get(partition, -1):
                    return False
                unacked = self._unacked.setdefault(partition, [])
                if len(unacked) < self._max_in_queue:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._stopping or (remaining is not None and remaining <= 0):
                    raise QueueFull(
                        f"partition {partition} stayed full (max_in_queue="
                        f"{self._max_in_queue}) past the timeout",
                        partition,
                        [None],
                    )
                if self._send_here():  # what is queued goes now: this thread waits for room
                    continue  # the lock was let go while sending: look again
                self._room.wait(remaining)
            self._sent_to[partition] = item.offset
            unacked.append(item.offset)  # above every offset sent: the list stays ascending
            self._total_enqueued += 1
            self._waiting.append(encoded)
            if len(self._waiting) == 1 or len(self._waiting) >= GATHER_ITEMS:
                self._work.notify()  # starts the writer's gathering, or ends it
        return True

    def _hurry(self) -> None:
        """Send what is queued without gathering more (the caller holds the lock)."""
        if self._waiting and not self._urgent:
            self._urgent = True
            self._work.notify()

    def _send_here(self) -> bool:
        """Send what is queued on the calling thread, which is about to wait (for room, or for
        a drain), unless a send is under way: then the writer sends it right after that one.
        Handing the items to the writer would put a thread switch between every freed slot
        and its next item. The caller holds the lock; it is let go while sending (True)."""
        if not self._waiting:
            return False
        if self._writing:
            self._hurry()
            return False
        batch = self._take_now()
        self._lock.release()
        try:
            error = self._send(batch)
        finally:
            self._lock.acquire()
        self._sent_batch(error)
        return True

    def _take_now(self) -> list[tuple[int, EncodedItem]]:
        """Everything queued, for one send; no other send starts until ``_sent_batch`` (the
        caller holds the lock). One send at a time keeps each partition's order."""
        batch, self._waiting = self._waiting, []
        self._urgent = False
        self._writing = True
        return batch

    def _sent_batch(self, error: BaseException | None) -> None:
        """A send ended (the caller holds the lock)."""
        self._writing = False
        if error is not None and self._write_error is None:
            self._write_error = error
            self._room.notify_all()  # enqueues waiting for room raise it
        self._sent.notify_all()
        if self._waiting:
            self._work.notify()  # the writer may be waiting for this send to end

    def _take_batch(self) -> list[tuple[int, EncodedItem]] | None:
        """The writer's wait for items (the caller holds the lock): the first one starts a
        gathering of GATHER_SECONDS, cut short when the enqueueing thread is about to wait,
        by a drain, or by GATHER_ITEMS items. None: stopped with nothing left."""
        while True:
            while not self._waiting or self._writing:
                if self._stopping and not self._waiting:
                    return None
                self._work.wait()
            deadline = time.monotonic() + GATHER_SECONDS
            while not (self._urgent or self._stopping or len(self._waiting) >= GATHER_ITEMS):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._waiting or self._writing:
                    break
                self._work.wait(remaining)
            if self._waiting and not self._writing:  # else the enqueueing thread sent them
                return self._take_now()

    def _write_loop(self) -> None:
        """Send what waits, in one script call per round, until stopped and drained."""
        while True:
            with self._lock:
                batch = self._take_batch()
            if batch is None:
                return
            error = self._send(batch)
            with self._lock:
                self._sent_batch(error)

    def _send(self, batch: list[tuple[int, EncodedItem]]) -> BaseException | None:
        """One script call for ``batch``; the error that kept it from being accepted."""
        error: BaseException | None = None
        try:
            statuses = self._producer.enqueue_encoded(batch)
            if any(s is not Enqueued.ACCEPTED for s in statuses):
                error = RuntimeError(
                    "the embedded backend did not accept items this Manager counted as"
                    " accepted (was its producer used directly?)"
                )
        except BaseException as exc:  # kept and raised to the caller of enqueue or flush
            error = exc
        if error is not None:
            log.error("enqueue of %d queued item(s) failed: %r", len(batch), error)
        return error

    def _drain(self, deadline: float | None) -> bool:
        """Wait until everything queued was sent (False if ``deadline`` passed)."""
        with self._lock:
            while self._waiting or self._writing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self._send_here():
                    self._sent.wait(remaining)
            self._raise_write_error()
        return True

    def _raise_write_error(self) -> None:
        if self._write_error is not None:
            raise RuntimeError("an enqueue of this Manager failed") from self._write_error

    def _stop_writer(self) -> None:
        if self._writer is None:
            return
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._room.notify_all()

    # --- state -------------------------------------------------------------------------------

    @property
    def total_enqueued(self) -> int:
        return self._total_enqueued

    @property
    def total_acked(self) -> int:
        return self._total_acked

    @property
    def worker(self) -> Worker:
        return self._worker

    @property
    def producer(self) -> Producer:
        return self._producer

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every enqueued item is acked (False if ``timeout`` passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._drain(deadline):
            return False
        return self._producer.flush(None if deadline is None else deadline - time.monotonic())

    def shutdown(self, timeout: float | None = None, *, wait: bool = True) -> bool:
        """Flush (unless ``wait=False``), then stop the worker and the producer.

        Returns True when everything enqueued was acked.
        """
        if self._closed:
            return True
        try:
            flushed = self.flush(timeout) if wait else False
        finally:
            self._closed = True
            self._stop_writer()  # it sends what still waits (a closed producer refuses it)
            self._worker.stop(timeout)
            self._producer.close()
            if self._writer is not None:
                self._writer.join()
            self._backend.close()
        return flushed

    def __enter__(self) -> Manager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown(wait=exc_type is None)
