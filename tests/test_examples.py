"""The runnable examples in docs/examples run and print what they promise."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from workshaper_tools.testing import RedisServer

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_seed_style_example() -> None:
    out = run_example("seed_style.py")
    assert "enqueued 200, acked 200" in out
    assert "acked watermarks: {0: 99, 1: 99}" in out
    assert "'acct-0': 29" in out and "'acct-6': 28" in out


def test_producer_and_workers_example(redis_server: RedisServer) -> None:
    out = run_example("producer_and_workers.py", redis_server.url)
    assert "accepted 300 items" in out
    [line] = [x for x in out.splitlines() if x.startswith("re-enqueued 30:")]
    statuses = set(ast.literal_eval(line.split(":", 1)[1].strip()))
    assert statuses and statuses <= {"ALREADY_ACKED", "DUPLICATE"}  # never run twice
    assert "watermarks: [99, 99, 99]" in out
    assert "rows written: 300" in out
