"""Regression tests of issue 8 with real worker processes: a worker restarted under a fixed
name (item 3) and a worker paused past its lease (item 12)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import workshaper
from workshaper.admin import Admin
from workshaper_tools.testing import RedisServer
from workshaper_tools.testing.journal import read_journal

from .conftest import wait_for
from .fleet import fleet

HANDLER = "tests.fault_handlers:work"


def test_a_worker_restarted_under_its_name_is_charged_for_the_item_that_killed_it(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    # Item 3: request ids restarted at 0 in each process, so the restarted worker got its
    # predecessor's cached claim answer, lease and token: the crash was never charged.
    max_attempts = 2
    args = ("--name", "pod-0", "--max-attempts", str(max_attempts))
    with fleet(redis_server.url, namespace, tmp_path, WS_POISON="0:1") as f:
        proc = f.start(*args, handler=HANDLER, lease=2.0, concurrency=1)
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, o) for o in range(4)])
            crashes = 0
            deadline = time.monotonic() + 120
            while not producer.flush(timeout=0.2):
                assert time.monotonic() < deadline, "the poison item was never dead-lettered"
                if proc.poll() is not None:  # a supervisor restarting the pod under its name
                    crashes += 1
                    assert crashes <= max_attempts + 1, f"{crashes} crashes, not dead-lettered"
                    proc = f.start(*args, handler=HANDLER, lease=2.0, concurrency=1)
    [dead] = Admin(redis_server.url, namespace).dead_letters(0)
    assert dead.offset == 1 and dead.error_type == "LeaseExpired"
    ended = {e.offset for e in read_journal(tmp_path) if e.kind == "e"}
    assert ended == {0, 2, 3}  # offset 0 may run twice (at-least-once), never given up


def test_a_worker_paused_past_its_lease_starts_no_item_after_it_wakes(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    # Item 12: paused mid-item, the worker woke, finished that item (its write is fenced) and
    # started the next one, which the new leaseholder had already run.
    with fleet(redis_server.url, namespace, tmp_path, WS_SLOW_FIRST="0:0:1.0") as f:
        paused = f.start(handler=HANDLER, lease=1.0, concurrency=1)
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, o) for o in range(3)])
            wait_for(lambda: started_by(tmp_path, paused.pid))
            os.kill(paused.pid, signal.SIGSTOP)  # mid-item, past its lease
            other = f.start(handler=HANDLER, lease=1.0, concurrency=1)
            assert producer.flush(timeout=60)
            os.kill(paused.pid, signal.SIGCONT)  # its item 0 returns at once
            wait_for(lambda: "lease lost" in f.logs(), timeout=30)
    assert started_by(tmp_path, paused.pid) == [0]
    assert started_by(tmp_path, other.pid) == [0, 1, 2]


def started_by(journal_dir: Path, pid: int) -> list[int]:
    return [e.offset for e in read_journal(journal_dir) if e.kind == "s" and e.pid == pid]
