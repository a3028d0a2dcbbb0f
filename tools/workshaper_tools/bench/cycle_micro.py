"""One item's cycle through the embedded backend's partition operations, on one thread: the
enqueue of one item, the claim of its sub key, the completion of that lease and an offer of the
watermark, each its own batch, as the Manager makes them at max_in_queue 25 (a call carries
one item or a few). What every call costs before any thread hand-off, with far less noise than
the Manager's rows (``python -m workshaper_tools.bench.cycle_micro``).

    --cycles N          cycles per timing (default 1000); a run is 300 untimed cycles, then
                        5 timings, of which it reports the best
    --runs N            runs, each on a new backend (default 5)
    --compare OLD_TREE  alternate runs of OLD_TREE's workshaper and this tree's, each in a fresh
                        process, and print both sides' best
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from workshaper import scripts
from workshaper.batch import Batch
from workshaper.codec import encode_item
from workshaper.connection import Backend, embedded_backend
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.scripts import Completion, EncodedItem
from workshaper_tools.bench.common import output_in_tree

WARM_UP = 300
#: Timings per run; the best counts.
CHUNKS = 5
KEYS = 1000
LEASE_MS = 30_000


def _cycle(backend: Backend, pkeys: PartitionKeys, i: int) -> None:
    _, sub, offset, entry = encode_item(f"k{i % KEYS}", b"x" * 10, 0, i, 1 << 20)
    batch = Batch(backend)
    queued = scripts.enqueue_items(
        batch, pkeys, [EncodedItem(sub, offset, entry)], 1 << 30, f"r{i}", expected_highest=i - 1
    )
    batch.execute()
    queued.get()
    batch = Batch(backend)
    claim = scripts.claim_sub_keys(
        batch,
        pkeys,
        worker_id="w",
        request_id=f"c{i}",
        max_leases=1,
        lease_ms=LEASE_MS,
        batch_size=100,
        max_attempts=3,
        exhausted_mode="d",
    )
    batch.execute()
    (lease,) = claim.get()[1]
    batch = Batch(backend)
    done = scripts.complete_items(
        batch,
        pkeys,
        [Completion(lease.sub, lease.token, "c", [offset], False)],
        lease_ms=LEASE_MS,
        batch_size=100,
    )
    batch.execute()
    done.get()
    batch = Batch(backend)
    offer = scripts.offer_watermark(batch, pkeys, False)
    batch.execute()
    offer.get()


def run(cycles: int, chunks: int = CHUNKS) -> float:
    """Microseconds per cycle: the best of ``chunks`` timings of ``cycles`` cycles each, on a
    new embedded backend (the best, as a shared machine only ever adds time)."""
    backend = embedded_backend()
    pkeys = NamespaceKeys("cycle").partition(0)
    for item in range(WARM_UP):
        _cycle(backend, pkeys, item)
    best = float("inf")
    for chunk in range(chunks):
        first = WARM_UP + chunk * cycles  # every item a new offset
        gc.collect()
        start = time.perf_counter()
        for item in range(first, first + cycles):
            _cycle(backend, pkeys, item)
        best = min(best, (time.perf_counter() - start) / cycles * 1e6)
    return best


def _run_in(tree: Path, cycles: int) -> float:
    """One run with ``tree``'s workshaper and this tree's bench, in a fresh process."""
    argv = ["--cycles", str(cycles), "--runs", "1", "--json"]
    stdout = output_in_tree(tree, "workshaper_tools.bench.cycle_micro", argv)
    return float(json.loads(stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.cycle_micro")
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, metavar="OLD_TREE")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare is None:
        times = [run(args.cycles) for _ in range(args.runs)]
        if args.json:
            print(json.dumps(min(times)))
        else:
            for us in times:
                print(f"{us:.1f} us per cycle")
            print(f"best of {args.runs}: {min(times):.1f} us per cycle")
        return 0
    here = Path(__file__).resolve().parents[3]
    sides: dict[str, list[float]] = {"before": [], "after": []}
    for number in range(1, args.runs + 1):
        for side, tree in (("before", args.compare.resolve()), ("after", here)):
            us = _run_in(tree, args.cycles)
            sides[side].append(us)
            print(f"run {number} {side:6s} {us:.1f} us per cycle")
    for side, times in sides.items():
        print(f"{side:6s} best of {len(times)}: {min(times):.1f} us per cycle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
