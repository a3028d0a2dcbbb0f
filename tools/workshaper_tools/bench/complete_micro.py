"""Micro-benchmark of complete_items on the embedded server: its Python transcription against
its Lua, in one process (``python -m workshaper_tools.bench.complete_micro``).

    --calls N     timed calls per scenario and mode (default 2000)
    --before REV  also time the transcription as it was at git revision REV (before/after in
                  the same run; REV must take today's arguments: the held count per lease
                  came with complete_items' top-up read)

Each call completes leases of a partition whose state is written anew before it (untimed);
only ``run_one`` of ``scripts.complete_items`` is timed, so a call's time includes the batch
machinery, the same in every mode. The modes take turns in rounds, so the machine's noise falls
on all of them alike. Prints the median microseconds per call of each mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workshaper import scripts
from workshaper.batch import run_one
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.scripts import Completion
from workshaper_tools.bench import micro
from workshaper_tools.bench.micro import ROUND

LEASE_MS = 60_000
PKEYS = NamespaceKeys("micro").partition(0)


@dataclass(frozen=True)
class Scenario:
    name: str
    leases: int
    finished: int  # items each lease finished
    queued: int  # items in each lease's queue before the call
    action: str
    batch: int = 10


SCENARIOS = (
    Scenario("1 lease, 1 item, release", 1, 1, 1, "r"),
    Scenario("8 leases, 1 item each, release", 8, 1, 1, "r"),
    Scenario("24 leases, 1 item each, release", 24, 1, 1, "r"),
    Scenario("24 leases, 1 item each, release, items left", 24, 1, 2, "r"),
    Scenario("1 lease, 20 items, continue", 1, 20, 40, "c", batch=20),
)


def _subs(scenario: Scenario) -> list[bytes]:
    return [b"s%d" % i for i in range(scenario.leases)]


def _prepare(backend: Backend, pkeys: PartitionKeys, scenario: Scenario) -> None:
    """The partition before the call: each sub key leased (token 7), its queue full."""
    subs = _subs(scenario)
    pipe = backend.client.pipeline(transaction=False)
    pipe.delete(*pkeys.fixed, *(pkeys.queue(sub) for sub in subs))
    pipe.hset(pkeys.owners, mapping={sub: b"7|-|10|3|d|w1" for sub in subs})
    pipe.zadd(pkeys.leases, dict.fromkeys(subs, 1))
    offset = 0
    heads: dict[bytes, int] = {}
    for sub in subs:
        heads[sub] = offset
        entries = [b"%d|m" % (offset + j) for j in range(scenario.queued)]
        pipe.rpush(pkeys.queue(sub), *entries)
        offset += scenario.queued
    pipe.zadd(pkeys.heads, heads)
    pipe.execute()


def _completions(scenario: Scenario) -> list[Completion]:
    completions = []
    for i, sub in enumerate(_subs(scenario)):
        first = i * scenario.queued
        offsets = list(range(first, first + scenario.finished))
        completions.append(Completion(sub, 7, scenario.action, offsets))
    return completions


def _timed_round(backend: Backend, pkeys: PartitionKeys, scenario: Scenario) -> list[float]:
    """ROUND calls, each on a freshly prepared partition; their times in microseconds."""
    completions = _completions(scenario)
    times = []
    for _ in range(ROUND):
        _prepare(backend, pkeys, scenario)
        start = time.perf_counter()
        run_one(
            backend,
            lambda b: scripts.complete_items(
                b, pkeys, completions, lease_ms=LEASE_MS, batch_size=scenario.batch
            ),
        )
        times.append((time.perf_counter() - start) * 1e6)
    return times


def run(calls: int, before: str | None, say: Callable[[str], None] = print) -> None:
    micro.compare(
        micro.modes("complete_items", before),
        SCENARIOS,
        lambda scenario: scenario.name,
        lambda backend, scenario, _first: _timed_round(backend, PKEYS, scenario),
        calls=calls,
        say=say,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = micro.arguments(__doc__, argv, calls=2000, script=False)
    run(args.calls, args.before)


if __name__ == "__main__":
    main()
