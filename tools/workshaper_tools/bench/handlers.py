"""Work handlers the benchmark's worker processes run, with cheap in-handler recording.

Each call appends ``(partition, sub_key, offset, start, end)`` to process-local arrays
(CLOCK_MONOTONIC seconds, one clock for every process of the machine; about 40 bytes per item,
so the worker's RSS stays close to what it would be without recording); when the worker
process exits (SIGTERM drains it, then the interpreter runs ``atexit``) the list is written to
``$WS_BENCH_DIR/<pid>.json``. The harness merges the files of every worker and checks order per
(partition, sub key), loss and the acked watermarks against them (``verify.py``). Recording
costs about half a microsecond per item, so it stays on in every timed run.

    noop    does nothing (S1, S3, S4, S5)
    sleep   sleeps ``int(message)`` microseconds (S2: the plan decides each item's work)

With ``WS_BENCH_TRACE=1`` (S3's breakdown) the worker also records each of its round trips
(when sent, when answered, how many claims and completions it carried), each wake-up bell its
waker popped and each free-slot count the coordinator published to the waker, by wrapping
``Batch.execute``, ``Redis.bzpopmin`` and ``Waker.publish_free_slots`` of this process; they
land in the same file.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper.batch import Batch
from workshaper.jobs import current_job

Record = tuple[int, Any, int, float, float]
#: (sent, answered, claims, completions) of one worker round trip; CLOCK_MONOTONIC seconds.
RoundTrip = tuple[float, float, int, int]

_partitions = array("q")
_offsets = array("q")
_starts = array("d")
_ends = array("d")
_subs: list[Any] = []  # the Job's sub key objects, shared by the items of a lease
_monotonic = time.monotonic
_lock = threading.Lock()  # the five appends of one item stay together
_round_trips: list[RoundTrip] = []
_bells: list[tuple[int, float]] = []  # (partition, popped at)
_published: list[tuple[float, int]] = []  # (when, free slots the coordinator published)


def _sub_key() -> Any:
    sub = current_job().sub_key
    if isinstance(sub, bytes):
        return sub.decode("latin-1")
    return sub


def _record(partition: int, offset: int, start: float) -> None:
    sub = _sub_key()
    end = _monotonic()
    with _lock:
        _partitions.append(partition)
        _subs.append(sub)
        _offsets.append(offset)
        _starts.append(start)
        _ends.append(end)


def noop(message: Any, partition: int, offset: int) -> None:
    _record(partition, offset, _monotonic())


def sleep(message: Any, partition: int, offset: int) -> None:
    start = _monotonic()
    time.sleep(int(message) / 1e6)
    _record(partition, offset, start)


def trace_round_trips() -> None:
    """Record this worker's round trips and popped bells (see the module's docstring)."""
    execute, script, bzpopmin = Batch.execute, Batch.script, redis.Redis.bzpopmin
    names: dict[int, list[str]] = {}

    def traced_script(self: Batch, name: str, *args: Any, **kwargs: Any) -> Any:
        names.setdefault(id(self), []).append(name)
        return script(self, name, *args, **kwargs)

    def traced_execute(self: Batch) -> None:
        sent = _monotonic()
        try:
            execute(self)
        finally:
            done = _monotonic()
            sent_names = names.pop(id(self), [])
            _round_trips.append(
                (
                    sent,
                    done,
                    sent_names.count("claim_sub_keys"),
                    sent_names.count("complete_items"),
                )
            )

    def traced_bzpopmin(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        popped = bzpopmin(self, *args, **kwargs)
        if popped is not None:
            _bells.append((int(popped[1]), _monotonic()))
        return popped

    from workshaper.worker.waker import Waker  # noqa: PLC0415 - only when tracing

    publish = Waker.publish_free_slots

    def traced_publish(self: Waker, free: int) -> None:
        _published.append((_monotonic(), free))
        publish(self, free)

    Waker.publish_free_slots = traced_publish  # type: ignore[method-assign]
    Batch.script = traced_script  # type: ignore[method-assign]
    Batch.execute = traced_execute  # type: ignore[method-assign]
    redis.Redis.bzpopmin = traced_bzpopmin  # type: ignore[method-assign,assignment]


if os.environ.get("WS_BENCH_TRACE") == "1":
    trace_round_trips()


def records() -> list[Record]:
    """This process's records so far."""
    with _lock:
        return list(zip(_partitions, _subs, _offsets, _starts, _ends, strict=True))


def dump(directory: str | Path | None = None) -> Path | None:
    """Write this process's records to ``<directory>/<pid>.json`` (default ``$WS_BENCH_DIR``)."""
    target = directory or os.environ.get("WS_BENCH_DIR")
    if not target:
        return None
    path = Path(target) / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    data = {
        "pid": os.getpid(),
        "records": records(),
        "round_trips": _round_trips,
        "bells": _bells,
        "published": _published,
    }
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    tmp.replace(path)
    return path


atexit.register(dump)


def read_dumps(directory: str | Path) -> list[Record]:
    """Every record of every worker that wrote to ``directory``."""
    out: list[Record] = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        out.extend((r[0], r[1], r[2], r[3], r[4]) for r in data["records"])
    return out


@dataclass
class WorkerTrace:
    """One worker's records, round trips and popped bells (``WS_BENCH_TRACE``)."""

    pid: int
    records: list[Record]
    round_trips: list[RoundTrip]
    bells: list[tuple[int, float]]
    published: list[tuple[float, int]]  # (when, free slots published to the waker)


def read_traces(directory: str | Path) -> list[WorkerTrace]:
    """The trace of every worker that wrote to ``directory``."""
    out: list[WorkerTrace] = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text())
        out.append(
            WorkerTrace(
                int(data["pid"]),
                [(r[0], r[1], r[2], r[3], r[4]) for r in data["records"]],
                [(t[0], t[1], t[2], t[3]) for t in data.get("round_trips", [])],
                [(b[0], b[1]) for b in data.get("bells", [])],
                [(f[0], f[1]) for f in data.get("published", [])],
            )
        )
    return out
