"""Processes of the operator tests (workers, the dashboard) running the handlers of
``tests.ops_handlers`` against one $WS_OPS_DIR."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from workshaper_tools.testing import stop_processes

ROOT = Path(__file__).resolve().parent.parent


class OpsProcesses:
    """Started processes with $WS_OPS_DIR set to ``directory``; each logs to ``<name>.log``
    there."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, "WS_OPS_DIR": str(self.directory)},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Release the hanging handlers (the ``release`` file), then stop every process."""
        (self.directory / "release").touch()
        stop_processes(self.procs)
