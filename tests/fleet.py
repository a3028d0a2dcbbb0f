"""Starting real workshaper-worker processes for tests, and cleaning them up."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workshaper.cli.common import worker_command
from workshaper_tools.testing import stop_processes


class Fleet:
    """Worker processes running ``workshaper_tools.testing.journal:work`` with a journal dir."""

    def __init__(self, url: str, namespace: str, journal_dir: Path, **env: str) -> None:
        self.url = url
        self.namespace = namespace
        self.journal_dir = journal_dir
        self.env = {**os.environ, "WS_JOURNAL_DIR": str(journal_dir), **env}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(
        self,
        *extra: str,
        handler: str = "workshaper_tools.testing.journal:work",
        lease: float = 1.0,
        concurrency: int = 4,
    ) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.journal_dir / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *worker_command(),
                handler,
                "--redis",
                self.url,
                "--namespace",
                self.namespace,
                "--lease",
                str(lease),
                "--concurrency",
                str(concurrency),
                "--log-level",
                "INFO",
                *extra,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.journal_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        stop_processes(self.procs, resume=True)


@contextmanager
def fleet(url: str, namespace: str, journal_dir: Path, **env: str) -> Iterator[Fleet]:
    f = Fleet(url, namespace, journal_dir, **env)
    try:
        yield f
    finally:
        f.stop_all()
