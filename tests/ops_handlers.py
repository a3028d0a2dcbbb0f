"""Handlers for operator tests run by workshaper-worker processes (``tests.ops_handlers:work``).

Messages are dicts ``{"do": ...}``: "ok"; "fail" (always raises ValueError); "hang" (waits until
the file ``release`` exists in $WS_OPS_DIR); "fail_until_fixed" (raises until ``fixed`` exists).
Each start and success is appended to $WS_OPS_DIR/runs.log as "start P O" / "done P O" (one
short write with O_APPEND, so lines of concurrent threads never interleave).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _dir() -> Path:
    return Path(os.environ["WS_OPS_DIR"])


def _log(line: str) -> None:
    fd = os.open(_dir() / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def work(message: Any, partition: int, offset: int) -> None:
    action = message.get("do", "ok") if isinstance(message, dict) else "ok"
    _log(f"start {partition} {offset}")
    if action == "fail":
        raise ValueError(f"poison item {offset}")
    if action == "fail_until_fixed" and not (_dir() / "fixed").exists():
        raise LookupError(f"item {offset} needs a fix")
    if action == "hang":
        deadline = time.monotonic() + 120
        while not (_dir() / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    _log(f"done {partition} {offset}")


def runs(directory: Path) -> list[tuple[str, int, int]]:
    path = directory / "runs.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, p, o = line.split()
        out.append((kind, int(p), int(o)))
    return out
