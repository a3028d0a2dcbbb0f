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

import argparse
import gc
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

from workshaper import scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.client import encode_arg
from workshaper.embedded.native import NativeScript
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.lua_scripts import load_script

ROUND = 50  # calls of one mode before the next mode's turn
TRANSCRIPTION = "workshaper/embedded/native/claim.py"
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


def _encoded(backend: Backend, claim: Claim) -> list[bytes]:
    """The EVALSHA command scripts.claim_sub_keys makes, as the server gets it."""
    batch = Batch(backend)
    claim(batch)
    ((args, _),) = batch._commands
    return [encode_arg(a) for a in args]


def _timed_round(
    backend: Backend, pkeys: PartitionKeys, shape: tuple[int, int], first: int, script: bool
) -> list[float]:
    """ROUND claims of the shape (request ids from ``first``); their times in microseconds."""
    leases, batch = shape
    times = []
    for n in range(first, first + ROUND):
        claim = _call(pkeys, leases, batch, f"r{n}")
        _ready(backend, pkeys, leases)
        if script:
            server = backend.server
            assert server is not None
            args = _encoded(backend, claim)
            start = time.perf_counter()
            with server.store.lock:
                server.scripts.evalsha(args[1], args[2:])
        else:
            start = time.perf_counter()
            run_one(backend, claim)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def _transcription_at(rev: str) -> NativeScript:
    """claim_sub_keys as transcribed at git revision ``rev``."""
    root = Path(__file__).resolve().parents[3]
    source = subprocess.run(
        ["git", "show", f"{rev}:{TRANSCRIPTION}"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    module = types.ModuleType(f"claim_at_{rev}")
    # A dataclass resolves its module by name: the module must be importable while it runs.
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:{TRANSCRIPTION}", "exec"), module.__dict__)
    function: NativeScript = module.claim_sub_keys
    return function


def _servers(before: str | None) -> dict[str, Backend]:
    source = load_script("claim_sub_keys").source.encode()
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
    say(f"{'leases, batch':16} " + " ".join(f"{n:>16}" for n in names) + "   lua/native")
    for shape in SHAPES:
        times: dict[str, list[float]] = {name: [] for name in names}
        for backend in modes.values():  # warm up: lists filled, scripts and caches warm
            _fill(backend, pkeys)
            _timed_round(backend, pkeys, shape, 0, script)
        gc.collect()
        first = ROUND
        while len(times[names[0]]) < calls:
            for name, backend in modes.items():
                times[name] += _timed_round(backend, pkeys, shape, first, script)
            first += ROUND
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["lua"] / medians["native"]
        cells = " ".join(f"{medians[n]:>13.1f} us" for n in names)
        say(f"{shape[0]:>6}, {shape[1]:>7} {cells}   {ratio:>9.2f}x")
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
