"""Profiles of a timed run: py-spy attached to the producer and each worker process.

``py-spy record --format raw`` writes collapsed stacks ("frame;frame;... count"); ``summarize``
turns them into the tables of docs/benchmarks.md: the functions with the most samples (self and
inclusive) and the share of samples by area (redis-py, WorkShaper's worker, producer, ...).
Sampled with ``--gil``: only the thread holding the GIL is recorded, so the shares are of
Python CPU time (a thread waiting for a Redis reply or for work releases the GIL and is not
counted). Where the processes wait is in the CPU split of ``cost.py`` instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Samples per second (py-spy's default is 100).
RATE = 500

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: Areas of a stack, first match of the innermost frame's file wins.
AREAS = (
    ("redis-py: socket send/recv", ("redis/connection.py", "socket.py", "selectors.py")),
    ("redis-py: parse replies", ("redis/_parsers", "hiredis")),
    ("redis-py: client, pipeline", ("redis/",)),
    ("WorkShaper: executor / handler", ("workshaper/worker/executor.py", "workshaper/jobs.py")),
    ("WorkShaper: worker coordinator", ("workshaper/worker/",)),
    ("WorkShaper: scripts/batch", ("workshaper/scripts.py", "workshaper/batch.py")),
    ("WorkShaper: producer / codec", ("workshaper/producer.py", "workshaper/codec.py")),
    ("WorkShaper: ack loop", ("workshaper/ackloop.py",)),
    ("bench handler + harness", ("workshaper_tools/",)),
    ("threads, queues, locks", ("threading.py", "queue.py", "concurrent/futures")),
    ("json", ("json/",)),
)


def py_spy_binary() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


@dataclass
class Recording:
    label: str
    pid: int
    path: Path
    proc: subprocess.Popen[bytes]


@dataclass
class Profiler:
    """Attach ``py-spy record`` to processes; ``stop`` makes each write its collapsed stacks."""

    out_dir: Path
    recordings: list[Recording] = field(default_factory=list)

    def attach(self, label: str, pid: int) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (scripts/bench installs it in .venv-bench)")
        path = self.out_dir / f"profile-{label}.txt"
        log = (self.out_dir / f"profile-{label}.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.recordings.append(Recording(label, pid, path, proc))

    def wait_attached(self, seconds: float = 1.0) -> None:
        time.sleep(seconds)  # py-spy needs a moment to attach before the timed window

    def stop(self) -> list[Recording]:
        for rec in self.recordings:
            if rec.proc.poll() is None:
                rec.proc.send_signal(signal.SIGINT)
        for rec in self.recordings:
            try:
                rec.proc.wait(30)
            except subprocess.TimeoutExpired:
                rec.proc.kill()
                rec.proc.wait(10)
        return [r for r in self.recordings if r.path.exists()]

    def kill(self) -> None:
        for rec in self.recordings:
            if rec.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.proc.pid, signal.SIGKILL)
                rec.proc.wait(10)


def _parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            if m:
                frames.append((m.group("func"), _short(m.group("file"))))
            else:
                frames.append((raw.strip(), ""))
        stacks.append((frames, int(count)))
    return stacks


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        index = file.find(marker)
        if index >= 0:
            tail = file[index + len(marker) :]
            if marker == "/lib/python3":
                tail = tail.split("/", 1)[-1]
            return tail
    return file


def _area(file: str) -> str:
    for name, needles in AREAS:
        if any(n in file for n in needles):
            return name
    return "other (interpreter, stdlib)"


@dataclass
class Summary:
    label: str
    samples: int
    self_top: list[tuple[str, float]]
    inclusive_top: list[tuple[str, float]]
    areas: list[tuple[str, float]]


def summarize(label: str, path: Path, top: int = 12) -> Summary:
    stacks = _parse(path)
    total = sum(c for _, c in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        areas[_area(file)] += count
        for name in {f"{f} ({fl})" for f, fl in frames}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / total) for k, v in counter.most_common(top)]

    return Summary(label, total, share(self_time), share(inclusive), share(areas))
