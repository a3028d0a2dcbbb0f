"""CPU per item, A/B: the same measurement alternately on two source trees, medians.

``python -m workshaper_tools.bench.cpu_ab --rounds 3 OLD_TREE NEW_TREE`` (make a tree with
``git worktree add /tmp/old REV``). CPU time per item (process time of the producer and worker
process, Redis ``used_cpu_*``) moves far less with machine noise than wall-clock rates, so this
is how the core optimizations in docs/benchmarks.md were measured. Two measurements:

- ``batch``: 60,000 no-op items of 100 bytes, 8 partitions, 1,000 sub keys, enqueued with
  ``enqueue_many`` (1,000 per call), then drained by one in-process Worker (concurrency 16)
  with the producer's ack loop running: enqueue Python/Redis us per item, drain Python/Redis us
  per item, Redis bytes per queued item.
- ``lease``: 20,000 items with ``sub_key=None`` (one lease per item), concurrency 8: Python and
  Redis us per lease, leases per second.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

MEASUREMENTS = ("batch", "lease")


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_batch() -> dict[str, float]:
    import workshaper  # noqa: PLC0415 - imported from the tree under test
    from workshaper_tools.testing import RedisServer  # noqa: PLC0415

    n = 60_000
    rng = random.Random(1)
    offsets = [0] * 8
    items = []
    for i in range(n):
        p = i % 8
        items.append((rng.randrange(1000), b"x" * 100, p, offsets[p]))
        offsets[p] += 1
    with RedisServer() as server:
        client = server.client()
        with workshaper.Producer(server.url, "ab", max_in_queue=10**7) as producer:
            mem0 = client.info("memory")["used_memory"]
            py0, r0 = time.process_time(), _redis_cpu(client)
            for start in range(0, n, 1000):
                producer.enqueue_many(items[start : start + 1000])
            py1, r1 = time.process_time(), _redis_cpu(client)
            mem1 = client.info("memory")["used_memory"]
            worker = workshaper.Worker(
                server.url, "ab", work=lambda m, p, o: None, concurrency=16
            ).start()
            assert producer.flush(600)
            py2, r2 = time.process_time(), _redis_cpu(client)
            worker.stop(10)
    return {
        "enqueue_python_us": 1e6 * (py1 - py0) / n,
        "enqueue_redis_us": 1e6 * (r1 - r0) / n,
        "drain_python_us": 1e6 * (py2 - py1) / n,
        "drain_redis_us": 1e6 * (r2 - r1) / n,
        "redis_bytes_per_queued_item": (mem1 - mem0) / n,
    }


def measure_lease() -> dict[str, float]:
    import workshaper  # noqa: PLC0415
    from workshaper_tools.testing import RedisServer  # noqa: PLC0415

    n = 20_000
    items = [(None, b"x" * 100, 0, o) for o in range(n)]
    with RedisServer() as server:
        client = server.client()
        with workshaper.Producer(server.url, "ab", max_in_queue=10**7) as producer:
            for start in range(0, n, 1000):
                producer.enqueue_many(items[start : start + 1000])
            py0, r0, t0 = time.process_time(), _redis_cpu(client), time.perf_counter()
            worker = workshaper.Worker(
                server.url, "ab", work=lambda m, p, o: None, concurrency=8
            ).start()
            assert producer.flush(600)
            py1, r1, t1 = time.process_time(), _redis_cpu(client), time.perf_counter()
            worker.stop(10)
    return {
        "python_us_per_lease": 1e6 * (py1 - py0) / n,
        "redis_us_per_lease": 1e6 * (r1 - r0) / n,
        "leases_per_second": n / (t1 - t0),
    }


def run_tree(tree: str, which: str) -> dict[str, float]:
    """Run one measurement in a fresh interpreter that imports workshaper from ``tree``. This
    file runs as a script (``-P``: its own folder stays off ``sys.path``), so older trees
    without it can be measured too."""
    done = subprocess.run(
        [sys.executable, "-P", os.path.abspath(__file__), "--measure", which],
        env=dict(os.environ, PYTHONPATH=tree),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measurement on {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.cpu_ab")
    parser.add_argument("trees", nargs="*", metavar="TREE", help="before and after source trees")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=MEASUREMENTS, default=None)
    parser.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process of run_tree
        measure = measure_batch if args.measure == "batch" else measure_lease
        print(json.dumps(measure()))
        return
    if len(args.trees) != 2:
        parser.error("give two trees: before and after")
    for which in [args.only] if args.only else MEASUREMENTS:
        runs: dict[str, list[dict[str, float]]] = {tree: [] for tree in args.trees}
        for _ in range(args.rounds):
            for tree in args.trees:  # alternate, so drifting noise hits both sides alike
                runs[tree].append(run_tree(tree, which))
        before, after = args.trees
        print(f"\n{which} (median of {args.rounds} alternating rounds)")
        print(f"| metric | before ({before}) | after ({after}) | after / before |")
        print("|---|---:|---:|---:|")
        for key in runs[before][0]:
            b = statistics.median(r[key] for r in runs[before])
            a = statistics.median(r[key] for r in runs[after])
            print(f"| {key} | {b:.2f} | {a:.2f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
