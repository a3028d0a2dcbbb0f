"""What the micro-benchmarks of the transcribed scripts share (``claim_micro``,
``complete_micro``, ``enqueue_micro``): the modes (the script's Lua, its transcription, and with
``--before REV`` the transcription as it was at a git revision), each on its own embedded
server in this process, and the loop that times the modes in turns, so the machine's noise falls
on all of them alike, and prints each shape's median microseconds per call.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from workshaper.batch import Batch
from workshaper.connection import Backend, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.client import encode_arg
from workshaper.embedded.native import TRANSCRIPTIONS, NativeScript
from workshaper.lua_scripts import load_script

ROUND = 50  # calls of one mode before the next mode's turn

Shape = TypeVar("Shape")


def transcription_at(rev: str, script: str) -> NativeScript:
    """The transcription of ``script`` as it was at git revision ``rev``."""
    module_name = TRANSCRIPTIONS[script][0].__module__
    path = module_name.replace(".", "/") + ".py"
    root = Path(__file__).resolve().parents[3]
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=root, check=True, capture_output=True
    ).stdout
    module = types.ModuleType(f"{script}_at_{rev}")
    # A dataclass resolves its module by name: the module must be importable while it runs.
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    function: NativeScript = getattr(module, script)
    return function


def modes(script: str, before: str | None) -> dict[str, Backend]:
    """lua, native (and native@REV): a server each, the script loaded on it."""
    source = load_script(script).source.encode()
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
        servers[f"native@{before}"].scripts._natives[sha] = transcription_at(before, script)
    return {name: embedded_backend(server) for name, server in servers.items()}


def encoded(backend: Backend, build: Callable[[Batch], Any]) -> list[bytes]:
    """The one command ``build`` adds to a batch, as the server gets it."""
    batch = Batch(backend)
    build(batch)
    ((args, _),) = batch._commands
    return [encode_arg(a) for a in args]


def time_script_alone(backend: Backend, args: list[bytes]) -> float:
    """Microseconds of the EVALSHA ``args`` in the server alone (under its lock, as it runs)."""
    server = backend.server
    assert server is not None
    start = time.perf_counter()
    with server.store.lock:
        server.scripts.evalsha(args[1], args[2:])
    return (time.perf_counter() - start) * 1e6


def compare(
    backends: dict[str, Backend],
    shapes: Iterable[Shape],
    label: Callable[[Shape], str],
    timed_round: Callable[[Backend, Shape, int], list[float]],
    *,
    calls: int,
    say: Callable[[str], None] = print,
) -> None:
    """For each shape: a warm-up round per mode, then rounds of the modes in turns until each
    has ``calls`` times; print the medians and lua / native. ``timed_round(backend, shape,
    first)`` runs a round (request ids from ``first``) and returns its times."""
    names = list(backends)
    shapes = list(shapes)
    width = max(len(label(s)) for s in shapes)
    say(f"{'':{width}} " + " ".join(f"{n:>16}" for n in names) + "   lua/native")
    for shape in shapes:
        times: dict[str, list[float]] = {name: [] for name in names}
        for backend in backends.values():  # warm up: scripts loaded, caches filled
            timed_round(backend, shape, 0)
        gc.collect()
        first = ROUND
        while len(times[names[0]]) < calls:
            for name, backend in backends.items():
                times[name] += timed_round(backend, shape, first)
            first += ROUND
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["lua"] / medians["native"]
        cells = " ".join(f"{medians[n]:>13.1f} us" for n in names)
        say(f"{label(shape):{width}} {cells}   {ratio:>9.2f}x")
    for backend in backends.values():
        backend.close()


def arguments(
    doc: str | None, argv: Sequence[str] | None, calls: int, script: bool
) -> argparse.Namespace:
    """--calls, --before and (when the bench can time it) --script."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    p.add_argument("--calls", type=int, default=calls)
    p.add_argument("--before", default=None, help="git revision of an earlier transcription")
    if script:
        p.add_argument("--script", action="store_true", help="time the script alone")
    return p.parse_args(argv)
