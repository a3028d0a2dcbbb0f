"""Embedded commands on hashes, lists and sets."""

from __future__ import annotations

from typing import Any

from workshaper.embedded.protocol import (
    OK,
    SYNTAX,
    Status,
    arity,
    span,
    to_int,
    wrong_args,
)
from workshaper.embedded.store import CommandError, Store

# --- hashes -------------------------------------------------------------------------------


def cmd_hset(store: Store, args: list[bytes]) -> int:
    arity("hset", args, 3, even_after=1)
    h = store.get_or_create(args[0], dict)
    added = 0
    for i in range(1, len(args), 2):
        if args[i] not in h:
            added += 1
        h[args[i]] = args[i + 1]
    return added


def cmd_hsetnx(store: Store, args: list[bytes]) -> int:
    if len(args) != 3:
        raise wrong_args("hsetnx")
    h = store.get_or_create(args[0], dict)
    if args[1] in h:
        return 0
    h[args[1]] = args[2]
    return 1


def cmd_hget(store: Store, args: list[bytes]) -> bytes | None:
    if len(args) != 2:
        raise wrong_args("hget")
    h = store.get(args[0], dict)
    return None if h is None else h.get(args[1])


def cmd_hmget(store: Store, args: list[bytes]) -> list[bytes | None]:
    arity("hmget", args, 2)
    h = store.get(args[0], dict) or {}
    return [h.get(field) for field in args[1:]]


def cmd_hdel(store: Store, args: list[bytes]) -> int:
    arity("hdel", args, 2)
    h = store.get(args[0], dict)
    if h is None:
        return 0
    removed = 0
    for field in args[1:]:
        if h.pop(field, None) is not None:
            removed += 1
    store.drop_if_empty(args[0], h)
    return removed


def cmd_hexists(store: Store, args: list[bytes]) -> int:
    if len(args) != 2:
        raise wrong_args("hexists")
    h = store.get(args[0], dict)
    return int(h is not None and args[1] in h)


def cmd_hincrby(store: Store, args: list[bytes]) -> int:
    if len(args) != 3:
        raise wrong_args("hincrby")
    h = store.get_or_create(args[0], dict)
    by = to_int(args[2])
    old = h.get(args[1], b"0")
    try:
        current = to_int(old)
    except CommandError:
        store.drop_if_empty(args[0], h)
        raise CommandError("ERR hash value is not an integer") from None
    new = current + by
    if not -(2**63) <= new < 2**63:
        raise CommandError("ERR increment or decrement would overflow")
    h[args[1]] = b"%d" % new
    return new


def cmd_hgetall(store: Store, args: list[bytes]) -> dict[bytes, bytes]:
    if len(args) != 1:
        raise wrong_args("hgetall")
    return dict(store.get(args[0], dict) or {})


def cmd_hlen(store: Store, args: list[bytes]) -> int:
    if len(args) != 1:
        raise wrong_args("hlen")
    return len(store.get(args[0], dict) or ())


def cmd_hkeys(store: Store, args: list[bytes]) -> list[bytes]:
    if len(args) != 1:
        raise wrong_args("hkeys")
    return list(store.get(args[0], dict) or ())


# --- lists --------------------------------------------------------------------------------


def _push(name: str, store: Store, args: list[bytes], left: bool) -> int:
    arity(name, args, 2)
    lst = store.get_or_create(args[0], list)
    if left:
        for value in args[1:]:
            lst.insert(0, value)
    else:
        lst.extend(args[1:])
    return len(lst)


def cmd_rpush(store: Store, args: list[bytes]) -> int:
    return _push("rpush", store, args, left=False)


def cmd_lpush(store: Store, args: list[bytes]) -> int:
    return _push("lpush", store, args, left=True)


def cmd_llen(store: Store, args: list[bytes]) -> int:
    if len(args) != 1:
        raise wrong_args("llen")
    return len(store.get(args[0], list) or ())


def cmd_lindex(store: Store, args: list[bytes]) -> bytes | None:
    if len(args) != 2:
        raise wrong_args("lindex")
    lst = store.get(args[0], list)
    index = to_int(args[1])
    if lst is None or not -len(lst) <= index < len(lst):
        return None
    value: bytes = lst[index]
    return value


def cmd_lrange(store: Store, args: list[bytes]) -> list[bytes]:
    if len(args) != 3:
        raise wrong_args("lrange")
    lst = store.get(args[0], list)
    start, stop = to_int(args[1]), to_int(args[2])
    if lst is None:
        return []
    lo, hi = span(len(lst), start, stop)
    values: list[bytes] = lst[lo:hi]
    return values


def cmd_lpos(store: Store, args: list[bytes]) -> int | None:
    """``LPOS key element [MAXLEN n]``: the index of the first match among the first n
    entries (0: all). RANK and COUNT are not implemented (no script uses them)."""
    if len(args) not in (2, 4):
        raise wrong_args("lpos") if len(args) < 2 else CommandError(SYNTAX)
    maxlen = 0
    if len(args) == 4:
        if args[2].upper() != b"MAXLEN":
            raise CommandError(SYNTAX)
        maxlen = to_int(args[3])
        if maxlen < 0:
            raise CommandError("ERR MAXLEN can't be negative")
    lst = store.get(args[0], list) or []
    scanned = lst[:maxlen] if maxlen else lst
    try:
        return scanned.index(args[1])
    except ValueError:
        return None


def cmd_ltrim(store: Store, args: list[bytes]) -> Status:
    if len(args) != 3:
        raise wrong_args("ltrim")
    lst = store.get(args[0], list)
    start, stop = to_int(args[1]), to_int(args[2])
    if lst is None:
        return OK
    lo, hi = span(len(lst), start, stop)
    del lst[hi:]
    del lst[:lo]
    store.drop_if_empty(args[0], lst)
    return OK


def cmd_lpop(store: Store, args: list[bytes]) -> Any:
    arity("lpop", args, 1)
    if len(args) > 2:
        raise CommandError(SYNTAX)
    count = None
    if len(args) == 2:
        count = to_int(args[1])
        if count < 0:
            raise CommandError("ERR value is out of range, must be positive")
    lst = store.get(args[0], list)
    if lst is None:
        return None
    if count is None:
        value = lst.pop(0)
        store.drop_if_empty(args[0], lst)
        return value
    popped = lst[:count]
    del lst[:count]
    store.drop_if_empty(args[0], lst)
    return popped


def cmd_linsert(store: Store, args: list[bytes]) -> int:
    if len(args) != 4:
        raise wrong_args("linsert")
    where = args[1].upper()
    if where not in (b"BEFORE", b"AFTER"):
        raise CommandError(SYNTAX)
    lst = store.get(args[0], list)
    if lst is None:
        return 0
    try:
        at = lst.index(args[2])
    except ValueError:
        return -1
    lst.insert(at if where == b"BEFORE" else at + 1, args[3])
    return len(lst)


def cmd_lset(store: Store, args: list[bytes]) -> Status:
    if len(args) != 3:
        raise wrong_args("lset")
    lst = store.get(args[0], list)
    if lst is None:
        raise CommandError("ERR no such key")
    index = to_int(args[1])
    if not -len(lst) <= index < len(lst):
        raise CommandError("ERR index out of range")
    lst[index] = args[2]
    return OK


def cmd_lrem(store: Store, args: list[bytes]) -> int:
    if len(args) != 3:
        raise wrong_args("lrem")
    count, value = to_int(args[1]), args[2]
    lst = store.get(args[0], list)
    if lst is None:
        return 0
    indexes = [i for i, v in enumerate(lst) if v == value]
    if count > 0:
        indexes = indexes[:count]
    elif count < 0:
        indexes = indexes[count:]
    for i in reversed(indexes):
        del lst[i]
    store.drop_if_empty(args[0], lst)
    return len(indexes)


# --- sets ---------------------------------------------------------------------------------


def cmd_sadd(store: Store, args: list[bytes]) -> int:
    arity("sadd", args, 2)
    s = store.get_or_create(args[0], set)
    before = len(s)
    s.update(args[1:])
    return len(s) - before


def cmd_srem(store: Store, args: list[bytes]) -> int:
    arity("srem", args, 2)
    s = store.get(args[0], set)
    if s is None:
        return 0
    before = len(s)
    s.difference_update(args[1:])
    store.drop_if_empty(args[0], s)
    return before - len(s)


def cmd_smembers(store: Store, args: list[bytes]) -> list[bytes]:
    if len(args) != 1:
        raise wrong_args("smembers")
    return list(store.get(args[0], set) or ())


def cmd_scard(store: Store, args: list[bytes]) -> int:
    if len(args) != 1:
        raise wrong_args("scard")
    return len(store.get(args[0], set) or ())


def cmd_sismember(store: Store, args: list[bytes]) -> int:
    if len(args) != 2:
        raise wrong_args("sismember")
    return int(args[1] in (store.get(args[0], set) or ()))
