"""The seed-style Manager in one process: S1 no-op throughput and S2 (Parallel Consumer's table,
1,000 keys) on the embedded default (``redis=None``), on the former embedded backend (fakeredis)
and on a private redis-server.

``python -m workshaper_tools.bench.embedded [--backend embedded|fakeredis|redis|all] [--items N]``

S1 here is the issue's shape for the Manager: no-op work over 1,000 sub keys, one partition,
concurrency 16, items enqueued one call each (as a seed-style program does). S2 is the same
workload as ``ordering.py`` (10,000 items, seeded 0-5 ms sleeps, 1,000 keys, 16 slots) run by
one Manager with the seed's max_in_queue of 25.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workshaper.connection import fakeredis_backend
from workshaper.manager import Manager
from workshaper_tools.bench.common import SEED, private_redis, say
from workshaper_tools.bench.ordering import SEED_PUBLISHED, ideal_seconds, plan_sleeps

SLOTS = 16
S1_KEYS = 1000


@contextmanager
def _target(backend: str) -> Iterator[Any]:
    if backend == "embedded":
        yield None
        return
    if backend == "fakeredis":  # the embedded default before workshaper.embedded
        yield fakeredis_backend()
        return
    with private_redis() as server:
        yield server.url


def _run(
    redis: Any,
    items: list[tuple[Any, Any, int, int]],
    work: Any,
    max_in_queue: int,
) -> tuple[float, float]:
    """Seconds from the first enqueue to the last ack, and this process's CPU seconds over
    that time (a busy shared machine stretches the first more than the second); checks every
    item was acked."""
    acked: dict[int, int] = {}
    lock = threading.Lock()

    def ack(partition: int, offset: int) -> None:
        with lock:
            acked[partition] = offset

    with Manager(
        work=work,
        ack=ack,
        max_in_queue=max_in_queue,
        redis=redis,
        namespace=f"bench-emb-{random.Random().randrange(10**9)}",
        concurrency=SLOTS,
    ) as m:
        start, cpu = time.perf_counter(), time.process_time()
        for item in items:
            m.enqueue(*item)
        if not m.flush(timeout=600):
            raise RuntimeError("flush timed out")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if m.total_acked != len(items):
            raise RuntimeError(f"acked {m.total_acked} of {len(items)}")
    return elapsed, cpu


def s1_items(count: int) -> list[tuple[Any, Any, int, int]]:
    rng = random.Random(SEED)
    return [(f"k{rng.randrange(S1_KEYS)}", b"x" * 100, 0, o) for o in range(count)]


def _noop(message: Any, partition: int, offset: int) -> None:
    return None


def _sleep_us(message: Any, partition: int, offset: int) -> None:
    time.sleep(int(message) / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.embedded")
    parser.add_argument(
        "--backend", choices=["embedded", "fakeredis", "redis", "all"], default="all"
    )
    parser.add_argument("--items", type=int, default=20000, help="S1 items")
    parser.add_argument(
        "--fakeredis-items", type=int, default=2000, help="S1 items on fakeredis (it is slow)"
    )
    parser.add_argument("--only", default="s1,s2")
    parser.add_argument(
        "--s2-max-in-queue", default="25", help="S2's max_in_queue values, comma-separated"
    )
    args = parser.parse_args(argv)
    backends = ["fakeredis", "embedded", "redis"] if args.backend == "all" else [args.backend]
    only = set(args.only.split(","))
    for backend in backends:
        with _target(backend) as redis:
            if "s1" in only:
                for max_in_queue in (25, 1000):
                    items = s1_items(args.fakeredis_items if backend == "fakeredis" else args.items)
                    seconds, cpu = _run(redis, items, _noop, max_in_queue)
                    say(
                        f"{backend:9s} S1 no-op {len(items):,} items, {S1_KEYS} keys, "
                        f"max_in_queue {max_in_queue}: {seconds:.2f} s, "
                        f"{len(items) / seconds:,.0f} items/s, "
                        f"CPU {cpu / len(items) * 1e6:.0f} us/item"
                    )
            if "s2" in only:
                plan, sleeps = plan_sleeps(10000, "1000")
                ideal, _, _ = ideal_seconds(plan, sleeps, SLOTS)
                items = [(sub, str(us), p, o) for sub, us, p, o in plan.tuples]
                for max_in_queue in map(int, args.s2_max_in_queue.split(",")):
                    seconds, cpu = _run(redis, items, _sleep_us, max_in_queue)
                    say(
                        f"{backend:9s} S2 1,000 keys, 10,000 items, max_in_queue {max_in_queue}:"
                        f" {seconds:.2f} s = {seconds / ideal:.2f}x ideal {ideal:.2f} s"
                        f" (seed {SEED_PUBLISHED['1000']} s), CPU {cpu:.2f} s"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
