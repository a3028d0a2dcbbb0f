"""Stopping the child processes a test or a benchmark started."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from typing import Any


def stop_processes(
    procs: Iterable[subprocess.Popen[Any]], timeout: float = 30, *, resume: bool = False
) -> None:
    """SIGTERM every process still running, then wait up to ``timeout`` seconds for each; one
    that outlives it is killed (and waited for another 10 s), so nothing is left behind.
    ``resume`` first sends SIGCONT, for processes the caller may have paused with SIGSTOP
    (a stopped process would not act on SIGTERM)."""
    procs = list(procs)
    # Signal them all before waiting for any, so they shut down in parallel.
    for p in procs:
        if p.poll() is None:
            if resume:
                os.kill(p.pid, signal.SIGCONT)
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
