"""The waker: a thread that blocks on the namespace's wake-up bell (BZPOPMIN) while the worker
has free slots and tells the coordinator which partition has runnable sub keys. It never
polls: with no free slot it waits on a condition until the coordinator publishes room. On a
Redis Cluster the bell has shards (keys.CLUSTER_WAKE_SHARDS, each its own slot, and a
BZPOPMIN may not span slots): one such thread per shard, sharing the free-slot count."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import redis
import redis.exceptions

from workshaper.connection import Backend, is_transient
from workshaper.keys import NamespaceKeys

log = logging.getLogger(__name__)

#: Longest the waker blocks in one BZPOPMIN (bounds how fast it notices a stop).
WAKE_BLOCK_SECONDS = 1.0
#: Pause after Redis was unreachable, doubled up to the max while it stays unreachable.
REDIS_RETRY_MIN, REDIS_RETRY_MAX = 0.05, 2.0


class Waker:
    def __init__(
        self,
        backend: Backend,
        keys: NamespaceKeys,
        inbox: queue.SimpleQueue[tuple[Any, ...]],
        stop_requested: threading.Event,
        free_slots: int,
    ) -> None:
        self._backend = backend
        self._keys = keys
        self._inbox = inbox
        self._stop_requested = stop_requested
        self._free = threading.Condition()
        self._free_slots = free_slots
        bells = keys.wake_keys()
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(bell,),
                name="workshaper-waker" + (f"-{i}" if len(bells) > 1 else ""),
                daemon=True,
            )
            for i, bell in enumerate(bells)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def publish_free_slots(self, free: int) -> None:
        """The coordinator's count of leases it wants (the waker only lowers it by popping)."""
        if free == self._free_slots:
            return  # unchanged: no lock, no wake-up
        with self._free:
            self._free_slots = free
            if free > 0:
                self._free.notify_all()

    def wake_up(self) -> None:
        """Stopping: let a waker waiting for free slots see it."""
        with self._free:
            self._free.notify_all()

    def _run(self, bell: bytes) -> None:
        pop = _blocking_pop(self._backend)
        stop = self._stop_requested
        pause = REDIS_RETRY_MIN  # after a failed BZPOPMIN; doubles while Redis stays away
        while not stop.is_set():
            with self._free:
                while self._free_slots <= 0 and not stop.is_set():
                    self._free.wait(WAKE_BLOCK_SECONDS)
            if stop.is_set():
                return
            try:
                popped = pop(bell)
            except (
                redis.ConnectionError,
                redis.TimeoutError,
                OSError,
                redis.ResponseError,
                redis.exceptions.RedisClusterException,  # a cluster failing over
            ) as exc:
                # Unreachable, or failing over (a demoted primary answers READONLY): wait it
                # out. Any other error reply is a bug or a refusal, not ours to retry.
                if isinstance(exc, redis.ResponseError) and not is_transient(exc):
                    raise
                log.debug("waker: Redis unreachable (%s); retrying in %.2fs", exc, pause)
                stop.wait(pause)
                pause = min(pause * 2, REDIS_RETRY_MAX)
                continue
            pause = REDIS_RETRY_MIN
            if popped is None:
                continue
            with self._free:
                self._free_slots -= 1  # until the coordinator publishes the real number
            self._inbox.put(("wake", int(popped[1])))


def _blocking_pop(backend: Backend) -> Callable[[bytes], Any]:
    """BZPOPMIN of one bell for WAKE_BLOCK_SECONDS: (key, member, score), or None."""
    server = backend.server
    if server is None:
        client = backend.client
        return lambda bell: client.bzpopmin(bell, timeout=WAKE_BLOCK_SECONDS)
    # In-process server: its own blocking pop. Through redis-py's client, connection pool and
    # response callbacks, each wake-up cost about as much Python as the pop itself.
    return lambda bell: server.bzpopmin(bell, WAKE_BLOCK_SECONDS)
