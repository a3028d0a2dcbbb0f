"""Embedded commands on sorted sets."""

from __future__ import annotations

import math
from typing import Any

from workshaper.embedded.protocol import (
    MIN_MAX_NOT_FLOAT,
    SYNTAX,
    Pairs,
    arity,
    span,
    to_float,
    to_int,
    wrong_args,
)
from workshaper.embedded.store import CommandError, Store, ZSet

# --- sorted sets --------------------------------------------------------------------------


def cmd_zadd(store: Store, args: list[bytes]) -> Any:
    """ZADD key [NX | XX] [GT | LT] [CH] [INCR] score member [score member ...]."""
    arity("zadd", args, 3)
    if args[1][:1].isdigit() and len(args) % 2:  # no flag (flags are letters): plain pairs
        return _zadd_plain(store, args)
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
    if added and args[0] in store.waiters:
        store.changed.notify_all()
    if b"INCR" in flags:
        return result
    return changed if b"CH" in flags else added


def _zadd_plain(store: Store, args: list[bytes]) -> int:
    """ZADD key score member [score member ...]: the form the scripts use most."""
    pairs = args[1:]
    scores = [to_float(pairs[j]) for j in range(0, len(pairs), 2)]
    z = store.get(args[0], ZSet)
    if z is None:
        z = store.data[args[0]] = ZSet()
    added = 0
    for score, member in zip(scores, pairs[1::2], strict=True):
        if z.add(member, score):
            added += 1
    if added and args[0] in store.waiters:
        store.changed.notify_all()
    return added


def cmd_zrem(store: Store, args: list[bytes]) -> int:
    arity("zrem", args, 2)
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
    arity("zrange", args, 3)
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
    lo, hi = span(len(z), start, stop)
    return _with_scores(list(z.order.islice(lo, hi)), with_scores)


def cmd_zrangebyscore(store: Store, args: list[bytes]) -> list[Any]:
    arity("zrangebyscore", args, 3)
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
    arity("zpopmin", args, 1)
    count = to_int(args[1]) if len(args) > 1 else 1
    popped = zpopmin(store, args[0], count)
    if len(args) == 1:
        return [popped[0][1], popped[0][0]] if popped else []
    return Pairs([member, score] for score, member in popped)


def cmd_zcount(store: Store, args: list[bytes]) -> int:
    if len(args) != 3:
        raise wrong_args("zcount")
    z = store.get(args[0], ZSet)
    if z is None:
        _score_bound(args[1]), _score_bound(args[2])
        return 0
    return len(_by_score(z, args[1], args[2], 0, -1))


def cmd_zremrangebyscore(store: Store, args: list[bytes]) -> int:
    if len(args) != 3:
        raise wrong_args("zremrangebyscore")
    z = store.get(args[0], ZSet)
    if z is None:
        _score_bound(args[1]), _score_bound(args[2])
        return 0
    doomed = _by_score(z, args[1], args[2], 0, -1)
    for _, member in doomed:
        z.remove(member)
    store.drop_if_empty(args[0], z)
    return len(doomed)
