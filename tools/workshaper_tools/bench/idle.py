"""S6 idle fleet: what W idle ``workshaper-worker`` processes on P partitions cost Redis.

Each row starts a private redis-server, makes P partitions exist (one item each, run and
acked), starts W worker processes, lets them settle, then reads ``INFO commandstats`` and
``INFO cpu`` before and after a window in which nothing is enqueued. Commands are counted the
way commandstats counts them: a script call once, plus every command it ran.

    python -m workshaper_tools.bench.idle --workers 1,5,20 --partitions 16,64,256 [--compare REF]

``--compare REF`` measures the same rows with the workers of git revision REF (exported with
``git archive``, run with that tree first on ``PYTHONPATH``), in the same run, before the
working tree's: the before/after table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workshaper.keys import NamespaceKeys
from workshaper.producer import Producer
from workshaper_tools.bench.common import (
    BenchFailure,
    RedisCost,
    RedisSnapshot,
    private_redis,
    say,
    worker_command,
)
from workshaper_tools.bench.compare import REPO, TOOLS_ROOT, export
from workshaper_tools.testing import stop_processes

NAMESPACE = "idle"
#: Seconds after every worker registered before the window starts (first scans, elections).
SETTLE_SECONDS = 3.0


@dataclass
class IdleCost:
    workers: int
    partitions: int
    window: float
    cost: RedisCost
    label: str = ""
    by_command: dict[str, float] = field(default_factory=dict)

    @property
    def commands_per_second(self) -> float:
        """Every command Redis ran, counting the ones scripts ran (as commandstats does)."""
        return self.cost.all_calls / self.window

    @property
    def script_calls_per_second(self) -> float:
        """Script calls (EVALSHA / EVAL), each counted once."""
        return (self.cost.calls.get("evalsha", 0) + self.cost.calls.get("eval", 0)) / self.window

    @property
    def cpu_ms_per_second(self) -> float:
        """Redis CPU (user + sys) in ms per second: 10 ms/s is 1% of a core."""
        return 1000 * self.cost.cpu_seconds / self.window


@contextlib.contextmanager
def idle_workers(
    url: str, workers: int, *, lease: float, log_dir: Path, pythonpath: str | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """W ``workshaper-worker`` processes running the bench's no-op handler, stopped after.
    With ``pythonpath``, the workers run the code of its first tree: that tree comes first on
    their path and is their working directory (``python -c`` puts the working directory before
    everything else on the path: without it, the working tree's workers were measured twice)."""
    env = dict(os.environ, WS_BENCH_DIR=str(log_dir))
    cwd = None
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
        cwd = pythonpath.split(os.pathsep)[0]
    argv = [
        *worker_command(),
        "workshaper_tools.bench.handlers:noop",
        "--redis",
        url,
        "--namespace",
        NAMESPACE,
        "--lease",
        str(lease),
        "--log-level",
        "WARNING",
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(workers):
            with (log_dir / f"idle-worker-{i}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
                )
        yield procs
    finally:
        stop_processes(procs)


def _wait_registered(
    client: redis.Redis, workers: int, procs: Sequence[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + 120
    key = NamespaceKeys(NAMESPACE).workers
    while client.hlen(key) < workers:
        if any(p.poll() is not None for p in procs):
            raise BenchFailure("an idle worker exited at start (see its log)")
        if time.monotonic() > deadline:
            raise BenchFailure(f"{workers} workers not registered in 120 s")
        time.sleep(0.05)


def measure(
    workers: int,
    partitions: int,
    *,
    window: float = 10.0,
    lease: float = 30.0,
    log_dir: Path,
    pythonpath: str | None = None,
    label: str = "",
) -> IdleCost:
    """One row: W idle workers on P partitions, commands and CPU over ``window`` seconds."""
    with private_redis() as server:
        client = redis.Redis.from_url(server.url)
        try:
            with idle_workers(
                server.url, workers, lease=lease, log_dir=log_dir, pythonpath=pythonpath
            ) as procs:
                _wait_registered(client, workers, procs)
                producer = Producer(server.url, NAMESPACE)
                try:
                    producer.enqueue_many([(0, b"x", p, 0) for p in range(partitions)])
                    if not producer.flush(timeout=120):
                        raise BenchFailure(f"{partitions} items not finished in 120 s")
                finally:
                    producer.close()
                time.sleep(SETTLE_SECONDS)
                before = RedisSnapshot.take(client)
                time.sleep(window)
                after = RedisSnapshot.take(client)
                if any(p.poll() is not None for p in procs):
                    raise BenchFailure("an idle worker exited during the window (see its log)")
        finally:
            client.close()
    cost = RedisCost.between(before, after)
    by_command = {k: v / window for k, v in sorted(cost.calls.items(), key=lambda kv: -kv[1])}
    return IdleCost(workers, partitions, window, cost, label, by_command)


def export_tree(ref: str) -> Path:
    """REF's files in a temp dir (``git archive``), to run its workers."""
    return export(ref, REPO)


def markdown(rows: Sequence[IdleCost]) -> str:
    lines = [
        "| code | workers | partitions | commands/s | script calls/s | Redis CPU ms/s | most run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        top = ", ".join(f"{k} {v:,.0f}" for k, v in list(r.by_command.items())[:4])
        lines.append(
            f"| {r.label} | {r.workers} | {r.partitions} | {r.commands_per_second:,.0f} | "
            f"{r.script_calls_per_second:,.0f} | {r.cpu_ms_per_second:.1f} | {top} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.idle", description=__doc__)
    p.add_argument("--workers", default="1,5,20", help="comma-separated worker counts")
    p.add_argument("--partitions", default="16,64,256", help="comma-separated partition counts")
    p.add_argument("--window", type=float, default=10.0, help="seconds measured per row")
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--compare", metavar="REF", default=None, help="also measure git REF first")
    args = p.parse_args(argv)
    grid = [(w, q) for w in _ints(args.workers) for q in _ints(args.partitions)]
    log_dir = Path(tempfile.mkdtemp(prefix="ws-bench-idle-"))
    rows: list[IdleCost] = []
    sides: list[tuple[str, str | None]] = [("this tree", None)]
    tree: Path | None = None
    if args.compare:
        tree = export_tree(args.compare)
        # REF's workshaper, with this bench's handlers (tools/) after it on the path.
        sides.insert(0, (args.compare, os.pathsep.join([str(tree), str(TOOLS_ROOT)])))
    try:
        for w, q in grid:
            for label, path in sides:
                row = measure(
                    w,
                    q,
                    window=args.window,
                    lease=args.lease,
                    log_dir=log_dir,
                    pythonpath=path,
                    label=label,
                )
                say(
                    f"{label}: {w} workers x {q} partitions: {row.commands_per_second:,.0f} "
                    f"commands/s, {row.cpu_ms_per_second:.1f} ms CPU/s"
                )
                rows.append(row)
    except BenchFailure as exc:
        say(f"S6 FAILED: {exc} (logs in {log_dir})")
        sys.exit(1)
    finally:
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)
    say("")
    say(markdown(rows))


if __name__ == "__main__":
    main()
