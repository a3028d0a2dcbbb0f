"""A journaling work handler for test fleets, and the reader of its journals.

Run ``workshaper-worker workshaper_tools.testing.journal:work`` with ``WS_JOURNAL_DIR`` set: every
item start and end is appended as one JSON line to ``<dir>/<pid>.jsonl`` (one ``write`` on an
O_APPEND descriptor, so a SIGKILL never leaves half a line; ``WS_JOURNAL_FSYNC=1`` also fsyncs,
for faults that take the machine's page cache too).

Behaviour switches (environment, all optional):
    WS_WORK_DELAY_MAX   seconds; each item sleeps uniform(0, max), seeded by (partition, offset)
    WS_POISON           "p:o,p:o": these items kill their worker process (os._exit) every time
    WS_FAIL             "p:o:n,...": these items raise on their first n attempts
    WS_SLOW             "p:o:s,...": these items sleep s seconds (to be paused or fenced)

A message that is a dict with a true ``"poison"`` field also kills its worker every time (the
chaos harness makes items poison while a run goes on, after the workers started).

Event fields: ``k`` "s" start / "e" end (work returned) / "x" raised, ``p`` partition,
``o`` offset, ``sub`` sub key, ``a`` attempt, ``t`` token, ``pid``, ``m`` CLOCK_MONOTONIC
seconds (one clock for every process on the machine), and ``w`` the worker id when the process
was started with ``WS_WORKER_ID`` set (the chaos harness names each worker incarnation).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workshaper.jobs import current_job

_fd: int | None = None
_settings: dict[str, Any] | None = None


def _parse_pairs(text: str, fields: int) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        bits = part.split(":")
        value = float(bits[2]) if fields == 3 else 0.0
        out[(int(bits[0]), int(bits[1]))] = value
    return out


def _config() -> dict[str, Any]:
    global _settings
    if _settings is None:
        _settings = {
            "dir": os.environ["WS_JOURNAL_DIR"],
            "delay": float(os.environ.get("WS_WORK_DELAY_MAX", "0")),
            "poison": _parse_pairs(os.environ.get("WS_POISON", ""), 2),
            "fail": _parse_pairs(os.environ.get("WS_FAIL", ""), 3),
            "slow": _parse_pairs(os.environ.get("WS_SLOW", ""), 3),
            "fsync": os.environ.get("WS_JOURNAL_FSYNC") == "1",
            "worker": os.environ.get("WS_WORKER_ID", ""),
        }
    return _settings


def _write(event: dict[str, Any]) -> None:
    global _fd
    settings = _config()
    if _fd is None:
        path = Path(settings["dir"]) / f"{os.getpid()}.jsonl"
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
    if settings["fsync"]:
        os.fsync(_fd)


def _event(kind: str) -> dict[str, Any]:
    job = current_job()
    sub = job.sub_key
    if isinstance(sub, bytes):
        sub = sub.decode("latin-1")
    event: dict[str, Any] = {
        "k": kind,
        "p": job.partition,
        "o": job.offset,
        "sub": sub,
        "a": job.attempt,
        "t": job.token,
        "pid": os.getpid(),
        "m": time.monotonic(),
    }
    worker = _config()["worker"]
    if worker:
        event["w"] = worker
    return event


#: Exit status of a worker killed by a poison item.
POISON_EXIT_STATUS = 17


def is_poison_message(message: Any) -> bool:
    return isinstance(message, dict) and bool(message.get("poison"))


class InjectedFailure(Exception):
    """Raised by items listed in WS_FAIL."""


def work(message: Any, partition: int, offset: int) -> None:
    settings = _config()
    start = _event("s")
    _write(start)
    key = (partition, offset)
    if key in settings["poison"] or is_poison_message(message):
        os._exit(POISON_EXIT_STATUS)
    if key in settings["fail"] and start["a"] <= settings["fail"][key]:
        _write({**_event("x")})
        raise InjectedFailure(f"injected failure of attempt {start['a']}")
    delay = settings["slow"].get(key)
    if delay is None and settings["delay"] > 0:
        delay = random.Random(partition * 1_000_003 + offset).uniform(0, settings["delay"])
    if delay:
        time.sleep(delay)
    _write(_event("e"))


@dataclass(frozen=True)
class Event:
    kind: str
    partition: int
    offset: int
    sub_key: Any
    attempt: int
    token: int
    pid: int
    at: float
    worker: str = ""  # WS_WORKER_ID of the process, "" when not set


def read_journal(directory: str | Path) -> list[Event]:
    """Every complete event line of every journal file in the directory, oldest first."""
    events = []
    for path in Path(directory).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a torn last line (only possible without O_APPEND semantics)
            events.append(
                Event(
                    e["k"],
                    e["p"],
                    e["o"],
                    e["sub"],
                    e["a"],
                    e["t"],
                    e["pid"],
                    e["m"],
                    e.get("w", ""),
                )
            )
    events.sort(key=lambda ev: ev.at)
    return events


def iter_kind(events: list[Event], kind: str) -> Iterator[Event]:
    return (e for e in events if e.kind == kind)
