"""The Lua scripts: loading, one-round-trip batches, and a typed call per script.

Each ``.lua`` file in ``workshaper/lua`` is one atomic operation; its header documents KEYS,
ARGV and the reply. Lines ``--@include name.lua`` inline a helper from ``lua/includes``. The
functions at the bottom of this module are the only code that knows a script's argument layout.

Scripts run with EVALSHA inside plain pipelines (no MULTI), so a batch of many scripts costs
one round trip. redis-py's ``Script`` objects would add a ``SCRIPT EXISTS`` round trip to every
pipeline; instead, on NOSCRIPT (a restarted or flushed server) the batch loads every script and
re-runs the commands that failed. Every script is idempotent, which also makes redis-py's
retry of a whole pipeline after a timeout safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Generic, NamedTuple, TypeVar

import hiredis
import redis

from workshaper.connection import Backend
from workshaper.errors import ScriptError
from workshaper.keys import PartitionKeys

T = TypeVar("T")

_INCLUDE = re.compile(r"^--@include (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class LuaScript:
    name: str
    source: str
    sha: str


def _read(path: str) -> str:
    return (resources.files("workshaper") / "lua" / path).read_text(encoding="utf-8")


@cache
def load_script(name: str) -> LuaScript:
    """The script ``name``.lua with its includes inlined."""
    source = _INCLUDE.sub(lambda m: _read(f"includes/{m.group(1)}"), _read(f"{name}.lua"))
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


SCRIPT_NAMES = (
    "enqueue_items",
    "claim_sub_keys",
    "complete_items",
    "fail_item",
    "extend_leases",
    "find_expired_leases",
    "expire_lease",
    "offer_watermark",
    "commit_watermark",
    "unblock_sub_key",
    "mark_isolated",
)


def register_scripts(backend: Backend) -> None:
    """SCRIPT LOAD every script (after a server restart or SCRIPT FLUSH)."""
    pipe = backend.client.pipeline(transaction=False)
    for name in SCRIPT_NAMES:
        pipe.script_load(load_script(name).source)
    pipe.execute()


class Reply(Generic[T]):
    """The answer of one command of a Batch, available after ``Batch.execute``."""

    __slots__ = ("_error", "_parse", "_ready", "_value")

    def __init__(self, parse: Callable[[Any], T]) -> None:
        self._parse = parse
        self._ready = False
        self._error: Exception | None = None
        self._value: Any = None

    def _set(self, raw: Any) -> None:
        self._ready = True
        if isinstance(raw, Exception):
            self._error = raw
        else:
            self._value = raw

    def get(self) -> T:
        if not self._ready:
            raise RuntimeError("Reply.get() before the batch was executed")
        if self._error is not None:
            raise ScriptError(str(self._error)) from self._error
        return self._parse(self._value)


def _identity(raw: Any) -> Any:
    return raw


class Link:
    """One connection kept by one thread for its batches (the coordinator, an ack loop, a
    producer): taking a pooled connection per round trip costs more than the round trip's own
    Python work in redis-py 8. Reconnects by itself after an error."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._conn: Any = None

    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self.backend.client.connection_pool.get_connection()
        return self._conn

    def broken(self) -> None:
        """The connection failed: drop it; the next batch opens a new one."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
                self.backend.client.connection_pool.release(self._conn)
            self._conn = None

    def batch(self) -> Batch:
        return Batch(self.backend, self)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self.backend.client.connection_pool.release(self._conn)
            self._conn = None


class Batch:
    """Commands sent together in one round trip (a non-transactional pipeline)."""

    def __init__(self, backend: Backend, link: Link | None = None) -> None:
        self._backend = backend
        self._link = link
        self._commands: list[tuple[tuple[Any, ...], Reply[Any]]] = []

    def __len__(self) -> int:
        return len(self._commands)

    def command(self, *args: Any, parse: Callable[[Any], T] = _identity) -> Reply[T]:
        reply: Reply[T] = Reply(parse)
        self._commands.append((args, reply))
        return reply

    def script(
        self,
        name: str,
        keys: Sequence[bytes],
        args: Iterable[Any],
        parse: Callable[[Any], T] = _identity,
    ) -> Reply[T]:
        return self.command("EVALSHA", load_script(name).sha, len(keys), *keys, *args, parse=parse)

    def execute(self) -> None:
        """Send everything; every Reply gets its raw answer (or its own error).

        A transient server state (loading its data after a restart, busy, failing over) raises
        for the whole batch, before any Reply is set: the caller sends it all again later, which
        is safe because every script is idempotent.
        """
        if not self._commands:
            return
        results = self._send([args for args, _ in self._commands])
        _raise_if_transient(results)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if missing:
            register_scripts(self._backend)
            retried = self._send([self._commands[i][0] for i in missing])
            _raise_if_transient(retried)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for (_, reply), result in zip(self._commands, results, strict=True):
            reply._set(result)
        self._commands = []

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write every command on one connection, then read every reply: raw replies, an error
        reply as its exception. Commands are packed by hiredis in C (redis-py's own packing
        inspects each argument in Python, a quarter of a worker's CPU at high throughput). A
        broken connection is replaced and the whole batch sent again, which every script
        allows (idempotent)."""
        packed = [hiredis.pack_command(args) for args in commands]
        link = self._link or Link(self._backend)
        try:
            for attempt in range(SEND_ATTEMPTS):
                conn = link.connection()
                try:
                    conn.send_packed_command(packed)
                    return [_read_reply(conn) for _ in commands]
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    link.broken()
                    if attempt + 1 == SEND_ATTEMPTS:
                        raise
                    time.sleep(SEND_RETRY_PAUSE * (attempt + 1))
            raise AssertionError("unreachable")
        finally:
            if self._link is None:
                link.close()


#: How often a batch is sent before a connection error is raised to the caller, and the pause
#: between sends (grows linearly).
SEND_ATTEMPTS, SEND_RETRY_PAUSE = 3, 0.05


def _read_reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:  # an error reply answers this command only
        return exc


#: Error replies that mean "not now", not "wrong": the server is loading, busy or failing over.
TRANSIENT_ERROR_PREFIXES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN")


def _raise_if_transient(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, redis.ConnectionError | redis.TimeoutError):
            raise result
        if isinstance(result, redis.ResponseError) and str(result).startswith(
            TRANSIENT_ERROR_PREFIXES
        ):
            raise redis.ConnectionError(f"Redis is not ready: {result}")


def run_one(backend: Backend, build: Callable[[Batch], Reply[T]]) -> T:
    """Build one command in a fresh batch, send it, return its parsed answer."""
    batch = Batch(backend)
    reply = build(batch)
    batch.execute()
    return reply.get()


# --- typed calls, one per script ------------------------------------------------------------


class EncodedItem(NamedTuple):
    sub: bytes  # encoded sub key (codec.encode_sub_key)
    offset: int
    entry: bytes  # queue entry (codec.make_entry)


def enqueue_items(
    batch: Batch, pkeys: PartitionKeys, items: Sequence[EncodedItem], max_in_queue: int
) -> Reply[list[int]]:
    """Statuses per item: 0 accepted, 1 duplicate, 2 already acked, 3 full, 4 being acked.

    Items are sent grouped by sub key (each group's entries contiguous), so the script can push
    a whole group from its arguments in one RPUSH.
    """
    group_of: dict[bytes, int] = {}
    entries: list[list[bytes]] = []
    subs: list[bytes] = []
    offsets: list[int] = []
    groups: list[int] = []
    for item in items:
        group = group_of.get(item.sub)
        if group is None:
            group = group_of[item.sub] = len(subs) + 1
            subs.append(item.sub)
            entries.append([])
        entries[group - 1].append(item.entry)
        offsets.append(item.offset)
        groups.append(group)
    args: list[Any] = [max_in_queue, len(items), len(subs), *offsets, *groups]
    for sub, group_entries in zip(subs, entries, strict=True):
        args += (sub, len(group_entries), *group_entries)
    count = len(items)

    def parse(raw: Any) -> list[int]:
        return [0] * count if isinstance(raw, int) else list(raw)

    return batch.script(
        "enqueue_items", [*pkeys.fixed, *(pkeys.queue(sub) for sub in subs)], args, parse=parse
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    sub: bytes
    token: int
    attempts_record: bytes  # b"offset|n" or b""
    exact: int  # items left to run one at a time


def _parse_claim(raw: list[Any]) -> tuple[int, list[Claimed]]:
    """(runnable sub keys left in the partition, the new leases)."""
    ready_left = int(raw[0])
    claims = [
        Claimed(raw[i], int(raw[i + 1]), raw[i + 2], int(raw[i + 3])) for i in range(1, len(raw), 4)
    ]
    return ready_left, claims


def claim_sub_keys(
    batch: Batch,
    pkeys: PartitionKeys,
    *,
    worker_id: str,
    request_id: str,
    max_leases: int,
    lease_ms: int,
    batch_size: int,
    max_attempts: int,
    exhausted_mode: str,
) -> Reply[tuple[int, list[Claimed]]]:
    return batch.script(
        "claim_sub_keys",
        [*pkeys.fixed, pkeys.claim_record(worker_id)],
        [worker_id, request_id, max_leases, lease_ms, batch_size, max_attempts, exhausted_mode],
        parse=_parse_claim,
    )


@dataclass(frozen=True, slots=True)
class Completion:
    sub: bytes
    token: int
    action: str  # "k" keep, "c" continue, "y" yield (continue unless others wait), "r" release
    offsets: Sequence[int]
    exact: bool = False  # the lease runs one item at a time after a crash (claim said so)


@dataclass(frozen=True, slots=True)
class CompletionReply:
    code: int  # -1 fenced, 1 held, 2 released
    finished: int
    attempts_record: bytes  # of the new head, when next_entries is given
    next_entries: list[bytes]


def _parse_completions(raw: list[list[Any]]) -> list[CompletionReply]:
    return [
        CompletionReply(int(r[0]), int(r[1]), r[2] if len(r) > 2 else b"", list(r[3:])) for r in raw
    ]


def complete_items(
    batch: Batch,
    pkeys: PartitionKeys,
    completions: Sequence[Completion],
    *,
    lease_ms: int,
    batch_size: int,
) -> Reply[list[CompletionReply]]:
    extra: list[bytes] = []
    args: list[Any] = [lease_ms, batch_size, len(completions)]
    for c in completions:
        extra.append(pkeys.queue(c.sub))
        args += (len(extra), c.sub, c.token, c.action, 1 if c.exact else 0, len(c.offsets))
        args += c.offsets
    return batch.script("complete_items", [*pkeys.fixed, *extra], args, parse=_parse_completions)


def fail_item(
    batch: Batch,
    pkeys: PartitionKeys,
    *,
    sub: bytes,
    token: int,
    head_prefix: bytes,
    offset: int | None,
    attempt: int,
    max_attempts: int,
    exhausted_mode: str,
    force: bool,
    error_json: str,
    lease_ms: int,
) -> Reply[tuple[int, int]]:
    """(code, attempts): -1 fenced, 0 no longer at head, 1 retry, 2 dead-lettered, 3 blocked."""
    return batch.script(
        "fail_item",
        [*pkeys.fixed, pkeys.queue(sub)],
        [
            sub,
            token,
            head_prefix,
            "" if offset is None else offset,
            attempt,
            max_attempts,
            exhausted_mode,
            "1" if force else "0",
            error_json,
            lease_ms,
        ],
        parse=lambda raw: (int(raw[0]), int(raw[1])),
    )


def extend_leases(
    batch: Batch, pkeys: PartitionKeys, leases: Sequence[tuple[bytes, int]], lease_ms: int
) -> Reply[list[int]]:
    """0-based indexes of the leases that were lost."""
    args: list[Any] = [lease_ms]
    for sub, token in leases:
        args += (sub, token)
    return batch.script(
        "extend_leases", pkeys.fixed, args, parse=lambda raw: [int(i) - 1 for i in raw]
    )


def find_expired_leases(
    batch: Batch, pkeys: PartitionKeys, limit: int = 100
) -> Reply[tuple[int, list[bytes]]]:
    """(runnable sub keys waiting, expired sub keys)."""
    return batch.script(
        "find_expired_leases", pkeys.fixed, [limit], parse=lambda raw: (int(raw[0]), list(raw[1:]))
    )


def expire_lease(
    batch: Batch, pkeys: PartitionKeys, sub: bytes, reaper_id: str
) -> Reply[tuple[int, int]]:
    """(code, attempts): 0 not expired, 1 requeued, 2 dead-lettered, 3 blocked."""
    return batch.script(
        "expire_lease",
        [*pkeys.fixed, pkeys.queue(sub)],
        [sub, reaper_id],
        parse=lambda raw: (int(raw[0]), int(raw[1])),
    )


@dataclass(frozen=True, slots=True)
class Offer:
    acked: int
    watermark: int
    in_queue: int
    offsets: list[int]  # finished offsets in (acked, watermark], when asked for

    @property
    def advances(self) -> bool:
        return self.watermark > self.acked


def _parse_offer(raw: list[Any]) -> Offer:
    return Offer(int(raw[0]), int(raw[1]), int(raw[2]), [int(o) for o in raw[3:]])


def offer_watermark(batch: Batch, pkeys: PartitionKeys, with_offsets: bool) -> Reply[Offer]:
    return batch.script(
        "offer_watermark", pkeys.fixed, ["1" if with_offsets else "0"], parse=_parse_offer
    )


def commit_watermark(batch: Batch, pkeys: PartitionKeys, watermark: int) -> Reply[int]:
    """Accepted-but-not-acked items left in the partition."""
    return batch.script("commit_watermark", pkeys.fixed, [watermark], parse=int)


def mark_isolated(batch: Batch, pkeys: PartitionKeys, sub: bytes, token: int) -> Reply[int]:
    """1, or -1 when the lease is lost."""
    return batch.script("mark_isolated", pkeys.fixed, [sub, token], parse=int)


def unblock_sub_key(
    batch: Batch, pkeys: PartitionKeys, sub: bytes, action: str, note_json: str
) -> Reply[bool]:
    return batch.script(
        "unblock_sub_key",
        [*pkeys.fixed, pkeys.queue(sub)],
        [sub, action, note_json],
        parse=lambda raw: bool(int(raw)),
    )
