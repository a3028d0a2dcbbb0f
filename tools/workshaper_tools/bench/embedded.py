"""The seed-style Manager in one process: S1 no-op throughput and S2 (Parallel Consumer's table,
1,000 keys) on the embedded default (``redis=None``) and on a private redis-server.

``python -m workshaper_tools.bench.embedded [--backend embedded|redis|both] [--items N]``

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

from workshaper.manager import Manager
from workshaper_tools.bench.common import SEED, private_redis, say
from workshaper_tools.bench.ordering import SEED_PUBLISHED, ideal_seconds, plan_sleeps

SLOTS = 16
S1_KEYS = 1000


@contextmanager
def _target(backend: str) -> Iterator[str | None]:
    if backend == "embedded":
        yield None
        return
    with private_redis() as server:
        yield server.url


def _run(
    redis: str | None,
    items: list[tuple[Any, Any, int, int]],
    work: Any,
    max_in_queue: int,
) -> float:
    """Seconds from the first enqueue to the last ack; checks every item was acked once."""
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
        start = time.perf_counter()
        for item in items:
            m.enqueue(*item)
        if not m.flush(timeout=600):
            raise RuntimeError("flush timed out")
        elapsed = time.perf_counter() - start
        if m.total_acked != len(items):
            raise RuntimeError(f"acked {m.total_acked} of {len(items)}")
    return elapsed


def s1_items(count: int) -> list[tuple[Any, Any, int, int]]:
    rng = random.Random(SEED)
    return [(f"k{rng.randrange(S1_KEYS)}", b"x" * 100, 0, o) for o in range(count)]


def _noop(message: Any, partition: int, offset: int) -> None:
    return None


def _sleep_us(message: Any, partition: int, offset: int) -> None:
    time.sleep(int(message) / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.embedded")
    parser.add_argument("--backend", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--items", type=int, default=20000, help="S1 items")
    parser.add_argument("--only", default="s1,s2")
    args = parser.parse_args(argv)
    backends = ["embedded", "redis"] if args.backend == "both" else [args.backend]
    only = set(args.only.split(","))
    for backend in backends:
        with _target(backend) as redis:
            if "s1" in only:
                for max_in_queue in (25, 1000):
                    items = s1_items(args.items)
                    seconds = _run(redis, items, _noop, max_in_queue)
                    say(
                        f"{backend:9s} S1 no-op {len(items):,} items, {S1_KEYS} keys, "
                        f"max_in_queue {max_in_queue}: {seconds:.2f} s, "
                        f"{len(items) / seconds:,.0f} items/s"
                    )
            if "s2" in only:
                plan, sleeps = plan_sleeps(10000, "1000")
                ideal, _, _ = ideal_seconds(plan, sleeps, SLOTS)
                items = [(sub, str(us), p, o) for sub, us, p, o in plan.tuples]
                seconds = _run(redis, items, _sleep_us, 25)
                say(
                    f"{backend:9s} S2 1,000 keys, 10,000 items, max_in_queue 25: {seconds:.2f} s "
                    f"= {seconds / ideal:.2f}x ideal {ideal:.2f} s "
                    f"(seed {SEED_PUBLISHED['1000']} s)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
