"""The embedded backend's command table: the Redis commands WorkShaper's scripts and Python code
call, implemented over ``Store`` with Redis's semantics.

Each command takes the store and its arguments as bytes and returns its reply in the shape a
RESP3 connection reads it (what redis-py gets from a real server): ``int``, ``bytes``, ``None``,
``list``, ``dict`` (a map), ``float`` (a double) or ``Status`` (a simple string such as OK).
``lua_runtime.py`` turns the same replies into what ``redis.call`` gives a script (RESP2, as
Redis does for scripts). An error reply is a raised ``CommandError``.

Only what WorkShaper uses is here; an unknown command answers the same error Redis does, so a
script that starts calling a new command fails its tests on this backend until it is added.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from typing import Any

from workshaper.embedded.store import TYPE_NAMES, CommandError, Store, ZSet


class Status(bytes):
    """A simple-string reply (+OK, +PONG)."""


class Pairs(list):  # type: ignore[type-arg]
    """(member, score) pairs (WITHSCORES): nested in RESP3, one flat array in RESP2."""


OK = Status(b"OK")
PONG = Status(b"PONG")

Command = Callable[[Store, list[bytes]], Any]

NOT_INTEGER = "ERR value is not an integer or out of range"
NOT_FLOAT = "ERR value is not a valid float"
MIN_MAX_NOT_FLOAT = "ERR min or max is not a float"
SYNTAX = "ERR syntax error"


def wrong_args(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name.lower()}' command")


def to_int(raw: bytes) -> int:
    """Redis's string-to-integer: optional minus sign, decimal digits, within 64 bits."""
    if not re.fullmatch(rb"-?(0|[1-9][0-9]*)", raw):
        raise CommandError(NOT_INTEGER)
    value = int(raw)
    if not -(2**63) <= value < 2**63:
        raise CommandError(NOT_INTEGER)
    return value


def to_float(raw: bytes, error: str = NOT_FLOAT) -> float:
    text = raw.strip().lower()
    if text in (b"inf", b"+inf", b"infinity", b"+infinity"):
        return math.inf
    if text in (b"-inf", b"-infinity"):
        return -math.inf
    try:
        value = float(raw)
    except ValueError:
        raise CommandError(error) from None
    if math.isnan(value) or raw != raw.strip():
        raise CommandError(error)
    return value


def format_double(value: float) -> bytes:
    """A score as Redis writes it in a string reply (RESP2, and so in scripts): %.17g."""
    if value == 0:
        return b"0"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    return b"%.17g" % value


def _arity(name: str, args: list[bytes], least: int, even_after: int | None = None) -> None:
    if len(args) < least or (even_after is not None and (len(args) - even_after) % 2):
        raise wrong_args(name)


# --- keys ---------------------------------------------------------------------------------


def cmd_del(store: Store, args: list[bytes]) -> int:
    _arity("del", args, 1)
    return sum(store.delete(key) for key in args if store.lookup(key) is not None)


def cmd_exists(store: Store, args: list[bytes]) -> int:
    _arity("exists", args, 1)
    return sum(1 for key in args if store.lookup(key) is not None)


def cmd_type(store: Store, args: list[bytes]) -> Status:
    _arity("type", args, 1)
    value = store.lookup(args[0])
    return Status(b"none" if value is None else TYPE_NAMES[type(value)])


def _glob(pattern: bytes) -> Callable[[bytes], bool]:
    if pattern == b"*":
        return lambda key: True
    regex = re.compile(fnmatch.translate(pattern.decode("latin-1")).encode("latin-1"), re.S)
    return lambda key: regex.match(key) is not None


def cmd_keys(store: Store, args: list[bytes]) -> list[bytes]:
    _arity("keys", args, 1)
    match = _glob(args[0])
    return [key for key in store.live_keys() if match(key)]


def cmd_scan(store: Store, args: list[bytes]) -> list[Any]:
    """One pass over every key (cursor 0 in, cursor 0 out): a valid, if unpaged, SCAN."""
    _arity("scan", args, 1)
    pattern, kind = b"*", None
    i = 1
    while i < len(args):
        option = args[i].upper()
        if option == b"MATCH" and i + 1 < len(args):
            pattern = args[i + 1]
        elif option == b"COUNT" and i + 1 < len(args):
            to_int(args[i + 1])
        elif option == b"TYPE" and i + 1 < len(args):
            kind = args[i + 1].lower()
        else:
            raise CommandError(SYNTAX)
        i += 2
    match = _glob(pattern)
    keys = [
        key
        for key in store.live_keys()
        if match(key) and (kind is None or TYPE_NAMES[type(store.data[key])] == kind)
    ]
    return [b"0", keys]


def cmd_pexpire(store: Store, args: list[bytes]) -> int:
    _arity("pexpire", args, 2)
    ms = to_int(args[1])
    if store.lookup(args[0]) is None:
        return 0
    store.set_deadline(args[0], store.clock() + ms / 1000)
    return 1


def cmd_expire(store: Store, args: list[bytes]) -> int:
    _arity("expire", args, 2)
    return cmd_pexpire(store, [args[0], b"%d" % (to_int(args[1]) * 1000)])


def cmd_pttl(store: Store, args: list[bytes]) -> int:
    _arity("pttl", args, 1)
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
    _arity("set", args, 2)
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


# --- hashes -------------------------------------------------------------------------------


def cmd_hset(store: Store, args: list[bytes]) -> int:
    _arity("hset", args, 3, even_after=1)
    h = store.get_or_create(args[0], dict)
    added = 0
    for i in range(1, len(args), 2):
        if args[i] not in h:
            added += 1
        h[args[i]] = args[i + 1]
    return added


def cmd_hget(store: Store, args: list[bytes]) -> bytes | None:
    if len(args) != 2:
        raise wrong_args("hget")
    h = store.get(args[0], dict)
    return None if h is None else h.get(args[1])


def cmd_hmget(store: Store, args: list[bytes]) -> list[bytes | None]:
    _arity("hmget", args, 2)
    h = store.get(args[0], dict) or {}
    return [h.get(field) for field in args[1:]]


def cmd_hdel(store: Store, args: list[bytes]) -> int:
    _arity("hdel", args, 2)
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
    _arity(name, args, 2)
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


def _span(length: int, start: int, stop: int) -> tuple[int, int]:
    """Redis's inclusive [start, stop] with negative indexes, as a Python slice's bounds."""
    if start < 0:
        start = max(0, length + start)
    if stop < 0:
        stop = length + stop
    stop = min(stop, length - 1)
    if start > stop:
        return 0, 0
    return start, stop + 1


def cmd_lrange(store: Store, args: list[bytes]) -> list[bytes]:
    if len(args) != 3:
        raise wrong_args("lrange")
    lst = store.get(args[0], list)
    start, stop = to_int(args[1]), to_int(args[2])
    if lst is None:
        return []
    lo, hi = _span(len(lst), start, stop)
    values: list[bytes] = lst[lo:hi]
    return values


def cmd_ltrim(store: Store, args: list[bytes]) -> Status:
    if len(args) != 3:
        raise wrong_args("ltrim")
    lst = store.get(args[0], list)
    start, stop = to_int(args[1]), to_int(args[2])
    if lst is None:
        return OK
    lo, hi = _span(len(lst), start, stop)
    del lst[hi:]
    del lst[:lo]
    store.drop_if_empty(args[0], lst)
    return OK


def cmd_lpop(store: Store, args: list[bytes]) -> Any:
    _arity("lpop", args, 1)
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
    _arity("sadd", args, 2)
    s = store.get_or_create(args[0], set)
    before = len(s)
    s.update(args[1:])
    return len(s) - before


def cmd_srem(store: Store, args: list[bytes]) -> int:
    _arity("srem", args, 2)
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


# --- sorted sets --------------------------------------------------------------------------


def cmd_zadd(store: Store, args: list[bytes]) -> Any:
    """ZADD key [NX | XX] [GT | LT] [CH] [INCR] score member [score member ...]."""
    _arity("zadd", args, 3)
    flags: set[bytes] = set()
    i = 1
    while i < len(args) and args[i].upper() in (b"NX", b"XX", b"GT", b"LT", b"CH", b"INCR"):
        flags.add(args[i].upper())
        i += 1
    pairs = args[i:]
    if not pairs or len(pairs) % 2:
        raise CommandError(SYNTAX)
    if b"NX" in flags and (b"XX" in flags or b"GT" in flags or b"LT" in flags):
        raise CommandError(
            "ERR GT, LT, and/or NX options at the same time are not compatible"
            if b"XX" not in flags
            else "ERR XX and NX options at the same time are not compatible"
        )
    if b"INCR" in flags and len(pairs) != 2:
        raise CommandError("ERR INCR option supports a single increment-element pair")
    scores = [to_float(pairs[j]) for j in range(0, len(pairs), 2)]
    z = store.get(args[0], ZSet)
    if z is None:
        if b"XX" in flags:
            return None if b"INCR" in flags else 0
        z = store.data[args[0]] = ZSet()
    changed = added = 0
    result: float | None = None
    for score, member in zip(scores, pairs[1::2], strict=True):
        old = z.scores.get(member)
        if old is None:
            if b"XX" in flags:
                continue
        elif b"NX" in flags:
            continue
        new = score + (old or 0.0) if b"INCR" in flags else score
        if old is not None and ((b"GT" in flags and new <= old) or (b"LT" in flags and new >= old)):
            continue
        if math.isnan(new):
            raise CommandError("ERR resulting score is not a number (NaN)")
        result = new
        if z.add(member, new):
            added += 1
            changed += 1
        elif old != new:
            changed += 1
    store.drop_if_empty(args[0], z)
    if added and store.waiters:
        store.changed.notify_all()
    if b"INCR" in flags:
        return result
    return changed if b"CH" in flags else added


def cmd_zrem(store: Store, args: list[bytes]) -> int:
    _arity("zrem", args, 2)
    z = store.get(args[0], ZSet)
    if z is None:
        return 0
    removed = sum(1 for member in args[1:] if z.remove(member))
    store.drop_if_empty(args[0], z)
    return removed


def cmd_zscore(store: Store, args: list[bytes]) -> float | None:
    if len(args) != 2:
        raise wrong_args("zscore")
    z = store.get(args[0], ZSet)
    return None if z is None else z.scores.get(args[1])


def cmd_zcard(store: Store, args: list[bytes]) -> int:
    if len(args) != 1:
        raise wrong_args("zcard")
    return len(store.get(args[0], ZSet) or ())


def _score_bound(raw: bytes) -> tuple[float, bool]:
    """(value, exclusive) of a ZRANGEBYSCORE bound: 1.5, (1.5, -inf, +inf."""
    if raw.startswith(b"("):
        return to_float(raw[1:], MIN_MAX_NOT_FLOAT), True
    return to_float(raw, MIN_MAX_NOT_FLOAT), False


def _with_scores(pairs: list[tuple[float, bytes]], with_scores: bool) -> list[Any]:
    if with_scores:
        return Pairs([member, score] for score, member in pairs)
    return [member for _, member in pairs]


def _by_score(
    z: ZSet, low: bytes, high: bytes, offset: int, count: int
) -> list[tuple[float, bytes]]:
    lo, lo_open = _score_bound(low)
    hi, hi_open = _score_bound(high)
    out: list[tuple[float, bytes]] = []
    if count == 0:
        return out
    start = z.order.bisect_left((lo, b""))
    skipped = 0
    for score, member in z.order.islice(start):
        if (lo_open and score <= lo) or score < lo:
            continue
        if score > hi or (hi_open and score >= hi):
            break
        if skipped < offset:
            skipped += 1
            continue
        out.append((score, member))
        if 0 < count == len(out):
            break
    return out


def _range_options(args: list[bytes], start: int) -> tuple[bool, int, int, bool, bool]:
    """(WITHSCORES, LIMIT offset, LIMIT count (-1: all), BYSCORE, REV) after ``start``."""
    with_scores = by_score = rev = False
    offset, count = 0, -1
    i = start
    while i < len(args):
        option = args[i].upper()
        if option == b"WITHSCORES":
            with_scores = True
        elif option == b"BYSCORE":
            by_score = True
        elif option == b"REV":
            rev = True
        elif option == b"LIMIT" and i + 2 < len(args):
            offset, count = to_int(args[i + 1]), to_int(args[i + 2])
            i += 2
        else:
            raise CommandError(SYNTAX)
        i += 1
    return with_scores, offset, count, by_score, rev


def cmd_zrange(store: Store, args: list[bytes]) -> list[Any]:
    """ZRANGE key start stop [BYSCORE] [REV] [LIMIT offset count] [WITHSCORES]."""
    _arity("zrange", args, 3)
    with_scores, offset, count, by_score, rev = _range_options(args, 3)
    if rev:
        raise CommandError("ERR ZRANGE REV is not supported by the embedded backend")
    z = store.get(args[0], ZSet)
    if by_score:
        return (
            []
            if z is None
            else _with_scores(_by_score(z, args[1], args[2], offset, count), with_scores)
        )
    if count != -1 or offset:
        raise CommandError(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        )
    start, stop = to_int(args[1]), to_int(args[2])
    if z is None:
        return []
    lo, hi = _span(len(z), start, stop)
    return _with_scores(list(z.order.islice(lo, hi)), with_scores)


def cmd_zrangebyscore(store: Store, args: list[bytes]) -> list[Any]:
    _arity("zrangebyscore", args, 3)
    with_scores, offset, count, _, _ = _range_options(args, 3)
    z = store.get(args[0], ZSet)
    if z is None:
        _score_bound(args[1]), _score_bound(args[2])
        return []
    return _with_scores(_by_score(z, args[1], args[2], offset, count), with_scores)


def zpopmin(store: Store, key: bytes, count: int) -> list[tuple[float, bytes]]:
    z = store.get(key, ZSet)
    if z is None:
        return []
    popped = list(z.order.islice(0, count))
    for _, member in popped:
        z.remove(member)
    store.drop_if_empty(key, z)
    return popped


def cmd_zpopmin(store: Store, args: list[bytes]) -> list[Any]:
    _arity("zpopmin", args, 1)
    count = to_int(args[1]) if len(args) > 1 else 1
    popped = zpopmin(store, args[0], count)
    if len(args) == 1:
        return [popped[0][1], popped[0][0]] if popped else []
    return Pairs([member, score] for score, member in popped)


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


COMMANDS: dict[bytes, Command] = {
    b"DEL": cmd_del,
    b"UNLINK": cmd_del,
    b"EXISTS": cmd_exists,
    b"TYPE": cmd_type,
    b"KEYS": cmd_keys,
    b"SCAN": cmd_scan,
    b"EXPIRE": cmd_expire,
    b"PEXPIRE": cmd_pexpire,
    b"PTTL": cmd_pttl,
    b"FLUSHALL": cmd_flushall,
    b"FLUSHDB": cmd_flushall,
    b"DBSIZE": cmd_dbsize,
    b"GET": cmd_get,
    b"SET": cmd_set,
    b"INCR": cmd_incr,
    b"INCRBY": cmd_incrby,
    b"HSET": cmd_hset,
    b"HGET": cmd_hget,
    b"HMGET": cmd_hmget,
    b"HDEL": cmd_hdel,
    b"HEXISTS": cmd_hexists,
    b"HINCRBY": cmd_hincrby,
    b"HGETALL": cmd_hgetall,
    b"HLEN": cmd_hlen,
    b"HKEYS": cmd_hkeys,
    b"RPUSH": cmd_rpush,
    b"LPUSH": cmd_lpush,
    b"LLEN": cmd_llen,
    b"LINDEX": cmd_lindex,
    b"LRANGE": cmd_lrange,
    b"LTRIM": cmd_ltrim,
    b"LPOP": cmd_lpop,
    b"LINSERT": cmd_linsert,
    b"LSET": cmd_lset,
    b"LREM": cmd_lrem,
    b"SADD": cmd_sadd,
    b"SREM": cmd_srem,
    b"SMEMBERS": cmd_smembers,
    b"SCARD": cmd_scard,
    b"SISMEMBER": cmd_sismember,
    b"ZADD": cmd_zadd,
    b"ZREM": cmd_zrem,
    b"ZSCORE": cmd_zscore,
    b"ZCARD": cmd_zcard,
    b"ZRANGE": cmd_zrange,
    b"ZRANGEBYSCORE": cmd_zrangebyscore,
    b"ZPOPMIN": cmd_zpopmin,
    b"TIME": cmd_time,
    b"PING": cmd_ping,
    b"ECHO": cmd_echo,
    b"SELECT": cmd_ok,
    b"CLIENT": cmd_ok,
    b"CONFIG": cmd_ok,
    b"INFO": cmd_info,
}

#: Commands a script may not call (they block or have no meaning inside a script).
NOT_IN_SCRIPTS = frozenset({b"BZPOPMIN", b"EVAL", b"EVALSHA", b"SCRIPT"})
