"""Micro-benchmark of enqueue_items on the embedded server: its Python transcription against its
Lua, in one process (``python -m workshaper_tools.bench.enqueue_micro``).

    --calls N     timed calls per shape and mode (default 1000)
    --before REV  also time the transcription as it was at git revision REV (before/after in
                  the same run)
    --script      time the script alone: LuaScripts.evalsha under the store's lock, with the
                  arguments encoded beforehand (what the server spends in the script)

The shapes are the Manager's: calls of 1, 25 and 256 items, one new sub key per item, offsets
above every accepted one (the script's fast path); and 25 items half of which were sent before
(the general path: duplicates decided one by one). Only ``run_one`` of
``scripts.enqueue_items`` is timed (or with --script the script alone), so a call's time
includes the batch machinery, the same in every mode. Every mode's server starts each round of
calls empty (untimed FLUSHALL, the scripts stay loaded), and the modes take turns in rounds, so
the machine's noise falls on all of them alike. Prints the median microseconds per call of each
mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workshaper import codec, scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.scripts import EncodedItem
from workshaper_tools.bench import micro
from workshaper_tools.bench.micro import ROUND

PKEYS = NamespaceKeys("micro").partition(0)
MAX_IN_QUEUE = 10**9
MESSAGE = codec.encode_message("m", 100)


@dataclass(frozen=True)
class Shape:
    name: str
    items: int
    resent: int = 0  # items of each call sent already by the call before (duplicates)


SHAPES = (
    Shape("1 item", 1),
    Shape("25 items, 25 sub keys", 25),
    Shape("256 items, 256 sub keys", 256),
    Shape("25 items, 12 of them duplicates", 25, resent=12),
)


def _calls(shape: Shape) -> list[list[EncodedItem]]:
    """ROUND calls of the shape, offsets increasing from 0 (a duplicate is an item of the call
    before, sent again at the head of the call)."""
    calls: list[list[EncodedItem]] = []
    offset = 0
    for _ in range(ROUND):
        fresh = []
        for _ in range(shape.items - (shape.resent if calls else 0)):
            sub = codec.encode_sub_key(f"s{offset}", offset)
            fresh.append(EncodedItem(sub, offset, codec.make_entry(offset, MESSAGE)))
            offset += 1
        again = calls[-1][-shape.resent :] if calls and shape.resent else []
        calls.append([*again, *fresh])
    return calls


def _timed_round(calls: list[list[EncodedItem]], backend: Backend, script: bool) -> list[float]:
    """The calls on an empty partition; their times in microseconds."""
    backend.client.flushall()
    times = []
    for n, items in enumerate(calls):
        call = _call(PKEYS, items, f"r{n}")
        if script:
            times.append(micro.time_script_alone(backend, micro.encoded(backend, call)))
            continue
        start = time.perf_counter()
        run_one(backend, call)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def _call(
    pkeys: PartitionKeys, items: list[EncodedItem], request: str
) -> Callable[[Batch], Reply[list[int]]]:
    return lambda b: scripts.enqueue_items(b, pkeys, items, MAX_IN_QUEUE, request)


def run(
    calls: int, before: str | None, script: bool = False, say: Callable[[str], None] = print
) -> None:
    work = {shape: _calls(shape) for shape in SHAPES}
    micro.compare(
        micro.modes("enqueue_items", before),
        SHAPES,
        lambda shape: shape.name,
        lambda backend, shape, _first: _timed_round(work[shape], backend, script),
        calls=calls,
        say=say,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = micro.arguments(__doc__, argv, calls=1000, script=True)
    run(args.calls, args.before, args.script)


if __name__ == "__main__":
    main()
