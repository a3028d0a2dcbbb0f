"""Handlers for fault tests run by workshaper-worker processes (``tests.fault_handlers:work``).

Journal lines match workshaper_tools.testing.journal (read them with read_journal). Switches:
    WS_JOURNAL_DIR      where each process appends <pid>.jsonl
    WS_WORK_DELAY_MAX   uniform(0, max) seconds per item, seeded by (partition, offset)
    WS_SLOW_FIRST       "p:o:s,...": sleep s seconds on the FIRST attempt only
    WS_POISON           "p:o,...": os._exit on every attempt (kills the worker process)
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import workshaper

_fd: int | None = None


def _pairs(name: str) -> dict[tuple[int, int], float]:
    out = {}
    for part in filter(None, os.environ.get(name, "").split(",")):
        bits = part.split(":")
        out[(int(bits[0]), int(bits[1]))] = float(bits[2]) if len(bits) > 2 else 0.0
    return out


SLOW_FIRST = _pairs("WS_SLOW_FIRST")
POISON = _pairs("WS_POISON")
DELAY_MAX = float(os.environ.get("WS_WORK_DELAY_MAX", "0"))


def _log(kind: str) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["WS_JOURNAL_DIR"], f"{os.getpid()}.jsonl")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    job = workshaper.current_job()
    line = {
        "k": kind,
        "p": job.partition,
        "o": job.offset,
        "sub": job.sub_key,
        "a": job.attempt,
        "t": job.token,
        "pid": os.getpid(),
        "m": time.monotonic(),
    }
    os.write(_fd, (json.dumps(line) + "\n").encode())


def work(message: Any, partition: int, offset: int) -> None:
    _log("s")
    key = (partition, offset)
    if key in POISON:
        os._exit(17)
    job = workshaper.current_job()
    if key in SLOW_FIRST and job.attempt == 1:
        time.sleep(SLOW_FIRST[key])
    elif DELAY_MAX:
        time.sleep(random.Random(partition * 1_000_003 + offset).uniform(0, DELAY_MAX))
    _log("e")
