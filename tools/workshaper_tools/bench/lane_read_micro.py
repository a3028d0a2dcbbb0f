"""What a lanes worker spends per item to read its entries: in-process, no Redis, no threads.

A lane's window reads each entry as it arrives (offset, the item's own sub key), hands out
runs of its sub keys, and the executor decodes each item of a run (offset, sub key, message).
This loop does exactly those three steps for ``--entries`` keyed entries of ``--sub-keys``
random sub keys (seeded), in runs of up to ``--run-sub-keys`` sub keys, and prints the best
of ``--rounds`` rounds in microseconds per item. The executor's decoding is the one of the
tree on ``sys.path``: a run's ``item_reader`` where it has one, else what the executor did
before it had (``decode_lane_item`` for a run of several sub keys, the plain entry split for
a run of one), so two trees compare with the same command:

    PYTHONPATH=<tree> python -m workshaper_tools.bench.lane_read_micro
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from workshaper import codec
from workshaper.worker.lanes import LaneWindow, Run


class _Lease:
    """What LaneWindow.take_run reads of a lane's lease."""

    partition, token, stop, lost, valid_until = 0, 1, False, False, 1e18


def entries_of(count: int, sub_keys: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    message = codec.encode_message(b"x" * 90, 1000)
    return [
        codec.keyed_entry(i, codec.encode_sub_key(f"k{rng.randrange(sub_keys)}", i), message)
        for i in range(count)
    ]


def _decoder(run: Run) -> Callable[[int], Any]:
    reader = getattr(run, "item_reader", None)
    if reader is not None:
        return reader  # type: ignore[no-any-return]
    raws = [slot.raw for slot in run.slots]
    if isinstance(run.sub_key, codec.Lane):
        return lambda index: codec.decode_lane_item(raws[index])

    def plain(index: int) -> Any:
        head, _, payload = raws[index].partition(b"|")
        return int(head), run.sub_key, codec.decode_message(payload)

    return plain


def one_round(entries: list[bytes], run_sub_keys: int) -> float:
    """Seconds per item for reading, taking and decoding every entry once."""
    window = LaneWindow()
    lane = codec.Lane(0)
    began = time.perf_counter()
    window.add(entries)
    decoded = 0
    while window.runnable:
        run, _ = window.take_run(_Lease(), lane, sub_keys=run_sub_keys)
        decode = _decoder(run)
        for index in range(len(run.slots)):
            decode(index)
        decoded += len(run.slots)
    elapsed = time.perf_counter() - began
    if decoded != len(entries):
        raise AssertionError(f"decoded {decoded} of {len(entries)} entries")
    return elapsed / decoded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--sub-keys", type=int, default=1_000)
    parser.add_argument("--run-sub-keys", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    entries = entries_of(args.entries, args.sub_keys, args.seed)
    best = min(one_round(entries, args.run_sub_keys) for _ in range(args.rounds))
    print(
        f"{best * 1e6:.3f} us per item ({args.entries:,} entries, {args.sub_keys:,} sub keys,"
        f" runs of up to {args.run_sub_keys}; best of {args.rounds})"
    )


if __name__ == "__main__":
    main()
