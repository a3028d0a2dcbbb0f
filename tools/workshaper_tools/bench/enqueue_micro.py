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

import argparse
import gc
import statistics
import subprocess
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workshaper import codec, scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.client import encode_arg
from workshaper.embedded.native import NativeScript
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.lua_scripts import load_script
from workshaper.scripts import EncodedItem

ROUND = 50  # calls of one mode before the next mode's turn
TRANSCRIPTION = "workshaper/embedded/native/enqueue.py"
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


def _timed_round(
    backend: Backend, pkeys: PartitionKeys, calls: list[list[EncodedItem]], script: bool
) -> list[float]:
    """The calls on an empty partition; their times in microseconds."""
    backend.client.flushall()
    times = []
    if script:
        server = backend.server
        assert server is not None
        for n, items in enumerate(calls):
            args = _encoded(backend, pkeys, items, f"r{n}")
            start = time.perf_counter()
            with server.store.lock:
                server.scripts.evalsha(args[1], args[2:])
            times.append((time.perf_counter() - start) * 1e6)
        return times
    for n, items in enumerate(calls):
        call = _call(pkeys, items, f"r{n}")
        start = time.perf_counter()
        run_one(backend, call)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def _encoded(
    backend: Backend, pkeys: PartitionKeys, items: list[EncodedItem], request: str
) -> list[bytes]:
    """The EVALSHA command scripts.enqueue_items makes, as the server gets it."""
    batch = Batch(backend)
    _call(pkeys, items, request)(batch)
    ((args, _),) = batch._commands
    return [encode_arg(a) for a in args]


def _call(
    pkeys: PartitionKeys, items: list[EncodedItem], request: str
) -> Callable[[Batch], Reply[list[int]]]:
    return lambda b: scripts.enqueue_items(b, pkeys, items, MAX_IN_QUEUE, request)


def _transcription_at(rev: str) -> NativeScript:
    """enqueue_items as transcribed at git revision ``rev``."""
    root = Path(__file__).resolve().parents[3]
    source = subprocess.run(
        ["git", "show", f"{rev}:{TRANSCRIPTION}"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    module = types.ModuleType(f"enqueue_at_{rev}")
    exec(compile(source, f"{rev}:{TRANSCRIPTION}", "exec"), module.__dict__)
    function: NativeScript = module.enqueue_items
    return function


def _servers(before: str | None) -> dict[str, Backend]:
    source = load_script("enqueue_items").source.encode()
    servers = {
        "lua": EmbeddedServer(native_scripts=False),
        "native": EmbeddedServer(native_scripts=True),
    }
    if before is not None:
        servers[f"native@{before}"] = EmbeddedServer(native_scripts=True)
    for server in servers.values():
        sha = server.scripts.load(source)  # (EVALSHA with --script does not load it)
    if before is not None:
        # The script is loaded: the old transcription stands in for the current one.
        servers[f"native@{before}"].scripts._natives[sha] = _transcription_at(before)
    return {name: embedded_backend(server) for name, server in servers.items()}


def run(
    calls: int, before: str | None, script: bool = False, say: Callable[[str], None] = print
) -> None:
    modes = _servers(before)
    pkeys = NamespaceKeys("micro").partition(0)
    names = list(modes)
    say(f"{'shape':34} " + " ".join(f"{n:>16}" for n in names) + "   lua/native")
    for shape in SHAPES:
        work = _calls(shape)
        times: dict[str, list[float]] = {name: [] for name in names}
        for backend in modes.values():  # warm up: scripts loaded, caches filled
            _timed_round(backend, pkeys, work, script)
        gc.collect()
        while len(times[names[0]]) < calls:
            for name, backend in modes.items():
                times[name] += _timed_round(backend, pkeys, work, script)
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["lua"] / medians["native"]
        cells = " ".join(f"{medians[n]:>13.1f} us" for n in names)
        say(f"{shape.name:34} {cells}   {ratio:>9.2f}x")
    for backend in modes.values():
        backend.close()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--before", default=None, help="git revision of an earlier transcription")
    p.add_argument("--script", action="store_true", help="time the script alone")
    args = p.parse_args(argv)
    run(args.calls, args.before, args.script)


if __name__ == "__main__":
    main()
