"""The console scripts, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import workshaper
from workshaper.admin import Admin
from workshaper.demo import ideal_seconds
from workshaper_tools.testing import RedisServer, free_port

from .conftest import wait_for

BIN = Path(sys.executable).parent


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def worker_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "workshaper-worker"), *args, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("no_such_module_xyz:work", "cannot import module 'no_such_module_xyz'"),
        ("workshaper_tools.testing.journal:nope", "has no attribute 'nope'"),
        ("workshaper.codec:MAX_OFFSET", "not a callable"),
        ("just-a-name", "must look like MODULE:FUNCTION"),
    ],
)
def test_wrong_handler_path_exits_2_with_one_line(
    redis_server: RedisServer, handler: str, fragment: str
) -> None:
    result = worker_cli(handler, "--redis", redis_server.url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_unreachable_redis_exits_2_naming_host_port_without_password() -> None:
    port = free_port()
    result = worker_cli(
        "workshaper_tools.testing.journal:work", "--redis", f"redis://:hunter2@127.0.0.1:{port}/0"
    )
    assert result.returncode == 2
    assert f"cannot reach Redis at 127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr and "****" in result.stderr
    assert result.stderr.count("\n") == 1


def test_bad_password_exits_2() -> None:
    with RedisServer(password="correct") as server:
        result = worker_cli(
            "workshaper_tools.testing.journal:work",
            "--redis",
            f"redis://:wrong@127.0.0.1:{server.port}/0",
        )
    assert result.returncode == 2
    assert (
        "refused the credentials" in result.stderr
        and "wrong" not in result.stderr.split("credentials")[0]
    )


def test_bad_settings_exit_2(redis_server: RedisServer) -> None:
    result = worker_cli(
        "workshaper_tools.testing.journal:work",
        "--redis",
        redis_server.url,
        "--concurrency",
        "zero",
    )
    assert result.returncode == 2 and "--concurrency must be a number" in result.stderr
    result = worker_cli(
        "workshaper_tools.testing.journal:work",
        "--redis",
        redis_server.url,
        "--namespace",
        "bad:ns",
    )
    assert result.returncode == 2 and "namespace 'bad:ns'" in result.stderr
    result = worker_cli(
        "workshaper_tools.testing.journal:work", "--redis", redis_server.url, "--prefetch", "-1"
    )
    assert result.returncode == 2 and "prefetch must be an int >= 0, got -1" in result.stderr


def test_worker_configured_from_environment_runs_items_and_stops_on_sigterm(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "WORKSHAPER_REDIS_URL": redis_server.url,
        "WORKSHAPER_NAMESPACE": namespace,
        "WORKSHAPER_CONCURRENCY": "3",
        "WORKSHAPER_LEASE": "60",
        "WS_JOURNAL_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [str(BIN / "workshaper-worker"), "tests.fault_handlers:work"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([(f"k{o % 5}", o, 0, o) for o in range(50)])
            assert producer.flush(timeout=60)
        info = wait_for(lambda: Admin(redis_server.url, namespace).workers())
        assert next(iter(info.values()))["concurrency"] == 3
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "signal 15: stopping" in output and "stopped" in output
    assert Admin(redis_server.url, namespace).workers() == {}  # unregistered on the way out


def test_sigterm_mid_item_drains_it_and_releases_the_rest(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    env = {**os.environ, "WS_JOURNAL_DIR": str(tmp_path), "WS_SLOW_FIRST": "0:0:1"}
    proc = subprocess.Popen(
        [
            str(BIN / "workshaper-worker"),
            "tests.fault_handlers:work",
            "--redis",
            redis_server.url,
            "--namespace",
            namespace,
            "--lease",
            "60",
        ],
        env=env,
    )
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, o) for o in range(5)])
            wait_for(lambda: list(tmp_path.glob("*.jsonl")))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            status = Admin(redis_server.url, namespace).status()[0]
            assert status.leased_sub_keys == 0 and status.ready_sub_keys == 1  # handed back
            assert status.pending == 4  # offset 0 finished before the worker left
            started = time.monotonic()
            worker = workshaper.Worker(
                redis_server.url, namespace, work=lambda m, p, o: None, lease=60
            ).start()
            try:
                assert producer.flush(timeout=30)
            finally:
                worker.stop(10)
            assert time.monotonic() - started < 30  # no lease expiry was needed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_and_dead_letters_commands(redis_server: RedisServer, namespace: str) -> None:
    with workshaper.Producer(redis_server.url, namespace) as producer:
        producer.enqueue_many([("a", "m", 2, 0), ("b", "m", 2, 1)])
    result = run(
        str(BIN / "workshaper"),
        "status",
        "--interval",
        "0",
        "--redis",
        redis_server.url,
        "--namespace",
        namespace,
    )
    assert result.returncode == 0, result.stderr
    assert "namespace " + namespace in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("2 "))
    assert row.replace("│", " ").split()[:5] == ["2", "-", "1", "2", "2"]
    result = run(
        str(BIN / "workshaper"),
        "dead-letters",
        "list",
        "--partition",
        "2",
        "--json",
        "--redis",
        redis_server.url,
        "--namespace",
        namespace,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_demo_on_embedded_backend_verifies_order() -> None:
    result = run(str(BIN / "workshaper"), "demo", "--items", "300", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "order verified" in result.stdout
    assert "final watermark" in result.stdout
    assert "x ideal" in result.stdout


def test_demo_ideal_is_the_spread_work_or_the_longest_chain() -> None:
    items = [("a", {"i": i}, 0, i) for i in range(4)]
    chain = ideal_seconds(items, 1)
    assert 0 < chain < 4 * 0.002
    # One sub key: its items cannot run side by side, so more threads do not help.
    assert ideal_seconds(items, 8) == pytest.approx(chain)
    # Four sub keys on four threads: the longest single item.
    spread = [(f"k{i}", {"i": i}, 0, i) for i in range(4)]
    assert ideal_seconds(spread, 4) == pytest.approx(
        max(ideal_seconds([item], 1) for item in spread)
    )
    assert ideal_seconds(spread, 1) == pytest.approx(chain)


def test_demo_against_redis_with_worker_processes(redis_server: RedisServer) -> None:
    result = run(
        str(BIN / "workshaper"),
        "demo",
        "--redis",
        redis_server.url,
        "--workers",
        "2",
        "--items",
        "2000",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "order verified" in result.stdout and "2 worker processes" in result.stdout


def test_blocked_and_unblock_commands(redis_server: RedisServer, namespace: str) -> None:
    failing = {"on": True}

    def work(message: object, partition: int, offset: int) -> None:
        if failing["on"] and offset == 1:
            raise ValueError("needs an operator")

    worker = workshaper.Worker(
        redis_server.url, namespace, work=work, max_attempts=1, on_exhausted="block"
    ).start()
    common = ["--redis", redis_server.url, "--namespace", namespace]
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([(7, "m", 0, 0), (7, "m", 0, 1), (7, "m", 0, 2)])
            wait_for(lambda: Admin(redis_server.url, namespace).blocked(0))
            listed = run(str(BIN / "workshaper"), "blocked", "0", *common)
            assert "sub key 7 offset 1 attempts 1 ValueError: needs an operator" in listed.stdout
            missing = run(str(BIN / "workshaper"), "unblock", "0", "7", *common)  # "7" is a str
            assert missing.returncode == 2 and "is not blocked" in missing.stderr
            failing["on"] = False
            done = run(str(BIN / "workshaper"), "unblock", "0", "7", "--int", *common)
            assert done.returncode == 0 and "will run again" in done.stdout
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)


def test_a_blocked_lane_is_listed_and_unblocked_by_its_number(
    redis_server: RedisServer, namespace: str
) -> None:
    failing = {"on": True}

    def work(message: object, partition: int, offset: int) -> None:
        if failing["on"] and offset == 1:
            raise ValueError("needs an operator")

    worker = workshaper.Worker(
        redis_server.url, namespace, work=work, max_attempts=1, on_exhausted="block"
    ).start()
    common = ["--redis", redis_server.url, "--namespace", namespace]
    try:
        with workshaper.Producer(redis_server.url, namespace, lanes=1) as producer:
            producer.enqueue_many([(7, "m", 0, 0), (8, "m", 0, 1), (7, "m", 0, 2)])
            wait_for(lambda: Admin(redis_server.url, namespace).blocked(0))
            listed = run(str(BIN / "workshaper"), "blocked", "0", *common)
            assert "lane 0 offset 1 attempts 1 ValueError: needs an operator" in listed.stdout
            bad = run(str(BIN / "workshaper"), "unblock", "0", "x", "--lane", *common)
            assert bad.returncode == 2 and "'x' is not an int" in bad.stderr
            failing["on"] = False
            done = run(str(BIN / "workshaper"), "unblock", "0", "0", "--lane", *common)
            assert done.returncode == 0 and "will run again" in done.stdout
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)
