"""The reference for the embedded Manager's rows: the least a Python program must do for the
same guarantees of order, acks and backpressure, so a row's distance from it is the Manager's
own cost on this machine, whatever the machine.

``run_minimal`` runs items as ``Manager(redis=None)`` does for a user: each sub key's items
one after another, different sub keys on ``slots`` threads, ``ack(partition, watermark)`` at
each partition's contiguous watermark, and ``enqueue`` waiting while a partition holds
``max_in_queue`` accepted-but-unacked items. It keeps nothing else: no leases, fencing,
retries, dead letters, dedupe, recovery or inspection, and no second thread for acks (the
thread that moves a watermark calls ``ack`` under the scheduler's lock). It is a yardstick,
not a product: a program that needs none of those guarantees could use it, no one else.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

Item = tuple[Any, Any, int, int]  # (sub_key, message, partition, offset)


class _Partition:
    """One partition's offsets above its watermark, in enqueue order, and which are done."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.done: set[int] = set()

    def finish(self, offset: int) -> int | None:
        """Record ``offset`` as done; the new watermark if it moved, else None."""
        self.done.add(offset)
        moved = None
        while self.pending and self.pending[0] in self.done:
            moved = self.pending.popleft()
            self.done.discard(moved)
        return moved


class MinimalScheduler:
    """Per-key order on a pool of threads, acks at contiguous watermarks, backpressure."""

    def __init__(
        self,
        work: Callable[[Any, int, int], Any],
        ack: Callable[[int, int], Any],
        max_in_queue: int,
        slots: int,
    ) -> None:
        self._work, self._ack, self._max_in_queue = work, ack, max_in_queue
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # a watermark moved
        self._tasks: queue.SimpleQueue[Item | None] = queue.SimpleQueue()  # None: stop
        self._keys: dict[Any, deque[Item]] = defaultdict(deque)  # each sub key's queued items
        self._partitions: dict[int, _Partition] = defaultdict(_Partition)
        #: What ended a thread (work raised, or a bug here): enqueue and flush raise it rather
        #: than wait for room that a dead thread will never free.
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(slots)]
        for thread in self._threads:
            thread.start()

    def enqueue(self, sub_key: Any, message: Any, partition: int, offset: int) -> None:
        item = (sub_key, message, partition, offset)
        with self._lock:
            part = self._partitions[partition]
            while len(part.pending) >= self._max_in_queue:
                self._raise_error()
                self._room.wait()
            part.pending.append(offset)
            if sub_key is None:
                self._tasks.put(item)
                return
            queued = self._keys[sub_key]
            queued.append(item)
            if len(queued) == 1:
                self._tasks.put(item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every partition is acked to its last offset (False after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while any(p.pending for p in self._partitions.values()):
                self._raise_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._room.wait(remaining)
        return True

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("a thread of the reference scheduler died") from self._error

    def _serve(self) -> None:
        try:
            self._serve_tasks()
        except BaseException as exc:
            with self._lock:
                self._error = exc
                self._room.notify_all()

    def _serve_tasks(self) -> None:
        while (task := self._tasks.get()) is not None:
            sub_key, message, partition, offset = task
            self._work(message, partition, offset)
            with self._lock:
                if sub_key is not None:
                    queued = self._keys[sub_key]
                    queued.popleft()
                    if queued:
                        self._tasks.put(queued[0])
                    else:
                        del self._keys[sub_key]
                watermark = self._partitions[partition].finish(offset)
                if watermark is not None:
                    self._ack(partition, watermark)
                    self._room.notify_all()


def run_minimal(
    items: list[Item], work: Callable[[Any, int, int], Any], max_in_queue: int, slots: int
) -> tuple[float, float, dict[int, int]]:
    """Seconds from the first enqueue to the last ack, the process's CPU seconds over that
    time, and the last watermark acked per partition."""
    acked: dict[int, int] = {}

    def ack(partition: int, offset: int) -> None:
        acked[partition] = offset

    scheduler = MinimalScheduler(work, ack, max_in_queue, slots)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for item in items:
            scheduler.enqueue(*item)
        scheduler.flush()
        return time.perf_counter() - start, time.process_time() - cpu, acked
    finally:
        scheduler.close()
