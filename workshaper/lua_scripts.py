"""The Lua scripts as files: loading them with their includes, and SCRIPT LOAD on a server.

Each ``.lua`` file in ``workshaper/lua`` is one atomic operation; its header documents KEYS,
ARGV and the reply. Lines ``--@include name.lua`` inline a helper from ``lua/includes``.

Each file starts with a ``#!lua`` shebang whose flags (``allow-oom``, ``no-writes``) Redis 7
enforces; the header says why each script has its flags (docs/scaling.md has the list).
fakeredis does not parse a shebang: a backend with ``shebangs`` false gets the scripts without
that first line (``plain``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol


class Backend(Protocol):
    """What this module reads of a ``connection.Backend`` (not imported: the embedded server,
    which connection builds, reads the scripts' sources too)."""

    @property
    def shebangs(self) -> bool: ...
    @property
    def cluster(self) -> bool: ...
    @property
    def client(self) -> Any: ...


_INCLUDE = re.compile(r"^--@include (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str
    #: The source without its shebang line (for fakeredis), and its SHA1.
    plain: str
    plain_sha: str

    def for_backend(self, backend: Backend) -> tuple[str, str]:
        """The source and SHA1 to send to ``backend``."""
        return (self.source, self.sha) if backend.shebangs else (self.plain, self.plain_sha)


def _read(path: str) -> str:
    return (resources.files("workshaper") / "lua" / path).read_text(encoding="utf-8")


def with_includes(name: str, read: Callable[[str], str]) -> str:
    """The source of ``name``.lua with its includes inlined; ``read(path)`` reads a file of
    ``workshaper/lua`` (the installed one, or another revision's for a benchmark)."""
    return _INCLUDE.sub(lambda m: read(f"includes/{m.group(1)}"), read(f"{name}.lua"))


@cache
def load_script(name: str) -> LuaScript:
    """The script ``name``.lua with its includes inlined."""
    source = with_includes(name, _read)
    plain = source.partition("\n")[2] if source.startswith("#!") else source
    return LuaScript(name, source, _sha1(source), plain, _sha1(plain))


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


SCRIPT_NAMES = (
    "enqueue_items",
    "claim_sub_keys",
    "complete_items",
    "fail_item",
    "extend_leases",
    "expire_lease",
    "offer_watermark",
    "commit_watermark",
    "unblock_sub_key",
    "mark_isolated",
    "reaper_lock",
    "register_worker",
    "prune_workers",
    "inspect_partition",
    "stuck_sub_keys",
    "replay_dead_letter",
)


def register_scripts(backend: Backend) -> None:
    """SCRIPT LOAD every script (after a server restart or SCRIPT FLUSH); on a cluster, on
    every primary (redis-py's cluster client sends SCRIPT LOAD to all of them)."""
    if backend.cluster:
        for name in SCRIPT_NAMES:
            backend.client.script_load(load_script(name).for_backend(backend)[0])
        return
    pipe = backend.client.pipeline(transaction=False)
    for name in SCRIPT_NAMES:
        pipe.script_load(load_script(name).for_backend(backend)[0])
    pipe.execute()
