"""The seed's all-in-one facade: a Producer and an in-process Worker on one backend.

``redis=None`` runs on a private embedded backend (the same Lua scripts, run in this process
on its own in-memory server), so the seed-style program needs no server.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from workshaper import codec
from workshaper.connection import connect, embedded_backend
from workshaper.errors import InvalidType
from workshaper.producer import Enqueued, Producer
from workshaper.worker import Worker


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
        self._lock = threading.Lock()
        self._unacked: dict[int, list[int]] = {}  # partition -> accepted offsets, ascending
        self._acked_to: dict[int, int] = {}  # partition -> highest offset acked
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
                ack_each=ack_each,
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
            self._worker.start()
        except BaseException:  # a bad worker option: leave no ack loop or connection behind
            self._producer.close()
            self._backend.close()
            raise
        self._closed = False

    def _ack(self, partition: int, offset: int) -> None:
        if self._user_ack is not None:
            self._user_ack(partition, offset)
        with self._lock:
            self._acked_to[partition] = max(offset, self._acked_to.get(partition, -1))
            pending = self._unacked.get(partition, [])
            count = bisect.bisect_right(pending, offset)
            del pending[:count]
            self._total_acked += count

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
        # Never hold the lock here: enqueue may block until the ack loop (which takes the lock
        # in _ack) frees room.
        status = self._producer.enqueue(sub_key, message, partition, offset, timeout)
        if status is Enqueued.ACCEPTED:
            with self._lock:
                self._total_enqueued += 1
                if offset <= self._acked_to.get(partition, -1):
                    self._total_acked += 1  # its ack came before enqueue returned
                else:
                    bisect.insort(self._unacked.setdefault(partition, []), offset)
        return status

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
        return self._producer.flush(timeout)

    def shutdown(self, timeout: float | None = None, *, wait: bool = True) -> bool:
        """Flush (unless ``wait=False``), then stop the worker and the producer.

        Returns True when everything enqueued was acked.
        """
        if self._closed:
            return True
        flushed = self._producer.flush(timeout) if wait else False
        self._closed = True
        self._worker.stop(timeout)
        self._producer.close()
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
