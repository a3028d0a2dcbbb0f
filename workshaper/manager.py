"""The seed's all-in-one facade: enqueue items, run them in sub-key order, ack contiguous
watermarks.

``redis=None`` (the default) runs everything in this process with no server: the embedded
runner (``workshaper.embedded.runner``) drives one typed partition engine per partition, whose
operations follow the Lua scripts and are tested against them. Each Manager starts empty, as
the seed did. With ``redis=`` a connection, the Manager is a Producer plus an in-process Worker
of that Redis, like any member of a fleet.
"""

from __future__ import annotations

import bisect
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from workshaper import codec
from workshaper.connection import connect
from workshaper.embedded.runner import Runner
from workshaper.errors import InvalidType
from workshaper.options import check_bool, check_positive
from workshaper.producer import MAX_ACK_INTERVAL, MAX_IN_QUEUE, Enqueued, Producer
from workshaper.worker import Worker
from workshaper.worker.settings import check_handlers, worker_settings

#: The Worker's options a Manager passes on as keywords, with their defaults, read off the
#: Worker's own signature (the embedded runner checks them exactly as a Worker does).
WORKER_OPTIONS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(Worker.__init__).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY
    and name not in {"work", "on_done", "on_error", "concurrency"}  # the Manager's own
}


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
        lanes: int | None = None,
        **worker_options: Any,
    ) -> None:
        """``lanes``: spread each partition's sub keys over this many lanes, as the
        Producer's option does (on either backend)."""
        lanes = codec.check_lanes(lanes)
        if not callable(work):
            raise InvalidType(f"work must be callable, got {type(work).__name__}")
        if ack is not None and not callable(ack):
            raise InvalidType(f"ack must be callable, got {type(ack).__name__}")
        self._closed = False
        self._user_ack = ack
        self._counts = _AckedCount()
        self._runner: Runner | None = None
        self._producer: Producer | None = None
        self._worker: Worker | None = None
        if redis is None:
            self._runner = _embedded_runner(
                work,
                on_done=on_done,
                ack=ack,
                on_error=on_error,
                max_in_queue=max_in_queue,
                namespace=namespace,
                concurrency=concurrency,
                ack_interval=ack_interval,
                ack_each=ack_each,
                lanes=lanes,
                worker_options=worker_options,
            )
            return
        self._backend = connect(redis)
        try:
            self._producer = Producer(
                self._backend,
                namespace,
                max_in_queue=max_in_queue,
                ack=self._ack,
                ack_interval=ack_interval,
                ack_each=ack_each,
                lanes=lanes,
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
            ).start()
        except BaseException:  # a bad worker option: leave no ack loop or connection behind
            self._producer.close()
            self._backend.close()
            raise

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
        if self._runner is not None:
            return self._runner.enqueue(sub_key, message, partition, offset, timeout)
        assert self._producer is not None
        status = self._producer.enqueue(sub_key, message, partition, offset, timeout)
        if status is Enqueued.ACCEPTED:
            self._counts.accepted(partition, offset)
        return status

    def _ack(self, partition: int, offset: int) -> None:
        if self._user_ack is not None:
            self._user_ack(partition, offset)
        self._counts.acked(partition, offset)

    # --- state -------------------------------------------------------------------------------

    @property
    def total_enqueued(self) -> int:
        """Items this Manager's ``enqueue`` got ACCEPTED for."""
        if self._runner is not None:
            return self._runner.total_enqueued
        return self._counts.total_accepted

    @property
    def total_acked(self) -> int:
        """Accepted items covered by an acked watermark."""
        if self._runner is not None:
            return self._runner.total_acked
        return self._counts.total_acked

    @property
    def worker(self) -> Worker:
        """The in-process Worker (``redis=`` a connection only: the embedded Manager has none)."""
        if self._worker is None:
            raise RuntimeError("an embedded Manager (redis=None) runs no Worker")
        return self._worker

    @property
    def producer(self) -> Producer:
        """The Producer (``redis=`` a connection only: the embedded Manager has none)."""
        if self._producer is None:
            raise RuntimeError("an embedded Manager (redis=None) runs no Producer")
        return self._producer

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every enqueued item is acked (False if ``timeout`` passed first)."""
        if self._runner is not None:
            return self._runner.flush(timeout)
        assert self._producer is not None
        return self._producer.flush(timeout)

    def shutdown(self, timeout: float | None = None, *, wait: bool = True) -> bool:
        """Flush (unless ``wait=False``), then stop running and acking.

        Returns True when everything enqueued was acked.
        """
        if self._closed:
            return True
        try:
            flushed = self.flush(timeout) if wait else False
        finally:
            self._closed = True
            if self._runner is not None:
                self._runner.stop(timeout)
            else:
                assert self._worker is not None and self._producer is not None
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


class _AckedCount:
    """The accepted items of a Manager on Redis and how many of them acked watermarks cover
    (its ack may run before its enqueue returns: such an item counts as acked at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unacked: dict[int, list[int]] = {}  # partition -> accepted offsets, ascending
        self._acked_to: dict[int, int] = {}  # partition -> the highest watermark acked
        self.total_accepted = 0
        self.total_acked = 0

    def accepted(self, partition: int, offset: int) -> None:
        with self._lock:
            self.total_accepted += 1
            if offset <= self._acked_to.get(partition, -1):
                self.total_acked += 1
            else:
                bisect.insort(self._unacked.setdefault(partition, []), offset)

    def acked(self, partition: int, offset: int) -> None:
        with self._lock:
            if offset <= self._acked_to.get(partition, -1):
                return
            self._acked_to[partition] = offset
            pending = self._unacked.get(partition, [])
            covered = bisect.bisect_right(pending, offset)
            del pending[:covered]
            self.total_acked += covered


def _embedded_runner(
    work: Callable[..., Any],
    *,
    on_done: Callable[..., Any] | None,
    ack: Callable[[int, int], Any] | None,
    on_error: Callable[..., Any] | None,
    max_in_queue: int,
    namespace: str,
    concurrency: int,
    ack_interval: float,
    ack_each: bool,
    lanes: int | None,
    worker_options: dict[str, Any],
) -> Runner:
    """The embedded runner, its every option checked as the Producer and the Worker check
    theirs (the same errors)."""
    codec.check_namespace(namespace)
    check_positive("max_in_queue", max_in_queue, maximum=MAX_IN_QUEUE)
    check_positive("ack_interval", ack_interval, allow_float=True, maximum=MAX_ACK_INTERVAL)
    check_bool("ack_each", ack_each)
    check_handlers(work, on_done, on_error)
    unknown = sorted(set(worker_options) - set(WORKER_OPTIONS))
    if unknown:
        raise TypeError(f"Manager() got an unexpected keyword argument {unknown[0]!r}")
    settings = worker_settings(
        namespace, concurrency=concurrency, **{**WORKER_OPTIONS, **worker_options}
    )
    return Runner(
        settings,
        work=work,
        on_done=on_done,
        on_error=on_error,
        ack=ack,
        ack_each=ack_each,
        ack_interval=ack_interval,
        max_in_queue=max_in_queue,
        max_message_bytes=codec.DEFAULT_MAX_MESSAGE_BYTES,
        lanes=lanes,
    )
