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
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from workshaper.jobs import current_job

Record = tuple[int, Any, int, float, float]

_partitions = array("q")
_offsets = array("q")
_starts = array("d")
_ends = array("d")
_subs: list[Any] = []  # the Job's sub key objects, shared by the items of a lease
_monotonic = time.monotonic
_lock = threading.Lock()  # the five appends of one item stay together


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
    tmp.write_text(json.dumps({"pid": os.getpid(), "records": records()}, separators=(",", ":")))
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
