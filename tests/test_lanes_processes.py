"""Lanes with real worker processes killed by real signals: a crash inside a lane's window is
charged to the item that caused it, and a killed worker's lanes finish elsewhere, in order."""

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
from .test_lanes import lane_items

HANDLER = "tests.fault_handlers:work"


def test_a_poison_item_in_a_busy_lane_is_dead_lettered_after_its_crashes(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    # Offset 5 kills its process on every attempt while three other sub keys of its lane run
    # beside it: nobody knows which item was running, so the lane's next holder runs the
    # entries one at a time, and only then is a crash charged in full.
    max_attempts = 2
    args = ("--max-attempts", str(max_attempts))
    items = [(f"k{o % 4}", "m", 0, o) for o in range(24)]
    with fleet(redis_server.url, namespace, tmp_path, WS_POISON="0:5") as f:
        proc = f.start(*args, handler=HANDLER, lease=2.0, concurrency=4)
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_encoded(lane_items(items, 1))
            crashes = 0
            deadline = time.monotonic() + 120
            while not producer.flush(timeout=0.2):
                assert time.monotonic() < deadline, "the poison item was never dead-lettered"
                if proc.poll() is not None:
                    crashes += 1
                    assert crashes <= max_attempts + 1, f"{crashes} crashes, not dead-lettered"
                    proc = f.start(*args, handler=HANDLER, lease=2.0, concurrency=4)
    [dead] = Admin(redis_server.url, namespace).dead_letters(0)
    assert dead.offset == 5 and dead.error_type == "LeaseExpired"
    events = read_journal(tmp_path)
    assert {e.offset for e in events if e.kind == "e"} == set(range(24)) - {5}
    assert all(e.sub_key == f"k{e.offset % 4}" for e in events)


def test_a_killed_workers_lanes_finish_elsewhere_in_order(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    items = [(f"k{o % 9}", "m", (o % 9) % 2, o) for o in range(400)]
    with fleet(redis_server.url, namespace, tmp_path, WS_WORK_DELAY_MAX="0.004") as f:
        doomed = f.start(handler=HANDLER, lease=1.0, concurrency=4)
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_encoded(lane_items(items, 2))
            wait_for(lambda: sum(e.kind == "e" for e in read_journal(tmp_path)) >= 80)
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait(30)
            f.start(handler=HANDLER, lease=1.0, concurrency=4)
            assert producer.flush(timeout=120)
    events = read_journal(tmp_path)
    assert {e.offset for e in events if e.kind == "e"} == set(range(400))
    assert all(e.sub_key == f"k{e.offset % 9}" for e in events)
    for k in range(9):
        # At least once, in order: each start is of the item after the last one finished
        # (a re-run goes back only to items whose end was never recorded).
        starts = [e.offset for e in events if e.kind == "s" and e.sub_key == f"k{k}"]
        firsts = sorted(set(starts), key=starts.index)
        assert firsts == sorted(firsts), k
