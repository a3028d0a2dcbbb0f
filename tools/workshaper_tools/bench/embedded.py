"""The seed-style Manager in one process: S1 no-op throughput and S2 (Parallel Consumer's table,
1,000 keys) on the embedded default (``redis=None``), on the former embedded backend (fakeredis)
and on a private redis-server.

``python -m workshaper_tools.bench.embedded [--backend embedded|fakeredis|redis|reference|all]
[--items N] [--rounds N] [--compare OLD_TREE] [--threads] [--machine]``

S1 here is the issue's shape for the Manager: no-op work over 1,000 sub keys, one partition,
concurrency 16, items enqueued one call each (as a seed-style program does). S2 is the same
workload as ``ordering.py`` (10,000 items, seeded 0-5 ms sleeps, 1,000 keys, 16 slots) run by
one Manager with the seed's max_in_queue of 25.

On a shared machine one run of a row can take twice as long as the next. ``--rounds N`` runs
every row N times and ends with each row's medians; ``--compare OLD_TREE`` runs each round
twice, first with the ``workshaper`` package of OLD_TREE (a ``git worktree`` of the commit
before), then with this tree's, each in a fresh process with this tree's bench, so before and
after share the machine's load, and ends with both sides' medians.

``--backend reference`` runs the same rows on ``reference.MinimalScheduler``: the least a Python
program does for the same order, acks and backpressure (no leases, retries, dead letters or
recovery). Its rows are this machine's floor for the Manager's: the Manager's distance from them
is its own cost, comparable across machines where absolute rows are not.

Before the S2 rows it prints what S2 takes with no overhead at all at each max_in_queue
(``ordering.backpressure_run``): at the seed's 25, backpressure alone keeps it ~13% above the
ideal, since room comes back only as the watermark passes items.

``--machine`` first prints what a thread hand-off costs on this machine (on one CPU, across two,
and where the scheduler puts the threads) and how fast a plain Python loop runs: the rows are
bound by hand-offs and the interpreter, and machines differ by 2x in both, so rows from
different machines compare only next to these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workshaper.connection import fakeredis_backend
from workshaper.manager import Manager
from workshaper_tools.bench.common import (
    SEED,
    output_in_tree,
    private_redis,
    say,
    thread_cpu_seconds,
)
from workshaper_tools.bench.ordering import (
    SEED_PUBLISHED,
    backpressure_run,
    ideal_seconds,
    plan_sleeps,
)
from workshaper_tools.bench.reference import run_minimal

SLOTS = 16
S1_KEYS = 1000


@contextmanager
def _target(backend: str) -> Iterator[Any]:
    if backend in ("embedded", "reference"):
        yield None
        return
    if backend == "fakeredis":  # the embedded default before workshaper.embedded
        yield fakeredis_backend()
        return
    with private_redis() as server:
        yield server.url


#: Thread names -> the part of the Manager they are (for --threads).
_ROLES = (
    ("workshaper-worker", "coordinator"),
    ("workshaper-work-", "executors"),
    ("workshaper-loop", "executors"),
    ("workshaper-ack", "ack loop"),
    ("workshaper-waker", "waker"),
    ("workshaper-enqueue", "writer"),
    ("MainThread", "enqueueing thread"),
)


#: Round trips per hand-off probe (--machine), and additions in the loop probe.
HANDOFF_ROUNDS, LOOP_ADDITIONS = 5000, 1_000_000


def handoff_round_trip_us(cpus: tuple[int, int] | None) -> float:
    """Microseconds per round trip of an item between two fresh threads through
    ``queue.SimpleQueue``: two wake-ups, as between the Manager's threads. ``cpus``: the CPU
    each thread is kept on (the same one twice, or two), set by each thread for itself only;
    None: wherever the scheduler puts them."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()
    took: list[float] = []

    def keep_on(side: int) -> None:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[side]})  # 0: the calling thread (Linux)

    def answer() -> None:
        keep_on(1)
        while (item := there.get()) is not None:
            back.put(item)

    def ask() -> None:
        try:
            keep_on(0)
            start = time.perf_counter()
            for i in range(HANDOFF_ROUNDS):
                there.put(i)
                back.get()
            took.append(time.perf_counter() - start)
        finally:
            there.put(None)  # the answering thread ends even if this one failed

    threads = [threading.Thread(target=answer), threading.Thread(target=ask)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not took:
        raise RuntimeError(f"the hand-off probe failed (CPUs {cpus})")
    return took[0] / HANDOFF_ROUNDS * 1e6


def loop_ms() -> float:
    """Milliseconds for LOOP_ADDITIONS additions in a plain Python loop."""
    start, total = time.perf_counter(), 0
    for i in range(LOOP_ADDITIONS):
        total += i
    return (time.perf_counter() - start) * 1e3


def describe_machine() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    across = (
        f", across two CPUs {handoff_round_trip_us((cpus[0], cpus[1])):.1f} us"
        if len(cpus) > 1
        else ""
    )
    return (
        f"machine: a thread hand-off round trip costs {handoff_round_trip_us(None):.1f} us"
        f" (on one CPU {handoff_round_trip_us((cpus[0], cpus[0])):.1f} us{across});"
        f" {LOOP_ADDITIONS:,} additions in a Python loop take {loop_ms():.0f} ms"
    )


def describe_floors(max_in_queues: list[int]) -> str:
    """What S2 takes with no overhead at all, per max_in_queue: backpressure alone keeps a
    small max_in_queue above the ideal (ordering.backpressure_run), so a row's distance from
    that run, not from the ideal, is what the Manager costs."""
    plan, sleeps = plan_sleeps(10000, "1000")
    ideal = ideal_seconds(plan, sleeps, SLOTS)[0]
    runs = [(m, backpressure_run(plan, sleeps, SLOTS, m)) for m in max_in_queues]
    shown = "; ".join(f"max_in_queue {m}: {run:.2f} s = {run / ideal:.2f}x" for m, run in runs)
    return f"S2 with no overhead at all (ideal {ideal:.2f} s): {shown}"


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by native id."""
    return {
        t.native_id: thread_cpu_seconds(t.native_id) for t in threading.enumerate() if t.native_id
    }


def _cpu_by_role(before: dict[int, float]) -> str:
    """CPU seconds per part of the Manager since ``before`` (threads still running)."""
    now = _thread_cpu()
    by_role: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.native_id not in now:
            continue
        role = next((r for prefix, r in _ROLES if thread.name.startswith(prefix)), "other")
        used = now[thread.native_id] - before.get(thread.native_id, 0.0)
        by_role[role] = by_role.get(role, 0.0) + used
    return ", ".join(f"{role} {cpu:.2f} s" for role, cpu in sorted(by_role.items()))


def _run(
    redis: Any,
    items: list[tuple[Any, Any, int, int]],
    work: Any,
    max_in_queue: int,
    threads: bool = False,
) -> tuple[float, float]:
    """Seconds from the first enqueue to the last ack, and this process's CPU seconds over
    that time (a busy shared machine stretches the first more than the second); checks every
    item was acked. ``threads``: also print the CPU each part of the Manager used."""
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
        per_thread = _thread_cpu() if threads else {}
        start, cpu = time.perf_counter(), time.process_time()
        for item in items:
            m.enqueue(*item)
        if not m.flush(timeout=600):
            raise RuntimeError("flush timed out")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if threads:
            say(f"  CPU by thread: {_cpu_by_role(per_thread)}")
        if m.total_acked != len(items):
            raise RuntimeError(f"acked {m.total_acked} of {len(items)}")
    return elapsed, cpu


def _run_row(
    backend: str,
    redis: Any,
    items: list[tuple[Any, Any, int, int]],
    work: Any,
    max_in_queue: int,
    *,
    threads: bool,
) -> tuple[float, float]:
    """``_run`` on a Manager, or for ``reference`` the minimal scheduler (reference.py), checked
    to have acked every partition to its last offset."""
    if backend != "reference":
        return _run(redis, items, work, max_in_queue, threads)
    seconds, cpu, acked = run_minimal(items, work, max_in_queue, SLOTS)
    last: dict[int, int] = {}
    for _, _, partition, offset in items:
        last[partition] = max(offset, last.get(partition, -1))
    if acked != last:
        raise RuntimeError(f"the reference acked {acked}, not {last}")
    return seconds, cpu


def s1_items(count: int) -> list[tuple[Any, Any, int, int]]:
    rng = random.Random(SEED)
    return [(f"k{rng.randrange(S1_KEYS)}", b"x" * 100, 0, o) for o in range(count)]


def _noop(message: Any, partition: int, offset: int) -> None:
    return None


def _sleep_us(message: Any, partition: int, offset: int) -> None:
    time.sleep(int(message) / 1e6)


#: One measured row: (name, seconds, CPU seconds, items, S2's ideal seconds or None).
Row = tuple[str, float, float, int, float | None]


def _describe(row: Row) -> str:
    name, seconds, cpu, count, ideal = row
    if ideal is None:
        return (
            f"{name}: {seconds:.2f} s, {count / seconds:,.0f} items/s, "
            f"CPU {cpu / count * 1e6:.0f} us/item"
        )
    return (
        f"{name}: {seconds:.2f} s = {seconds / ideal:.2f}x ideal {ideal:.2f} s"
        f" (seed {SEED_PUBLISHED['1000']} s), CPU {cpu:.2f} s"
    )


def _measure(args: argparse.Namespace) -> Iterator[Row]:
    backends = (
        ["reference", "fakeredis", "embedded", "redis"] if args.backend == "all" else [args.backend]
    )
    only = set(args.only.split(","))
    for backend in backends:
        with _target(backend) as redis:
            if "s1" in only:
                for max_in_queue in (25, 1000):
                    items = s1_items(args.fakeredis_items if backend == "fakeredis" else args.items)
                    seconds, cpu = _run_row(
                        backend, redis, items, _noop, max_in_queue, threads=args.threads
                    )
                    name = (
                        f"{backend:9s} S1 no-op {len(items):,} items, {S1_KEYS} keys, "
                        f"max_in_queue {max_in_queue}"
                    )
                    yield name, seconds, cpu, len(items), None
            if "s2" in only:
                plan, sleeps = plan_sleeps(10000, "1000")
                ideal, _, _ = ideal_seconds(plan, sleeps, SLOTS)
                items = [(sub, str(us), p, o) for sub, us, p, o in plan.tuples]
                for max_in_queue in map(int, args.s2_max_in_queue.split(",")):
                    seconds, cpu = _run_row(
                        backend, redis, items, _sleep_us, max_in_queue, threads=args.threads
                    )
                    name = f"{backend:9s} S2 1,000 keys, 10,000 items, max_in_queue {max_in_queue}"
                    yield name, seconds, cpu, len(items), ideal


def _round_in(tree: Path, argv: list[str]) -> list[Row]:
    """One round with ``tree``'s workshaper and this tree's bench, in a fresh process."""
    stdout = output_in_tree(tree, "workshaper_tools.bench.embedded", [*argv, "--rows-json"])
    rows: list[Row] = []
    for line in stdout.splitlines():
        if line.startswith("["):
            name, seconds, cpu, count, ideal = json.loads(line)
            rows.append((name, seconds, cpu, count, ideal))
    return rows


def _medians(label: str, rows: list[Row]) -> None:
    by_name: dict[str, list[Row]] = {}
    for row in rows:
        by_name.setdefault(row[0], []).append(row)
    for name, runs in by_name.items():
        seconds = statistics.median(r[1] for r in runs)
        cpu = statistics.median(r[2] for r in runs)
        count, ideal = runs[0][3], runs[0][4]
        speed = f"{count / seconds:,.0f} items/s" if ideal is None else f"{seconds / ideal:.2f}x"
        say(
            f"{label}median of {len(runs)}: {name}: {seconds:.2f} s ({speed}),"
            f" CPU {cpu / count * 1e6:.0f} us/item"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.embedded")
    parser.add_argument(
        "--backend",
        choices=["embedded", "fakeredis", "redis", "reference", "all"],
        default="all",
    )
    parser.add_argument("--items", type=int, default=20000, help="S1 items")
    parser.add_argument(
        "--fakeredis-items", type=int, default=2000, help="S1 items on fakeredis (it is slow)"
    )
    parser.add_argument("--only", default="s1,s2")
    parser.add_argument(
        "--s2-max-in-queue", default="25", help="S2's max_in_queue values, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every row (medians)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OLD_TREE",
        help="alternate rounds between OLD_TREE's workshaper and this tree's",
    )
    parser.add_argument(
        "--threads", action="store_true", help="print the CPU of each part's threads per row"
    )
    parser.add_argument(
        "--machine",
        action="store_true",
        help="first print this machine's thread hand-off cost and Python loop speed",
    )
    parser.add_argument("--rows-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.machine and not args.rows_json:
        say(describe_machine())
    if "s2" in args.only.split(",") and not args.rows_json:
        say(describe_floors([int(m) for m in args.s2_max_in_queue.split(",")]))
    if args.compare is not None:
        here = Path(__file__).resolve().parents[3]
        passed = list(argv if argv is not None else sys.argv[1:])
        child = _without_options(passed, {"--compare": 1, "--rounds": 1, "--machine": 0})
        sides: dict[str, list[Row]] = {"before": [], "after": []}
        for number in range(1, args.rounds + 1):
            for side, tree in (("before", args.compare.resolve()), ("after", here)):
                for row in _round_in(tree, child):
                    sides[side].append(row)
                    say(f"round {number} {side:6s} {_describe(row)}")
        for side, side_rows in sides.items():
            _medians(f"{side:6s} ", side_rows)
        return 0
    measured: list[Row] = []
    for _ in range(args.rounds):
        for row in _measure(args):
            measured.append(row)
            say(json.dumps(row) if args.rows_json else _describe(row))
    if args.rounds > 1 and not args.rows_json:
        _medians("", measured)
    return 0


def _without_options(argv: list[str], drop: dict[str, int]) -> list[str]:
    """``argv`` without the options in ``drop`` (option -> how many values follow it)."""
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in drop:
            skip = drop[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
