"""Embedded commands on keys, strings and the server (TIME, PING, ...)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from workshaper.embedded.protocol import (
    NOT_INTEGER,
    OK,
    PONG,
    SYNTAX,
    Status,
    arity,
    to_int,
    wrong_args,
)
from workshaper.embedded.store import TYPE_NAMES, CommandError, Store

# --- keys ---------------------------------------------------------------------------------


def cmd_del(store: Store, args: list[bytes]) -> int:
    arity("del", args, 1)
    return sum(store.delete(key) for key in args if store.lookup(key) is not None)


def cmd_exists(store: Store, args: list[bytes]) -> int:
    arity("exists", args, 1)
    return sum(1 for key in args if store.lookup(key) is not None)


def cmd_type(store: Store, args: list[bytes]) -> Status:
    arity("type", args, 1)
    value = store.lookup(args[0])
    return Status(b"none" if value is None else TYPE_NAMES[type(value)])


def _glob(pattern: bytes) -> Callable[[bytes], bool]:
    if pattern == b"*":
        return lambda key: True
    regex = re.compile(fnmatch.translate(pattern.decode("latin-1")).encode("latin-1"), re.S)
    return lambda key: regex.match(key) is not None


def cmd_keys(store: Store, args: list[bytes]) -> list[bytes]:
    arity("keys", args, 1)
    match = _glob(args[0])
    return [key for key in store.live_keys() if match(key)]


def _scan_options(args: list[bytes], start: int, *, with_type: bool) -> tuple[bytes, bytes | None]:
    """(MATCH pattern, TYPE name or None) from the option pairs at ``args[start:]``; COUNT
    is checked but unused (one pass returns everything). TYPE only where ``with_type`` (SCAN,
    not HSCAN); anything else is a syntax error, as in Redis."""
    pattern, kind = b"*", None
    i = start
    while i < len(args):
        option = args[i].upper()
        if option == b"MATCH" and i + 1 < len(args):
            pattern = args[i + 1]
        elif option == b"COUNT" and i + 1 < len(args):
            to_int(args[i + 1])
        elif with_type and option == b"TYPE" and i + 1 < len(args):
            kind = args[i + 1].lower()
        else:
            raise CommandError(SYNTAX)
        i += 2
    return pattern, kind


def cmd_scan(store: Store, args: list[bytes]) -> list[Any]:
    """One pass over every key (cursor 0 in, cursor 0 out): a valid, if unpaged, SCAN."""
    arity("scan", args, 1)
    pattern, kind = _scan_options(args, 1, with_type=True)
    match = _glob(pattern)
    keys = [
        key
        for key in store.live_keys()
        if match(key) and (kind is None or TYPE_NAMES[type(store.data[key])] == kind)
    ]
    return [b"0", keys]


def cmd_hscan(store: Store, args: list[bytes]) -> list[Any]:
    """HSCAN key cursor [MATCH pattern] [COUNT n]: every field in one pass (cursor 0 out)."""
    arity("hscan", args, 2)
    to_int(args[1])
    pattern, _ = _scan_options(args, 2, with_type=False)
    match = _glob(pattern)
    h = store.get(args[0], dict) or {}
    flat: list[bytes] = []
    for field, value in h.items():
        if match(field):
            flat += (field, value)
    return [b"0", flat]


def cmd_pexpire(store: Store, args: list[bytes]) -> int:
    arity("pexpire", args, 2)
    ms = to_int(args[1])
    if store.lookup(args[0]) is None:
        return 0
    store.set_deadline(args[0], store.clock() + ms / 1000)
    return 1


def cmd_expire(store: Store, args: list[bytes]) -> int:
    arity("expire", args, 2)
    return cmd_pexpire(store, [args[0], b"%d" % (to_int(args[1]) * 1000)])


def cmd_pttl(store: Store, args: list[bytes]) -> int:
    arity("pttl", args, 1)
    if store.lookup(args[0]) is None:
        return -2
    deadline = store.expires.get(args[0])
    if deadline is None:
        return -1
    return max(0, round((deadline - store.clock()) * 1000))


def cmd_flushall(store: Store, args: list[bytes]) -> Status:
    store.flush()
    return OK


def cmd_dbsize(store: Store, args: list[bytes]) -> int:
    return len(store.live_keys())


# --- strings ------------------------------------------------------------------------------


def cmd_get(store: Store, args: list[bytes]) -> bytes | None:
    if len(args) != 1:
        raise wrong_args("get")
    value: bytes | None = store.get(args[0], bytes)
    return value


def cmd_set(store: Store, args: list[bytes]) -> Status | None:
    """SET key value [NX | XX] [EX s | PX ms] [KEEPTTL]."""
    arity("set", args, 2)
    key, value = args[0], args[1]
    deadline: float | None = None
    keep_ttl = nx = xx = False
    i = 2
    while i < len(args):
        option = args[i].upper()
        if option in (b"EX", b"PX") and i + 1 < len(args):
            amount = to_int(args[i + 1])
            if amount <= 0:
                raise CommandError("ERR invalid expire time in 'set' command")
            deadline = store.clock() + (amount if option == b"EX" else amount / 1000)
            i += 2
            continue
        if option == b"NX":
            nx = True
        elif option == b"XX":
            xx = True
        elif option == b"KEEPTTL":
            keep_ttl = True
        else:
            raise CommandError(SYNTAX)
        i += 1
    exists = store.lookup(key) is not None
    if (nx and exists) or (xx and not exists):
        return None
    store.data[key] = bytes(value)
    if not keep_ttl:
        store.set_deadline(key, deadline)
    return OK


def cmd_incrby(store: Store, args: list[bytes]) -> int:
    if len(args) != 2:
        raise wrong_args("incrby")
    by = to_int(args[1])
    old = store.get(args[0], bytes)
    try:
        current = 0 if old is None else to_int(old)
    except CommandError:
        raise CommandError(NOT_INTEGER) from None
    new = current + by
    if not -(2**63) <= new < 2**63:
        raise CommandError("ERR increment or decrement would overflow")
    store.data[args[0]] = b"%d" % new  # INCR keeps the key's time to live
    return new


def cmd_incr(store: Store, args: list[bytes]) -> int:
    if len(args) != 1:
        raise wrong_args("incr")
    return cmd_incrby(store, [args[0], b"1"])


# --- server -------------------------------------------------------------------------------


def cmd_time(store: Store, args: list[bytes]) -> list[bytes]:
    micros = int(store.clock() * 1_000_000)
    return [b"%d" % (micros // 1_000_000), b"%d" % (micros % 1_000_000)]


def cmd_ping(store: Store, args: list[bytes]) -> Any:
    return args[0] if args else PONG


def cmd_echo(store: Store, args: list[bytes]) -> bytes:
    if len(args) != 1:
        raise wrong_args("echo")
    return args[0]


def cmd_ok(store: Store, args: list[bytes]) -> Status:
    """Connection and statistics commands that have nothing to do in one process."""
    return OK


def cmd_info(store: Store, args: list[bytes]) -> bytes:
    return b"# Server\r\nredis_version:7.4.0\r\nredis_mode:standalone\r\n"
