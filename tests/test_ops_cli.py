"""Operator commands against a real Redis and real worker processes: status numbers for a known
state, stuck keys of a hanging handler, dead-letter list/show/replay/drop, purge, and the live
status view in a pseudo-terminal."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workshaper
from workshaper.keys import NamespaceKeys
from workshaper_tools.testing import RedisServer

from .conftest import wait_for
from .ops_handlers import runs
from .ops_procs import OpsProcesses

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def ws(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "workshaper"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def ws_json(*args: str) -> Any:
    result = ws(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class Workers:
    """``workshaper-worker`` processes running ``tests.ops_handlers:work``."""

    def __init__(self, url: str, namespace: str, directory: Path) -> None:
        self.url, self.namespace = url, namespace
        self.processes = OpsProcesses(directory)

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        return self.processes.start(
            f"worker-{len(self.processes.procs)}",
            str(BIN / "workshaper-worker"),
            "tests.ops_handlers:work",
            "--redis",
            self.url,
            "--namespace",
            self.namespace,
            "--concurrency",
            "4",
            "--max-attempts",
            "1",
            "--lease",
            "5",
            *extra,
        )

    def stop(self) -> None:
        self.processes.stop()


@pytest.fixture
def workers(redis_server: RedisServer, namespace: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(redis_server.url, namespace, tmp_path)
    yield w
    w.stop()


def _partition(doc: dict[str, Any], partition: int) -> dict[str, Any]:
    return next(p for p in doc["partitions"] if p["partition"] == partition)


def test_status_json_and_stuck_for_a_hanging_handler(
    redis_server: RedisServer, namespace: str, workers: Workers, tmp_path: Path
) -> None:
    common = ["--redis", redis_server.url, "--namespace", namespace]
    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        producer.enqueue_many(
            [
                ("a", {"do": "ok"}, 0, 0),
                ("a", {"do": "ok"}, 0, 1),
                ("b", {"do": "hang"}, 0, 2),
                ("b", {"do": "ok"}, 0, 3),
                ("c", {"do": "fail"}, 0, 4),
                ("c", {"do": "ok"}, 0, 5),
                ("d", {"do": "ok"}, 1, 10),
                ("d", {"do": "ok"}, 1, 11),
                ("d", {"do": "ok"}, 1, 12),
            ]
        )
        # Before any worker: everything pending and runnable.
        doc = ws_json("status", "--interval", "0", *common)
        p0 = _partition(doc, 0)
        assert (p0["acked"], p0["highest"], p0["lag"], p0["unacked_items"]) == (None, 5, 6, 6)
        assert (p0["pending_sub_keys"], p0["runnable_sub_keys"], p0["leased_sub_keys"]) == (3, 3, 0)
        assert p0["lowest_unfinished"] == 0 and p0["dead_letters"] == 0
        assert doc["workers"] == []

        proc = workers.start()
        wait_for(lambda: ("start", 0, 2) in runs(tmp_path))
        wait_for(lambda: producer.watermark(1) == 12 and producer.watermark(0) == 1)
        wait_for(lambda: ("done", 0, 5) in runs(tmp_path))
        doc = wait_for(
            lambda: (
                (d := ws_json("status", "--interval", "0", "--stall-after", "1s", *common))
                and d["warnings"]
                and d
            )
        )
        p0, p1 = _partition(doc, 0), _partition(doc, 1)
        assert p0["acked"] == 1 and p0["highest"] == 5 and p0["lag"] == 4
        assert p0["unacked_items"] == 4  # offsets 2 (hanging), 3 (behind it), 4 (dead), 5
        assert p0["lowest_unfinished"] == 2
        assert (p0["pending_sub_keys"], p0["leased_sub_keys"], p0["runnable_sub_keys"]) == (1, 1, 0)
        assert (p0["blocked_sub_keys"], p0["dead_letters"], p0["expired_leases"]) == (0, 1, 0)
        assert p0["oldest_unfinished_age"] >= 1.0
        assert p1["acked"] == 12 and p1["lag"] == 0 and p1["unacked_items"] == 0
        assert p1["pending_sub_keys"] == 0 and p1["oldest_unfinished_age"] is None
        [worker] = doc["workers"]
        assert worker["pid"] == proc.pid and worker["concurrency"] == 4
        assert worker["heartbeat_age"] < 30
        assert worker["reaper"] is True  # the only worker is the elected reaper
        [warning] = doc["warnings"]
        assert "partition 0" in warning and "offset 2" in warning
        assert "'b' running on " + worker["id"] in warning

        stuck = wait_for(lambda: ws_json("stuck", "--older-than", "1s", *common))
        assert stuck == [
            {
                "partition": 0,
                "sub_key": "b",
                "sub_key_kind": "str",
                "head_offset": 2,
                "age": stuck[0]["age"],
                "attempts": 0,
                "holder": worker["id"],
                "why": "running",
                "queued": 2,
            }
        ]
        assert stuck[0]["age"] >= 1.0
        text = ws("stuck", "--older-than", "1s", *common)
        assert text.returncode == 0 and "running" in text.stdout and worker["id"] in text.stdout
        assert ws_json("stuck", "--older-than", "1h", *common) == []

        (tmp_path / "release").touch()
        wait_for(lambda: producer.watermark(0) == 5)
        doc = ws_json("status", "--interval", "0", *common)
        assert _partition(doc, 0)["unacked_items"] == 0 and doc["warnings"] == []
        assert _partition(doc, 0)["dead_letters"] == 1
    finally:
        producer.close()


def test_dead_letters_replay_runs_in_sub_key_order(
    redis_server: RedisServer, namespace: str, workers: Workers, tmp_path: Path
) -> None:
    common = ["--redis", redis_server.url, "--namespace", namespace]
    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        workers.start()
        producer.enqueue_many(
            [
                ("k", {"do": "fail_until_fixed"}, 0, 0),
                ("k", {"do": "ok"}, 0, 1),
                ("x", {"do": "fail"}, 0, 2),
            ]
        )
        assert producer.flush(timeout=30)
        letters = ws_json("dead-letters", "list", *common)
        assert [(d["offset"], d["sub_key"], d["error_type"]) for d in letters] == [
            (0, "k", "LookupError"),
            (2, "x", "ValueError"),
        ]
        assert [
            d["offset"]
            for d in ws_json("dead-letters", "list", "--error-type", "ValueError", *common)
        ] == [2]
        assert [
            d["offset"] for d in ws_json("dead-letters", "list", "--sub-key", "k", *common)
        ] == [0]
        assert (
            ws_json("dead-letters", "list", "--min-offset", "1", "--max-offset", "1", *common) == []
        )
        shown = ws_json("dead-letters", "show", "0", "2", *common)
        assert (
            shown["message"] == {"value": {"do": "fail"}} and "poison item 2" in shown["traceback"]
        )

        # Sub key k is busy again: 3 hangs, 4 waits behind it. The replayed 0 goes behind both.
        producer.enqueue_many([("k", {"do": "hang"}, 0, 3), ("k", {"do": "ok"}, 0, 4)])
        wait_for(lambda: ("start", 0, 3) in runs(tmp_path))
        (tmp_path / "fixed").touch()
        replay = subprocess.Popen(
            [str(BIN / "workshaper"), "dead-letters", "replay", "--offset", "0", "--json", *common],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            # 3, 4 and the replayed 0 wait in k's queue, and 0 has not started again.
            stuck = wait_for(
                lambda: (
                    (rows := ws_json("stuck", "--older-than", "0", *common))
                    and rows[0]["queued"] == 3
                    and rows
                )
            )
            assert stuck[0]["sub_key"] == "k" and stuck[0]["head_offset"] == 3
            assert runs(tmp_path).count(("start", 0, 0)) == 1
            (tmp_path / "release").touch()
            out, _ = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
                replay.wait()
        assert replay.returncode == 0
        assert json.loads(out) == [{"partition": 0, "offset": 0, "outcome": "succeeded"}]
        order = [(kind, o) for kind, p, o in runs(tmp_path) if o in (0, 3, 4)]
        assert order[-6:] == [
            ("start", 3),
            ("done", 3),
            ("start", 4),
            ("done", 4),
            ("start", 0),
            ("done", 0),
        ]
        assert producer.flush(timeout=30)

        # A replay that fails again reports it, and the dead letter is back.
        failed = ws("dead-letters", "replay", "--offset", "2", *common)
        assert failed.returncode == 1
        assert (
            "partition 0 offset 2: failed (ValueError: poison item 2, 1 attempt(s))"
            in failed.stdout
        )
        assert [d["offset"] for d in ws_json("dead-letters", "list", *common)] == [2]
    finally:
        producer.close()


def test_drop_and_purge_ask_for_confirmation(
    redis_server: RedisServer, namespace: str, workers: Workers
) -> None:
    common = ["--redis", redis_server.url, "--namespace", namespace]
    with workshaper.Producer(redis_server.url, namespace) as producer:
        workers.start()
        producer.enqueue_many([("a", {"do": "fail"}, 3, 7), ("b", {"do": "ok"}, 3, 8)])
        assert producer.flush(timeout=30)
    refused = ws("dead-letters", "drop", "--partition", "3", *common, stdin="n\n")
    assert refused.returncode == 1 and "Drop 1 dead letter(s)" in refused.stdout
    assert len(ws_json("dead-letters", "list", *common)) == 1
    dropped = ws("dead-letters", "drop", "--partition", "3", *common, stdin="y\n")
    assert dropped.returncode == 0 and "dropped 1 dead letter(s)" in dropped.stdout
    assert ws_json("dead-letters", "list", *common) == []

    workers.stop()
    refused = ws("purge", "--redis", redis_server.url, "--namespace", namespace)  # no answer
    assert refused.returncode == 1
    client = workshaper.Producer(redis_server.url, namespace)
    try:
        keys = NamespaceKeys(namespace)
        assert client._backend.client.exists(keys.partitions)
        # A Kafka bridge's group binding is namespace state too: a purge frees the namespace
        # for another group.
        client._backend.client.hset(keys.kafka, "group", "g1")
    finally:
        client.close()
    purged = ws("purge", "--redis", redis_server.url, "--namespace", namespace, "--yes")
    assert purged.returncode == 0, purged.stderr
    import redis as redis_py

    r = redis_py.Redis.from_url(redis_server.url)
    try:
        leftover = [k for k in r.scan_iter(match=f"ws:{{{namespace}*")]
        assert leftover == []
    finally:
        r.close()


def test_bad_input_is_named(redis_server: RedisServer, namespace: str) -> None:
    common = ["--redis", redis_server.url, "--namespace", namespace]
    result = ws("stuck", "--older-than", "soon", *common)
    assert result.returncode == 2 and "'soon' is not a duration" in result.stderr
    result = ws("dead-letters", "show", "0", "5", *common)
    assert result.returncode == 2 and "no dead letter at offset 5" in result.stderr
    result = ws("dead-letters", "list", "--min-offset", "9", "--max-offset", "3", *common)
    assert result.returncode == 2 and "--min-offset 9 is above --max-offset 3" in result.stderr


def test_status_watch_in_a_pseudo_terminal(redis_server: RedisServer, namespace: str) -> None:
    with workshaper.Producer(redis_server.url, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, 0), ("b", "m", 1, 5)])
        pid, fd = pty.fork()
        if pid == 0:  # the child: the command on the pty
            os.chdir(ROOT)
            # A suite started in the background inherits SIGINT ignored, and so would the
            # command (Python leaves an ignored SIGINT ignored): Ctrl-C must reach it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(
                str(BIN / "workshaper"),
                [
                    "workshaper",
                    "status",
                    "--watch",
                    "--interval",
                    "0.2",
                    "--redis",
                    redis_server.url,
                    "--namespace",
                    namespace,
                ],
            )
        screen = b""
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and b"workers" not in screen:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    screen += os.read(fd, 65536)
            # The second partition's row, drawn with box characters on a terminal.
            assert b"namespace " + namespace.encode() in screen
            assert b"partitions" in screen and b"workers" in screen
            text = screen.decode(errors="replace")
            assert any(
                line.replace("│", " ").split()[:3] == ["1", "-", "5"] for line in text.splitlines()
            )
        finally:
            os.kill(pid, signal.SIGINT)
            status = _drain_until_exit(pid, fd)
            os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 0


def _drain_until_exit(pid: int, fd: int, timeout: float = 30) -> int:
    """Read the pty while the child exits (a full pty buffer would block its last redraw)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
