"""Redis's time in the hot scripts per item (by default at one sub key per item), script by
script, for the scripts of several git revisions in one run
(``python -m workshaper_tools.bench.lua_cost``).

    REV ...        git revisions whose workshaper/lua to run ("WT": the working tree's files)
    --rounds N     rounds (default 16); each round runs every revision in turn (every other
                   round in reverse order), so the machine's noise falls on all of them alike
    --items N      items per round (default 2,000)
    --sub-keys N   item i goes to sub key i % N (default: one sub key per item): an enqueue
                   after the first N items finds its sub keys' lists there already (at most
                   100 items per sub key: a lease is handed them all at once)
    --per-call N   items per enqueue call (default 1,000, as enqueue_many sends them)

A round, per revision, on a private redis-server: a new partition, 2,000 one-item sub keys
enqueued in two calls of 1,000 (as enqueue_many), then claims of 36 leases (batch 100), each
followed by the completion of those leases (action "c", the offsets it was handed), until none
is left. (The shape of a real run's partition, 1,000 sub keys and 125 items per call: --items
8000 --sub-keys 1000 --per-call 125; 7 in 8 of the enqueues then find their lists there.)
The scripts are called directly (EVALSHA), nothing else runs on the server; a revision whose
complete_items takes no held count per lease (before it had one) is sent its own arguments,
without it, so a before/after across that change compares the same work. Prints per script
the microseconds per call and per item from SLOWLOG (threshold 0: each call's own duration on
the server), and how much of it the commands inside the script took (INFO commandstats); the
rest is Lua and the crossings between Lua and Redis.
"""

from __future__ import annotations

import argparse
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from workshaper.keys import PartitionKeys
from workshaper.lua_scripts import with_includes
from workshaper_tools.bench.common import private_redis

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ("enqueue_items", "claim_sub_keys", "complete_items")
LEASES, BATCH, LEASE_MS = 36, 100, 30000


@dataclass(frozen=True)
class Shape:
    """What a round enqueues: ``items`` items, item i to sub key i % ``sub_keys`` (None: one
    sub key per item), in calls of ``per_call`` items."""

    items: int = 2000
    sub_keys: int | None = None
    per_call: int = 1000


def takes_held(complete_source: str) -> bool:
    """Does this complete_items take a held count per lease (between exact and k)? Its header
    lists the per-lease arguments; revisions before the count list none."""
    return "held, k, then k offsets" in complete_source


def script_source(rev: str, name: str) -> str:
    """The script ``name`` of revision ``rev`` with its includes, as lua_scripts loads it."""

    def read(path: str) -> str:
        if rev == "WT":
            return (ROOT / "workshaper" / "lua" / path).read_text(encoding="utf-8")
        return subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:workshaper/lua/{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    return with_includes(name, read)


class Totals:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.usec: dict[tuple[str, str], int] = defaultdict(int)
        self.inner: dict[tuple[str, str], int] = defaultdict(int)  # commands inside the scripts
        self.items = 0


def _inner_usec(r: redis.Redis) -> int:
    stats: dict[str, Any] = r.info("commandstats")
    skip = ("cmdstat_evalsha", "cmdstat_info", "cmdstat_config", "cmdstat_slowlog")
    return sum(int(v["usec"]) for k, v in stats.items() if k not in skip)


def one_round(
    r: redis.Redis,
    rev: str,
    shas: dict[tuple[str, str], str],
    totals: Totals,
    shape: Shape = Shape(),
    *,
    held: bool = True,
) -> None:
    """One round of ``rev``'s scripts (``held``: its complete_items takes a held count)."""
    pkeys = PartitionKeys(f"lc{uuid.uuid4().hex[:8]}", 0)
    fixed = list(pkeys.fixed)
    held_arg = (0,) if held else ()  # the worker holds nothing past what it finished

    def run(name: str, keys: list[Any], args: list[Any]) -> Any:
        before = _inner_usec(r)
        reply = r.evalsha(shas[rev, name], len(keys), *keys, *args)
        totals.inner[rev, name] += _inner_usec(r) - before
        return reply

    r.slowlog_reset()
    for first in range(0, shape.items, shape.per_call):
        offsets = range(first, min(first + shape.per_call, shape.items))
        # The items by sub key, each group's in order (as scripts.enqueue_items sends them).
        groups: dict[bytes, list[int]] = {}
        for offset in offsets:
            key = offset if shape.sub_keys is None else offset % shape.sub_keys
            groups.setdefault(b"n%d" % key, []).append(offset)
        group_of = {offset: g for g, group in enumerate(groups.values(), 1) for offset in group}
        args: list[Any] = [uuid.uuid4().hex, 200_000, -1, len(offsets), len(groups)]
        args += [*offsets, *(group_of[offset] for offset in offsets)]
        for sub, group in groups.items():
            args += (sub, len(group), *(b"%d|payload-%d" % (o, o) for o in group))
        run("enqueue_items", [*fixed, *(pkeys.queue(sub) for sub in groups)], args)
    claimed = 0
    while True:
        raw = run(
            "claim_sub_keys",
            [*fixed, pkeys.claim_record("w1")],
            ["w1", uuid.uuid4().hex, LEASES, LEASE_MS, BATCH, 5, "d", pkeys.queue_prefix],
        )
        extra: list[bytes] = []
        args = [LEASE_MS, BATCH, 0]
        handed: list[int] = []  # the number of entries each lease was handed
        i = 1
        while i < len(raw):
            count = int(raw[i + 4])
            offsets_read = [int(e.split(b"|")[0]) for e in raw[i + 5 : i + 5 + count]]
            extra.append(pkeys.queue(raw[i]))
            handed.append(count)
            args += (len(extra), raw[i], raw[i + 1], "c", 0, *held_arg, len(offsets_read))
            args += offsets_read
            i += 5 + count
        if not extra:
            break
        args[2] = len(extra)
        claimed += sum(handed)
        replies = run("complete_items", [*fixed, *extra], args)
        # Each lease finishes what it was handed, all its queue, and is released.
        for reply, count in zip(replies, handed, strict=True):
            if int(reply[0]) != 2 or int(reply[1]) != count:
                raise RuntimeError(f"{rev}: a completion did not finish its items: {reply[:3]}")
    if claimed != shape.items:
        raise RuntimeError(f"{rev}: claimed {claimed} of {shape.items} items")
    by_sha = {sha: name for (r_rev, name), sha in shas.items() if r_rev == rev}
    for entry in r.slowlog_get(1_000_000):
        command = entry["command"].split()
        if command[0].lower() == b"evalsha" and command[1].decode() in by_sha:
            name = by_sha[command[1].decode()]
            totals.calls[rev, name] += 1
            totals.usec[rev, name] += int(entry["duration"])
    r.delete(*fixed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.lua_cost")
    parser.add_argument("revs", nargs="+", help='git revisions, or "WT" for the working tree')
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--items", type=int, default=Shape.items)
    parser.add_argument("--sub-keys", type=int, default=None)
    parser.add_argument("--per-call", type=int, default=Shape.per_call)
    args = parser.parse_args(argv)
    if args.items < 1 or args.per_call < 1 or (args.sub_keys or 1) < 1:
        parser.error("--items, --sub-keys and --per-call must be at least 1")
    if -(-args.items // (args.sub_keys or args.items)) > BATCH:
        parser.error(f"at most {BATCH} items per sub key (--items / --sub-keys)")
    shape = Shape(args.items, args.sub_keys, args.per_call)
    with private_redis() as server:
        r = redis.Redis.from_url(server.url)
        sources = {(rev, name): script_source(rev, name) for rev in args.revs for name in SCRIPTS}
        shas = {key: str(r.script_load(source)) for key, source in sources.items()}
        held = {rev: takes_held(sources[rev, "complete_items"]) for rev in args.revs}
        r.config_set("slowlog-log-slower-than", 0)
        r.config_set("slowlog-max-len", 100_000)
        totals = Totals()
        for round_number in range(args.rounds):
            # Every other round in reverse order: a revision's place in the round moves its
            # time by several percent (the Lua garbage left by the one before it, ...).
            order = args.revs if round_number % 2 == 0 else args.revs[::-1]
            for rev in order:
                one_round(r, rev, shas, totals, shape, held=held[rev])
        items = args.rounds * shape.items
    keys = "one sub key each" if shape.sub_keys is None else f"{shape.sub_keys:,} sub keys"
    print(
        f"{args.rounds} rounds of {shape.items:,} items ({keys}, {shape.per_call:,} per"
        " enqueue call) per revision"
    )
    for rev in args.revs:
        for name in SCRIPTS:
            calls, usec = totals.calls[rev, name], totals.usec[rev, name]
            inner = totals.inner[rev, name]
            print(
                f"{rev[:12]:12s} {name:15s} calls {calls:6d}  us/call {usec / max(calls, 1):8.1f}"
                f"  us/item {usec / items:6.2f}  (commands {inner / items:5.2f},"
                f" the rest {(usec - inner) / items:5.2f})"
            )


if __name__ == "__main__":
    main()
