"""Peers a Python user would pick instead: Dramatiq and RQ, same no-op work, same Redis.

Each peer runs on the bench's private redis-server in the same run as S1, with 2 worker
processes (Dramatiq: 8 threads each, like WorkShaper's concurrency), from the first enqueue to
the last job done, using each library's fastest documented enqueue path (Dramatiq ``send`` per
message; RQ ``enqueue_many`` in a pipeline). Neither keeps order per key nor acks watermarks.
Rows:
    Dramatiq             RedisBroker, ``dramatiq -p 2 -t 8``
    RQ (SimpleWorker)    ``rq worker -w rq.worker.SimpleWorker`` x 2 (no fork per job)
    RQ (default Worker)  ``rq worker`` x 2: forks a work horse per job, as RQ ships

Only present where the packages are installed (``scripts/bench`` puts them in .venv-bench).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper_tools.bench.common import BenchFailure, bench_env, private_redis, say
from workshaper_tools.bench.peer_jobs import DIRECT_KEY, DIRECT_LAST_KEY, DONE_KEY, WARM_KEY

BATCH = 1000


def available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass
class PeerResult:
    name: str
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def _progress(client: redis.Redis) -> tuple[int, float]:
    count, last = 0, 0.0
    for value in client.hvals(DONE_KEY):
        c, t = value.split()
        count += int(c)
        last = max(last, float(t))
    count += int(client.hget(DIRECT_KEY, "count") or 0)
    direct_last = client.zscore(DIRECT_LAST_KEY, "last")
    if direct_last is not None:
        last = max(last, direct_last)
    return count, last


def _start(argv: list[str], url: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bench_env(WS_PEER_REDIS_URL=url, **env),
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def _measure(
    name: str,
    client: redis.Redis,
    *,
    count: int,
    processes: int,
    send_warm: Any,
    send_all: Any,
    timeout: float,
) -> PeerResult:
    deadline = time.monotonic() + 120
    while client.scard(WARM_KEY) < processes:
        if time.monotonic() > deadline:
            raise BenchFailure(f"{name}: workers did not start")
        send_warm()
        time.sleep(0.3)
    time.sleep(0.5)  # let the warm-up jobs drain
    client.delete(DONE_KEY, DIRECT_KEY, DIRECT_LAST_KEY)
    started = time.monotonic()
    send_all()
    deadline = time.monotonic() + timeout
    done, last = _progress(client)
    while done < count:
        if time.monotonic() > deadline:
            raise BenchFailure(f"{name}: {done} of {count} jobs done after {timeout}s")
        time.sleep(0.01)
        done, last = _progress(client)
    result = PeerResult(name, count, last - started)
    say(f"  {name:<22} {result.rate:9,.0f} jobs/s ({count} jobs in {result.seconds:.2f} s)")
    return result


def run_dramatiq(url: str, count: int, processes: int, threads: int, log_dir: Path) -> PeerResult:
    client = redis.Redis.from_url(url)
    os.environ["WS_PEER_REDIS_URL"] = url
    app: Any = importlib.import_module("workshaper_tools.bench.peer_dramatiq")
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workshaper_tools.bench.peer_dramatiq",
        "-p",
        str(processes),
        "-t",
        str(threads),
        "--skip-logging",
    ]
    procs = [_start(argv, url, log_dir / "dramatiq.log")]
    try:

        def warm() -> None:
            for _ in range(processes * threads * 2):
                app.noop.send("warm")

        def send_all() -> None:
            for i in range(count):
                app.noop.send(i)

        return _measure(
            "Dramatiq",
            client,
            count=count,
            processes=processes,
            send_warm=warm,
            send_all=send_all,
            timeout=600,
        )
    finally:
        _stop(procs)
        client.close()


def run_rq(url: str, count: int, processes: int, simple: bool, log_dir: Path) -> PeerResult:
    rq: Any = importlib.import_module("rq")
    client = redis.Redis.from_url(url)
    queue = rq.Queue("bench", connection=client)
    rq_bin = str(Path(sys.executable).parent / "rq")
    argv = [rq_bin, "worker", "--url", url, "-q", "bench"]
    if simple:
        argv[2:2] = ["-w", "rq.worker.SimpleWorker"]
    name = "RQ (SimpleWorker)" if simple else "RQ (default Worker)"
    env = {} if simple else {"WS_PEER_DIRECT": "1"}
    procs = [
        _start(argv, url, log_dir / f"rq-{'simple' if simple else 'fork'}-{i}.log", **env)
        for i in range(processes)
    ]
    func = "workshaper_tools.bench.peer_jobs.rq_noop"
    try:

        def warm() -> None:
            for _ in range(processes * 2):
                queue.enqueue(func, "warm")

        def send_all() -> None:
            for start in range(0, count, BATCH):
                pipe = client.pipeline()
                jobs = [
                    rq.Queue.prepare_data(func, args=(i,), result_ttl=0)
                    for i in range(start, min(start + BATCH, count))
                ]
                queue.enqueue_many(jobs, pipeline=pipe)
                pipe.execute()

        return _measure(
            name,
            client,
            count=count,
            processes=processes,
            send_warm=warm,
            send_all=send_all,
            timeout=600,
        )
    finally:
        _stop(procs)
        client.close()


def scenario_peers(args: Any, log_dir: Path, s1: dict[str, Any] | None) -> dict[str, Any]:
    say("Peers: same no-op work on the same kind of private Redis, 2 worker processes")
    rows: list[dict[str, Any]] = []
    missing = [n for n in ("dramatiq", "rq") if not available(n)]
    if missing:
        say(f"  skipped {', '.join(missing)}: not installed (scripts/bench installs them)")
    plans: list[tuple[str, Callable[[str], PeerResult]]] = []
    if "dramatiq" not in missing:
        plans.append(
            ("Dramatiq", lambda url: run_dramatiq(url, args.dramatiq_items, 2, 8, log_dir))
        )
    if "rq" not in missing:
        plans.append(
            ("RQ (SimpleWorker)", lambda url: run_rq(url, args.rq_items, 2, True, log_dir))
        )
        plans.append(
            ("RQ (default Worker)", lambda url: run_rq(url, args.rq_fork_items, 2, False, log_dir))
        )
    for _, run in plans:
        with private_redis() as server:
            result = run(server.url)
        rows.append({"name": result.name, "items": result.items, "rate": result.rate})
    ws_rate = s1["workshaper_rate"] if s1 else None
    base_rate = s1["baseline_rate"] if s1 else None
    for row in rows:
        row["vs_workshaper"] = ws_rate / row["rate"] if ws_rate else None
        row["vs_baseline"] = row["rate"] / base_rate if base_rate else None
        if ws_rate:
            say(f"  WorkShaper is {row['vs_workshaper']:.1f}x {row['name']}")
    return {
        "rows": rows,
        "skipped": missing,
        "workshaper_rate": ws_rate,
        "baseline_rate": base_rate,
    }
