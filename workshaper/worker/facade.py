"""The Worker: the public facade over a worker process's parts, read as its lifecycle.

Threads of one worker process:

- the coordinator (``run()``'s thread, coordinator.py): the only code that changes lease
  state; one round trip per turn;
- the waker (waker.py): blocks on the namespace's wake-up bell while there are free slots;
- the executor (executor.py): runs handlers, a thread per slot or one event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from workshaper import codec
from workshaper.access import check_worker_access
from workshaper.batch import Link
from workshaper.connection import Backend, connect
from workshaper.keys import namespace_keys
from workshaper.lua_scripts import register_scripts
from workshaper.signals import install_stop_handlers
from workshaper.worker.coordinator import Coordinator
from workshaper.worker.executor import BatchRunner, Executor, make_executor
from workshaper.worker.settings import DEFAULT_BATCH_SIZE, check_handlers, worker_settings
from workshaper.worker.state import CoordinatorState, Observer
from workshaper.worker.waker import Waker

log = logging.getLogger(__name__)


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
        check_handlers(work, on_done, on_error)
        settings = worker_settings(
            namespace,
            concurrency=concurrency,
            lease=lease,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            on_exhausted=on_exhausted,
            batch_size=batch_size,
            prefetch=prefetch,
            name=name,
        )
        self._settings = settings
        self._owns_backend = not isinstance(redis, Backend)
        self._backend = connect(redis)
        if self._backend.cluster:  # the sharded bell (keys.CLUSTER_WAKE_SHARDS)
            settings = dataclasses.replace(settings, keys=namespace_keys(namespace, cluster=True))
            self._settings = settings
        try:
            check_worker_access(self._backend, settings.keys, settings.id)
        except Exception:
            if self._owns_backend:
                self._backend.close()
            raise
        self._state = CoordinatorState(settings)
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._link = Link(self._backend)  # the coordinator's connection
        self._runner = BatchRunner(work, on_done, on_error, self._inbox.put, settings.id)
        self._executor: Executor | None = None  # made by run(): an unrun worker holds no threads
        self._waker = Waker(
            self._backend,
            settings.keys,
            self._inbox,
            self._state.stop_requested,
            free_slots=settings.concurrency,
        )
        self._coordinator = Coordinator(self._state, self._link, self._inbox, self._waker)
        self._running = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    # --- settings, as given ----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._settings.id

    @property
    def namespace(self) -> str:
        return self._settings.namespace

    @property
    def concurrency(self) -> int:
        return self._settings.concurrency

    @property
    def lease_seconds(self) -> float:
        return self._settings.lease_seconds

    @property
    def max_attempts(self) -> int:
        return self._settings.max_attempts

    @property
    def retry_backoff(self) -> float:
        return self._settings.retry_backoff

    @property
    def on_exhausted(self) -> str:
        return self._settings.on_exhausted

    @property
    def batch_size(self) -> int:
        return self._settings.batch_size

    @property
    def prefetch(self) -> int:
        """Most leases held beyond ``concurrency`` (see prefetch.PrefetchPolicy)."""
        return self._settings.prefetch

    @property
    def stats(self) -> dict[str, int]:
        """Counters: claimed, finished, failed, retried, dead_lettered, blocked, fenced, reaped,
        redis_errors, and expired (batches the zombie rule stopped before an item until Redis
        confirmed the lease). workshaper.ops.metrics reads them at scrape time."""
        return self._state.stats

    @property
    def leases_held(self) -> int:
        """Leases held now: sub keys running or read ahead."""
        return len(self._state.leases)

    def instrument(self, observer: Observer) -> None:
        """Report handler durations, round trips and claim sizes to ``observer`` (metrics);
        call before run()."""
        self._state.observer = observer
        self._runner.observe_handler = observer.handler

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
        try:
            register_scripts(self._backend)
            self._start_threads()
            self._coordinator.run()
        except Exception:
            log.exception("worker %s crashed", self.id)
            raise
        finally:
            self._shut_down()
            restore()
            self._done.set()
            log.info("worker %s stopped", self.id)

    def runnable(self, partitions: list[int]) -> None:
        """These partitions may have runnable sub keys: claim there at the next turn. For an
        in-process producer that is the only one to tell (the Manager on its private
        backend): it saves the bell's round trip through the waker thread. Any thread."""
        put = self._inbox.put
        for partition in partitions:
            put(("wake", partition))

    def mark_alone(self) -> None:
        """No other worker shares this backend (the Manager's private one). Sub keys left
        runnable (a claim could not take them all, or a bell came while this worker had no
        room) are then claimed by it once it has room, without ringing their partition's
        bell: only its own waker would pop that bell, a thread wake-up and a coordinator turn
        per ring for nothing. Before ``start``/``run``: the coordinator reads it unlocked."""
        if self._running or self._thread is not None:
            raise RuntimeError("mark_alone() must be called before the Worker runs")
        self._state.alone = True

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming, let running items finish (up to ``timeout`` s), record them, release
        every lease so other workers continue at once. True when everything was drained."""
        self._request_stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._done.wait()
        return not self._state.leases

    def _start_threads(self) -> None:
        self._executor = make_executor(self._runner, self.concurrency)
        self._coordinator.dispatcher.attach(self._executor, self.prefetch)
        self._executor.start()
        self._waker.start()
        log.info(
            "worker %s started: namespace %r, concurrency %d, lease %.1fs",
            self.id,
            self.namespace,
            self.concurrency,
            self.lease_seconds,
        )

    def _shut_down(self) -> None:
        self._state.stop_requested.set()
        self._waker.wake_up()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._coordinator.reaper.resign(self._backend)
        self._coordinator.registry.unregister(self._backend)
        self._link.close()
        if self._owns_backend:
            self._backend.close()

    def _request_stop(self, timeout: float | None) -> None:
        self._coordinator.stop_deadline = None if timeout is None else time.monotonic() + timeout
        self._state.stop_requested.set()
        self._inbox.put(("stop",))
        self._waker.wake_up()

    def _install_signal_handlers(self) -> Callable[[], None]:
        return install_stop_handlers(
            partial(self._request_stop, None),
            self._state.stop_requested.is_set,
            forced_exit_note="held leases will expire",
        )
