"""Worker-side code of the peers (RQ, Dramatiq): the same no-op work, counted cheaply.

Each job bumps a process-local counter; a daemon thread writes ``count last_monotonic`` to the
hash ``peerbench:done`` (field: pid) every 10 ms, so counting costs the peer one Redis write per
10 ms, not one per job. RQ's default (forking) worker runs each job in a child that exits right
after it, so with ``WS_PEER_DIRECT=1`` every job writes its own count instead. Warm-up jobs only
record which process ran them (``peerbench:warm``), so the harness knows every worker is up.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

DONE_KEY = "peerbench:done"
WARM_KEY = "peerbench:warm"
DIRECT_KEY = "peerbench:direct"
DIRECT_LAST_KEY = "peerbench:direct-last"
FLUSH_EVERY = 0.01

_lock = threading.Lock()
_count = 0
_last = 0.0
_flusher: threading.Thread | None = None
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["WS_PEER_REDIS_URL"])
    return _client


def _flush_forever() -> None:
    written = -1
    while True:
        time.sleep(FLUSH_EVERY)
        with _lock:
            count, last = _count, _last
        if count != written:
            _redis().hset(DONE_KEY, str(os.getpid()), f"{count} {last}")
            written = count


def record(message: Any) -> None:
    """The no-op work plus its count (``message`` "warm" marks a warm-up job)."""
    global _count, _last, _flusher
    if message == "warm":
        _redis().sadd(WARM_KEY, os.getpid())
        time.sleep(0.02)
        return
    if os.environ.get("WS_PEER_DIRECT") == "1":
        pipe = _redis().pipeline(transaction=False)
        pipe.hincrby(DIRECT_KEY, "count", 1)
        pipe.zadd(DIRECT_LAST_KEY, {"last": time.monotonic()}, gt=True)
        pipe.execute()
        return
    with _lock:
        _count += 1
        _last = time.monotonic()
        if _flusher is None:
            _flusher = threading.Thread(target=_flush_forever, daemon=True)
            _flusher.start()


def rq_noop(message: Any) -> None:
    record(message)
