"""Running handlers: the items of one lease batch, in order, on threads or on an event loop.

The coordinator hands a batch of queue entries to an executor; the executor runs
them one after another and posts what happened back to the coordinator's inbox:

    ("done", lease)                items succeeded: their offsets wait in lease.finished (one
                                   wake-up per coordinator turn, however many items)
    ("ended", lease, outcome)      the batch stopped; outcome is one of
        ("finished",)              every entry ran
        ("stopped", index)         the lease was lost or the worker is stopping
        ("expired", index)         the lease may have expired by this process's clock: no
                                   item starts until Redis confirms it (the zombie rule)
        ("yielded", index)         the lease's slice is over (lease.py): the rest goes back
                                   behind the sub keys that wait (never before the first item)
        ("failed", index, attempt, error_json)
        ("corrupt", index, reason) the entry cannot be decoded: no attempt can fix it

Plain functions run on a pool of threads; ``async def`` handlers run on one event loop thread.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Protocol

from workshaper import codec
from workshaper.jobs import Job, new_job, set_current_job
from workshaper.worker.lease import clock as lease_clock

log = logging.getLogger(__name__)

Post = Callable[[tuple[Any, ...]], None]
Outcome = tuple[Any, ...]
#: A batch as BatchRunner.steps runs it: yields items, is sent handler errors, returns outcome.
Steps = Generator[tuple[Job, codec.Message], BaseException | None, Outcome]
#: Item ``index`` of a batch as (offset, sub key, message): see Holder.item_reader.
ItemReader = Callable[[int], tuple[int, codec.SubKey, codec.Message]]


class Holder(Protocol):
    """What runs a batch: a lease, or a run of a lane's window (lanes.Run). The executor reads
    ``stop``, ``valid_until`` and ``yield_at`` before each item, appends each finished offset
    to ``finished`` and sets ``notified`` when it posts a wake-up (see lease.py)."""

    partition: int
    token: int
    finished: deque[int]
    notified: bool
    started: float  # CLOCK_MONOTONIC when the batch began
    took: float  # seconds from its start to its end, set as it ends

    @property
    def sub_key(self) -> codec.StoredSubKey: ...

    @property
    def stop(self) -> bool: ...

    @property
    def valid_until(self) -> float: ...

    @property
    def yield_at(self) -> float: ...

    @property
    def item_reader(self) -> ItemReader | None:
        """Decodes item ``index`` of the batch from what was read of its entry already (a
        lane's run: its window read every entry as it arrived); None: the executor decodes
        each entry itself."""
        ...

    def stops_before(self, index: int) -> bool:
        """With ``stop`` set: does the batch stop before its item ``index``?"""
        ...


class _BatchCancelled(Exception):
    """Sent into a batch's steps when the task running it is cancelled (not its handler)."""


#: The one instance: the batch ends "stopped" at the item that was running.
BATCH_CANCELLED = _BatchCancelled()

#: Bounds on what a dead letter keeps of an error (Redis memory, not the log).
MAX_ERROR_MESSAGE = 2000
MAX_TRACEBACK = 8000


def error_json(exc: BaseException, worker_id: str) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return json.dumps(
        {
            "type": type(exc).__qualname__,
            "message": str(exc)[:MAX_ERROR_MESSAGE],
            "traceback": tb[-MAX_TRACEBACK:],
            "worker": worker_id,
        }
    )


def report_failure(
    on_error: Callable[..., Any] | None, exc: BaseException, message: codec.Message, job: Job
) -> None:
    """Log the failed attempt ``job`` (its exception's type, never the payload) and call
    ``on_error``; what ``on_error`` raises is logged and ignored."""
    partition, offset = job.partition, job.offset
    log.warning(
        "work failed: partition %d offset %d attempt %d: %s",
        partition,
        offset,
        job.attempt,
        type(exc).__qualname__,
    )
    if on_error is not None:
        try:
            on_error(exc, message, partition, offset)
        except BaseException:  # even SystemExit: a callback's error is never fatal
            log.exception("on_error raised for partition %d offset %d (ignored)", partition, offset)


def call_on_done(
    on_done: Callable[..., Any], message: codec.Message, partition: int, offset: int
) -> None:
    """Call ``on_done`` for an item that succeeded; what it raises is logged and ignored."""
    try:
        on_done(message, partition, offset)
    except BaseException:  # even SystemExit: a callback's error is never fatal
        log.exception("on_done raised for partition %d offset %d (ignored)", partition, offset)


class BatchRunner:
    """What running one item means, shared by the thread and the event-loop executors.

    Each success is appended to the lease's ``finished`` deque at once (atomic, no lock); the
    coordinator is sent a wake-up only when it has not been told yet since it last drained
    that deque. Every finished item is visible to the coordinator immediately, yet a fast batch
    costs a message per coordinator turn, not per item.
    """

    def __init__(
        self,
        work: Callable[..., Any],
        on_done: Callable[..., Any] | None,
        on_error: Callable[..., Any] | None,
        post: Post,
        worker_id: str,
    ) -> None:
        self.work = work
        self._on_done = on_done
        self._on_error = on_error
        self._post = post
        self._worker_id = worker_id
        #: Called with each handler call's seconds when metrics are on (Worker.instrument).
        self.observe_handler: Callable[[float], None] | None = None

    def failed(
        self, lease: Holder, index: int, job: Job, message: codec.Message, exc: BaseException
    ) -> Outcome:
        report_failure(self._on_error, exc, message, job)
        return ("failed", index, job.attempt, error_json(exc, self._worker_id))

    def ended(self, lease: Holder, outcome: Outcome) -> None:
        # The batch's own time, without its wait in the coordinator's inbox.
        lease.took = time.monotonic() - lease.started
        self._post(("ended", lease, outcome))

    def _notify(self, lease: Holder) -> None:
        """Tell the coordinator that ``lease.finished`` has offsets, unless it was told
        already since it last drained them (the offset is appended first: see collect)."""
        if not lease.notified:
            lease.notified = True
            self._post(("done", lease))

    def steps(self, lease: Holder, entries: list[bytes], attempt: int) -> Steps:
        """The batch, one item at a time: yields ``(job, message)`` for the driver to run and
        takes back what running it raised (None after a success); returns the outcome.

        Whatever a handler raises, BaseException included (``SystemExit``, a
        ``CancelledError`` of its own), is a failed attempt of the item that raised it: the
        items before it succeeded and are recorded, the items after it have not started.

        Everything but the handler call lives here, so the thread driver (``run_sync``) and
        the event-loop driver (``run_async``) differ only in ``await``.
        """
        # Everything looked up per item is bound here once: at a lease per item or a no-op
        # handler, the lookups and Python calls around the handler are most of the cost.
        on_done, observe = self._on_done, self.observe_handler
        partition, token = lease.partition, lease.token
        sub_key, lane = lease.sub_key, isinstance(lease.sub_key, codec.Lane)
        read_item = lease.item_reader
        done = lease.finished.append
        decode = codec.decode_message
        now = lease_clock  # reads the module's clock at each call: tests move it
        lease.started = time.monotonic()
        last = len(entries) - 1
        item_attempt = attempt  # the head's; every later item is on its first attempt
        try:
            for index, raw in enumerate(entries):
                if lease.stop and lease.stops_before(index):
                    return ("stopped", index)
                at = now()
                if at >= lease.valid_until:
                    # The zombie rule: no item starts until Redis confirms the lease again. A
                    # process paused past its lease (SIGSTOP, a long GC, a frozen VM) would
                    # otherwise wake up and start items the new leaseholder already ran.
                    return ("expired", index)
                if at >= lease.yield_at and index:
                    # The slice is over: let the sub keys waiting behind this one run. Never
                    # before the first item, so every batch makes progress.
                    return ("yielded", index)
                try:
                    if read_item is not None:
                        offset, sub_key, message = read_item(index)
                    elif lane:  # a lane's entries each carry their item's own sub key
                        offset, sub_key, message = codec.decode_lane_item(raw)
                    else:
                        head, _, payload = raw.partition(b"|")
                        offset = int(head)
                        message = decode(payload)
                except (ValueError, codec.CorruptEntry) as exc:
                    return ("corrupt", index, f"queue entry does not decode: {exc}")
                job = new_job((sub_key, partition, offset, item_attempt, token))  # type: ignore[arg-type]
                item_attempt = 1
                set_current_job(job)
                if observe is None:
                    error = yield job, message
                else:  # metrics on: one perf_counter pair per item
                    began = time.perf_counter()
                    error = yield job, message
                    observe(time.perf_counter() - began)
                if error is BATCH_CANCELLED:
                    return ("stopped", index)
                if error is not None:
                    return self.failed(lease, index, job, message, error)
                done(offset)
                if on_done is not None:
                    self._notify(lease)
                    call_on_done(on_done, message, partition, offset)
                elif index != last:
                    # The last item needs no wake-up of its own: the batch's "ended" follows
                    # at once and collects it (with a lease per item, that halves the
                    # coordinator's inbox).
                    self._notify(lease)
            return ("finished",)
        finally:
            set_current_job(None)

    def run_sync(self, lease: Holder, entries: list[bytes], attempt: int) -> None:
        work = self.work
        steps = self.steps(lease, entries, attempt)
        error: BaseException | None
        try:
            job, message = next(steps)
            while True:
                try:
                    work(message, job.partition, job.offset)
                    error = None
                except BaseException as exc:  # the item's failure, whatever it is
                    error = exc
                job, message = steps.send(error)
        except StopIteration as end:
            self.ended(lease, end.value)

    async def run_async(self, lease: Holder, entries: list[bytes], attempt: int) -> None:
        work = self.work
        steps = self.steps(lease, entries, attempt)
        error: BaseException | None
        cancelled = False
        try:
            job, message = next(steps)
            while True:
                try:
                    await work(message, job.partition, job.offset)
                    error = None
                except BaseException as exc:  # the item's failure, whatever it is ...
                    error = exc
                    task = asyncio.current_task()
                    if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                        # ... unless the task itself is being cancelled: then the batch
                        # stops at this item, charged to nobody, and the task ends cancelled.
                        error, cancelled = BATCH_CANCELLED, True
                job, message = steps.send(error)
        except StopIteration as end:
            self.ended(lease, end.value)
        if cancelled:
            raise asyncio.CancelledError


class Executor(Protocol):
    #: Whether batches submitted beyond ``concurrency`` wait in a queue (True) or run at once.
    queues_beyond_concurrency: bool

    def start(self) -> None: ...
    def submit(self, lease: Holder, entries: list[bytes], attempt: int) -> None: ...
    def shutdown(self, wait: bool) -> None: ...


class ThreadExecutor:
    """Plain-function handlers: ``concurrency`` threads taking batches from one queue.

    (A ThreadPoolExecutor builds a Future, a work item and a semaphore round per submit; with a
    lease per item that was a tenth of a worker's CPU.)
    """

    queues_beyond_concurrency = True

    def __init__(self, runner: BatchRunner, concurrency: int) -> None:
        self._runner = runner
        self._tasks: queue.SimpleQueue[tuple[Holder, list[bytes], int] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"workshaper-work-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, lease: Holder, entries: list[bytes], attempt: int) -> None:
        self._tasks.put((lease, entries, attempt))

    def _serve(self) -> None:
        while (task := self._tasks.get()) is not None:
            lease, entries, attempt = task
            try:
                self._runner.run_sync(lease, entries, attempt)
            except BaseException:  # a bug here must not leave the lease hanging silently
                log.exception("batch runner crashed")
                # Which item ran is unknown: charge none; what finished is recorded, the rest
                # is released for another run.
                self._runner.ended(lease, ("stopped", 0))

    def shutdown(self, wait: bool) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                if thread.is_alive():
                    thread.join()


class AsyncExecutor:
    """``async def`` handlers: every lease batch is a task on one event loop thread."""

    queues_beyond_concurrency = False

    def __init__(self, runner: BatchRunner) -> None:
        self._runner = runner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="workshaper-loop", daemon=True)

    def _serve(self) -> None:
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def start(self) -> None:
        self._thread.start()

    def submit(self, lease: Holder, entries: list[bytes], attempt: int) -> None:
        asyncio.run_coroutine_threadsafe(self._guarded(lease, entries, attempt), self._loop)

    async def _guarded(self, lease: Holder, entries: list[bytes], attempt: int) -> None:
        try:
            await self._runner.run_async(lease, entries, attempt)
        except asyncio.CancelledError:
            raise  # run_async ended the batch at the item it was running
        except BaseException:
            log.exception("batch runner crashed")
            # Which item ran is unknown: charge none (see ThreadExecutor._serve).
            self._runner.ended(lease, ("stopped", 0))

    def shutdown(self, wait: bool) -> None:
        if not self._thread.is_alive():
            if not self._loop.is_closed():
                self._loop.close()
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        if wait:
            self._thread.join()


def is_async_handler(work: Callable[..., Any]) -> bool:
    call = getattr(work, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(work) or inspect.iscoroutinefunction(call)


def make_executor(runner: BatchRunner, concurrency: int) -> Executor:
    if is_async_handler(runner.work):
        return AsyncExecutor(runner)
    return ThreadExecutor(runner, concurrency)
