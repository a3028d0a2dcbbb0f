"""Micro-benchmark of claim_sub_keys on the embedded server: its Python transcription against its
Lua, in one process (``python -m workshaper_tools.bench.claim_micro``).

    --calls N     timed calls per shape and mode (default 1000)
    --before REV  also time the transcription as it was at git revision REV (before/after in
                  the same run)
    --script      time the script alone: LuaScripts.evalsha under the store's lock, with the
                  arguments encoded beforehand (what the server spends in the script)

The shapes: claims of 1, 8 and 24 leases with a batch of 1 and of 20, every lease new (the
sub keys' lists hold 40 items each; before each call, untimed, `ready` is refilled with as many
sub keys as the claim takes and the previous leases are dropped). Only ``run_one`` of
``scripts.claim_sub_keys`` is timed (or with --script the script alone), so a call's time
includes the batch machinery, the same in every mode. The modes take turns in rounds, so the
machine's noise falls on all of them alike. Prints the median microseconds per call of each
mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from workshaper import scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper_tools.bench import micro
from workshaper_tools.bench.micro import ROUND

PKEYS = NamespaceKeys("micro").partition(0)
SUBS = [b"s%d" % i for i in range(24)]
ITEMS = 40  # per sub key's list: more than a batch
SHAPES = tuple((leases, batch) for leases in (1, 8, 24) for batch in (1, 20))

Claim = Callable[[Batch], Reply[tuple[int, list[scripts.Claimed]]]]


def _fill(backend: Backend, pkeys: PartitionKeys) -> None:
    """Every sub key's list, on an empty server."""
    client = backend.client
    client.flushall()
    for sub in SUBS:
        client.rpush(pkeys.queue(sub), *[b"%d|payload-%d" % (i, i) for i in range(ITEMS)])


def _ready(backend: Backend, pkeys: PartitionKeys, leases: int) -> None:
    """Untimed before each claim: the sub keys to lease in `ready`, none leased yet."""
    backend.client.delete(pkeys.owners, pkeys.leases)
    backend.client.rpush(pkeys.ready, *SUBS[:leases])


def _call(pkeys: PartitionKeys, leases: int, batch: int, request: str) -> Claim:
    return lambda b: scripts.claim_sub_keys(
        b,
        pkeys,
        worker_id="w",
        request_id=request,
        max_leases=leases,
        lease_ms=60_000,
        batch_size=batch,
        max_attempts=3,
        exhausted_mode="d",
    )


def _timed_round(backend: Backend, shape: tuple[int, int], first: int, script: bool) -> list[float]:
    """ROUND claims of the shape (request ids from ``first``); their times in microseconds."""
    leases, batch = shape
    times = []
    for n in range(first, first + ROUND):
        claim = _call(PKEYS, leases, batch, f"r{n}")
        _ready(backend, PKEYS, leases)
        if script:
            times.append(micro.time_script_alone(backend, micro.encoded(backend, claim)))
            continue
        start = time.perf_counter()
        run_one(backend, claim)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def run(
    calls: int, before: str | None, script: bool = False, say: Callable[[str], None] = print
) -> None:
    backends = micro.modes("claim_sub_keys", before)
    for backend in backends.values():
        _fill(backend, PKEYS)
    micro.compare(
        backends,
        SHAPES,
        lambda shape: f"{shape[0]} leases, batch {shape[1]}",
        lambda backend, shape, first: _timed_round(backend, shape, first, script),
        calls=calls,
        say=say,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = micro.arguments(__doc__, argv, calls=1000, script=True)
    run(args.calls, args.before, args.script)


if __name__ == "__main__":
    main()
