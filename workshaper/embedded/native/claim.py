"""claim_sub_keys.lua in Python (see the package's doc).

Statement by statement: the same commands on the same keys in the same order, the same reply,
the same claim record (so a call retried across the two modes answers alike) and the same
errors. Where Lua's numbers (doubles) or string formatting behave unlike Python's, the helpers
below do what Lua does; they only matter for absurd arguments (a batch of 2**60 items), and
cost the common case one comparison.

Each command works on the store's containers directly, doing exactly what the command of the
embedded command table would (the same container reads, writes and deletions, re-read per
command as each redis.call does): a claim is one of the hottest calls of the embedded backend.
Only what the fast path cannot take (absurd numbers) goes through ``call``.

A runtime error of the Lua (a corrupt claim record retried under its request id, a corrupt
crash window) answers with the message the embedded runtime gives, without its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from workshaper.embedded.containers import cmd_hincrby
from workshaper.embedded.native.numbers import (
    EXACT,
    Number,
    format_d,
    format_s,
    lua_number,
    lua_tonumber,
    number_arg,
    reply_number,
    whole,
)
from workshaper.embedded.native.partition import (
    FIRST_EXTRA_KEY,
    Partition,
    arg,
    bad_argument,
    call,
    key_error,
    now_ms,
    script_error,
)
from workshaper.embedded.store import CommandError, Store, ZSet

#: The SHA1 of the .lua source (with its includes) this module transcribes.
CLAIM_SHA1 = "554f0ff9ad9acb8785f55958f6e06c3ff00facba"

SCRIPT = "claim_sub_keys"
#: The script's bound on lease ms (2^41, ~70 years): past it SET ... PX would fail after the
#: writes began (a worker caps its lease at a day).
MAX_LEASE_MS = 2**41
_MODES = frozenset({b"d", b"b"})  # on exhausted: dead-letter or block

#: Where the Lua fails at run time: its lines as the embedded runtime names them (the source
#: without its shebang line).
_LINE_TOKEN, _LINE_SUB, _LINE_NEWLINE, _LINE_WINDOW = 439, 443, 452, 486

#: redis.call with a nil argument (KEYS[13] missing): the embedded runtime's error.
NIL_ARGUMENT = "ERR Lua redis lib command arguments must be strings or integers"

# decode_record's Lua patterns. %d is isdigit (ASCII in the C locale), as \d is on bytes.
_HEADER = re.compile(rb"(\d+) (\d+)\n")  # '^(%d+) (%d+)\n()' at `from`
_LENGTH = re.compile(rb"(\d+):")  # '^(%d+):()' at pos
_LINE = re.compile(rb"\n(\d+) ([\d|]*) (\d+)")  # gmatch '\n(%d+) ([%d|]*) (%d+)'


# --- the arguments -----------------------------------------------------------------------------


@dataclass(slots=True)
class Arguments:
    """ARGV, checked in the script's order (each failure is the script's bad_argument)."""

    worker: bytes
    request_id: bytes
    max_leases: Number
    lease_ms: Number
    batch: bytes
    max_attempts: bytes
    mode: bytes
    queue_prefix: bytes
    #: math.max(tonumber(batch), 1): entries read per lease (1 while a crash window is open)
    first_read: Number

    @classmethod
    def parse(cls, argv: list[bytes]) -> Arguments:
        """The checked arguments, or the script's error for the first bad one."""
        if len(argv) >= 8:  # the common case: every check passes on plain digits
            worker, request_id, raw_leases, raw_lease_ms, batch, max_attempts, mode, prefix = argv[
                :8
            ]
            if (
                worker
                and request_id
                and raw_leases.isdigit()
                and raw_lease_ms.isdigit()
                and batch.isdigit()
                and max_attempts.isdigit()
                and mode in _MODES
                and prefix
            ):
                max_leases, lease_ms, first_read = int(raw_leases), int(raw_lease_ms), int(batch)
                if (
                    1 <= max_leases <= EXACT
                    and 1 <= lease_ms <= MAX_LEASE_MS
                    and first_read <= EXACT
                ):
                    return cls(
                        worker,
                        request_id,
                        max_leases,
                        lease_ms,
                        batch,
                        max_attempts,
                        mode,
                        prefix,
                        max(first_read, 1),
                    )
        return cls.checked(argv)

    @classmethod
    def checked(cls, argv: list[bytes]) -> Arguments:
        """Every check of the script, in its order, for any arguments."""
        worker, request_id, raw_leases, raw_lease_ms, batch, max_attempts, mode, queue_prefix = (
            arg(argv, i) for i in range(8)
        )
        if not worker:  # nil or '' (the Lua tests both)
            raise bad_argument(SCRIPT, "worker id", worker)
        if not request_id:
            raise bad_argument(SCRIPT, "request id", request_id)
        max_leases, lease_ms = lua_tonumber(raw_leases), lua_tonumber(raw_lease_ms)
        if not whole(max_leases, 1):
            raise bad_argument(SCRIPT, "max_leases", raw_leases)
        if not whole(lease_ms, 1) or lease_ms > MAX_LEASE_MS:
            raise bad_argument(SCRIPT, "lease ms", raw_lease_ms)
        if batch is None or not batch.isdigit():  # '^%d+$' (isdigit: b"" is not digits)
            raise bad_argument(SCRIPT, "batch", batch)
        if max_attempts is None or not max_attempts.isdigit():
            raise bad_argument(SCRIPT, "max_attempts", max_attempts)
        if mode not in _MODES:
            raise bad_argument(SCRIPT, "on exhausted", mode)
        if not queue_prefix:
            raise bad_argument(SCRIPT, "queue key prefix", queue_prefix)
        assert max_leases is not None and lease_ms is not None  # whole() said so
        return cls(
            worker,
            request_id,
            lua_number(max_leases),
            lua_number(lease_ms),
            batch,
            max_attempts,
            mode,
            queue_prefix,
            max(lua_number(int(batch)), 1),
        )


# --- the script --------------------------------------------------------------------------------


def claim_sub_keys(store: Store, keys: list[bytes], argv: list[bytes]) -> list[Any]:
    """{ready_left, sub1, token1, attempts1, exact1, count1, entry1..., sub2, ...}."""
    args = Arguments.parse(argv)
    if len(keys) <= FIRST_EXTRA_KEY:  # GET of a nil KEYS[13] (or of nil fixed keys)
        raise CommandError(NIL_ARGUMENT)
    record_key = keys[FIRST_EXTRA_KEY]
    previous: bytes | None = store.get(record_key, bytes)  # GET
    if previous is not None:
        newline = previous.find(b"\n")
        if newline < 0:
            raise runtime_error(
                _LINE_NEWLINE, "attempt to perform arithmetic on local 'newline' (a nil value)"
            )
        if previous[:newline] == args.request_id:
            return with_first_batches(store, args, decode_record(previous, newline + 1))
    part = Partition(store, keys)
    size = wrong_type(part)
    reads = read_claim(part, args, size)
    reply: list[Any] = [size[0] - len(reads.popped)]
    # The writes: nothing before this line wrote. The token counter first: a corrupt one fails
    # HINCRBY before anything else.
    first_token: Number = 0
    if reads.subs:
        n = len(reads.subs)
        first_token = lua_number(cmd_hincrby(store, [part.meta, b"token", b"%d" % n])) - n + 1
    if reads.popped:
        ltrim_head(store, part.ready, len(reads.popped))
    if reads.subs:
        write_leases(part, args, reads, reply, first_token)
    record = args.request_id + b"\n" + encode_record(reply[0], first_token, reads)
    set_px(store, record_key, record, max(args.lease_ms * 2, 60000))
    return reply


def runtime_error(line: int, message: str) -> CommandError:
    """A Lua runtime error of the script at ``line``."""
    return script_error(CLAIM_SHA1, f"user_script:{line}: {message}")


#: The keys a claim writes, or reads after its first write, and their kinds: what wrong_type
#: probes, in the script's order (HLEN, ZCARD or LLEN).
_PROBED = (("ready", list), ("owners", dict), ("meta", dict), ("leases", ZSet),
           ("attempts", dict), ("exact", dict))  # fmt: skip


def wrong_type(part: Partition) -> tuple[int, int, int]:
    """partition.lua's wrong_type over the claim's keys: the error naming the first key of the
    wrong type, else the sizes of `ready`, `attempts` and `exact` (the ones the claim uses)."""
    get = part.store.get
    sizes: list[int] = []
    for name, kind in _PROBED:
        key: bytes = getattr(part, name)
        try:
            sizes.append(len(get(key, kind) or ()))
        except CommandError as exc:
            raise key_error(SCRIPT, key, exc) from None
    return sizes[0], sizes[4], sizes[5]


@dataclass(slots=True)
class Reads:
    """What a claim reads before its first write (the Lua's locals of the same names)."""

    popped: list[bytes]  # the head of `ready`: what the LTRIM takes off
    subs: list[bytes]  # those not leased already: the new leases
    attempts: list[bytes | None]  # per lease: HMGET of `attempts` (all nil when it is empty)
    exact: list[bytes | None]  # per lease: HMGET of `exact` (all nil when it is empty)
    entries: list[list[bytes]]  # per lease: the first entries of its list
    #: Was `attempts` or `exact` read (else no lease has a line in the claim record)?
    hashes_read: bool = False


def read_claim(part: Partition, args: Arguments, size: tuple[int, int, int]) -> Reads:
    """Every read of a claim before its first write: the head of `ready`, who owns those sub
    keys, their attempts and crash windows, and the first entries of each new lease's list."""
    store = part.store
    popped = lrange(store, part.ready, args.max_leases)
    reads = Reads(popped, [], [], [], [])
    if not popped:
        return reads
    # A sub key is in `ready` only when unleased; the check makes a double lease impossible.
    owned = hmget(store, part.owners)
    subs = reads.subs = [sub for sub in popped if owned(sub) is None]
    # An empty hash is not read (the Lua skips the HMGET): nil for every sub key.
    reads.attempts = reads.exact = [None] * len(subs)
    if subs and size[1] > 0:
        reads.attempts = list(map(hmget(store, part.attempts), subs))
        reads.hashes_read = True
    if subs and size[2] > 0:
        reads.exact = list(map(hmget(store, part.exact), subs))
        reads.hashes_read = True
    prefix, first_read = args.queue_prefix, args.first_read
    if reads.hashes_read:
        counts = [_read_count(first_read, window) for window in reads.exact]
    else:
        counts = [first_read] * len(subs)
    reads.entries = read_lists(store, [prefix + sub for sub in subs], counts)
    return reads


def _read_count(first_read: Number, window: bytes | None) -> Number:
    """How many entries a lease's first read takes: one while its crash window is open
    (``tonumber(exact[j] or '0') > 0``), else the batch."""
    if window is None:
        return first_read
    left = lua_tonumber(window)
    if left is None:  # `0 < nil` (Lua compiles `a > b` as `b < a`)
        raise runtime_error(_LINE_WINDOW, "attempt to compare number with nil")
    return 1 if left > 0 else first_read


def read_lists(store: Store, lists: list[bytes], counts: list[Number]) -> list[list[bytes]]:
    """The claim's reads of the first batches (as partition.lua's read_lists):
    ``LRANGE list 0 <'%d' of count - 1>`` of each list with pcall, so a list of the wrong type
    fails the call naming it, before any write."""
    reads: list[list[bytes]] = []
    get = store.get
    for key, count in zip(lists, counts, strict=True):
        try:
            if type(count) is int:  # count >= 1: LRANGE 0 count-1 is the slice [:count]
                value: list[bytes] | None = get(key, list)
                reads.append([] if value is None else value[:count])
            else:  # a double: its '%d' may be LONG_MIN (nothing read)
                reads.append(call(store, b"LRANGE", key, b"0", format_d(count - 1)))
        except CommandError as exc:
            raise key_error(SCRIPT, key, exc) from None
    return reads


def write_leases(
    part: Partition, args: Arguments, reads: Reads, reply: list[Any], first_token: Number
) -> None:
    """Lease each new sub key (consecutive tokens from ``first_token``, a deadline, an owner
    record) and append its part of the reply."""
    store, subs, n = part.store, reads.subs, len(reads.subs)
    # now_ms() + lease_ms as a double: the exact sum of two ints, rounded once, is what IEEE
    # addition gives.
    now = now_ms(store)
    deadline = format_d(lua_number(now + args.lease_ms))
    suffix = b"|-|" + args.batch + b"|" + args.max_attempts + b"|" + args.mode + b"|" + args.worker
    if type(first_token) is int:  # Lua's first_token + j - 1: exact below 2**53
        tokens = [b"%d" % token for token in range(first_token, first_token + n)]
    else:  # as doubles (j = i + 1)
        tokens = [format_d(first_token + (i + 1) - 1) for i in range(n)]
    if reads.hashes_read:
        for sub, token, first, tried, window in zip(
            subs, tokens, reads.entries, reads.attempts, reads.exact, strict=True
        ):
            reply += (
                sub,
                token,
                b"" if tried is None else tried,  # "" stays "" (a Lua string is true)
                b"0" if window is None else window,
                len(first),
            )
            reply += first
    else:  # no attempts and no crash window: "" and "0" for every lease
        for sub, token, first in zip(subs, tokens, reads.entries, strict=True):
            reply += (sub, token, b"", b"0", len(first))
            reply += first
    zadd(store, part.leases, float(deadline), subs)
    hset(store, part.owners, zip(subs, [token + suffix for token in tokens], strict=True))


# --- the commands, on the containers -------------------------------------------------------------


def lrange(store: Store, key: bytes, count: Number) -> list[bytes]:
    """``LRANGE key 0 count-1`` with a number argument (count >= 1)."""
    if type(count) is not int:
        result: list[bytes] = call(store, b"LRANGE", key, b"0", number_arg(count - 1))
        return result
    value: list[bytes] | None = store.get(key, list)
    return [] if value is None else value[:count]


def hmget(store: Store, key: bytes) -> Any:
    """HMGET of a hash, as a function of the field: ``get`` of the hash (or of {} when it does
    not exist, as the command reads it)."""
    value: dict[bytes, bytes] | None = store.get(key, dict)
    return (value or {}).get


def ltrim_head(store: Store, key: bytes, count: int) -> None:
    """``LTRIM key <count> -1``: the first ``count`` entries go; a list left empty is deleted."""
    value: list[bytes] | None = store.get(key, list)
    if value is None:
        return
    del value[:count]
    store.drop_if_empty(key, value)


def zadd(store: Store, key: bytes, score: float, members: list[bytes]) -> None:
    """``ZADD key score member [score member ...]``, one score for all; wakes a blocked
    BZPOPMIN on the key as the command does."""
    value: ZSet | None = store.get(key, ZSet)
    if value is None:
        value = store.data[key] = ZSet()
    # The members new to the set go into its order in one update (one sort, not a search per
    # member); a member already there moves as ZSet.add moves it; a repeated one is there.
    scores, fresh = value.scores, []
    for member in members:
        old = scores.get(member)
        if old is None:
            scores[member] = score
            fresh.append((score, member))
        elif old != score:
            value.add(member, score)
    added = len(fresh)
    if added == 1:  # a one-lease claim: update() costs a sort and more for one member
        value.order.add(fresh[0])
    elif added:
        value.order.update(fresh)
    if added and key in store.waiters:
        store.changed.notify_all()


def hset(store: Store, key: bytes, pairs: Iterable[tuple[bytes, bytes]]) -> None:
    """``HSET key field value [field value ...]``."""
    value: dict[bytes, bytes] = store.get_or_create(key, dict)
    value.update(pairs)


def set_px(store: Store, key: bytes, value: bytes, ms: Number) -> None:
    """``SET key value PX ms`` with a number argument."""
    if type(ms) is not int or not 0 < ms < 2**63:  # the command says what is wrong with it
        call(store, b"SET", key, value, b"PX", number_arg(ms))
        return
    deadline = store.clock() + ms / 1000
    store.data[key] = value
    store.set_deadline(key, deadline)


# --- the claim record --------------------------------------------------------------------------


def encode_record(ready_left: int, first_token: Number, reads: Reads) -> bytes:
    """``"<ready_left> <first token>\\n"``, each sub key as ``"<length>:<bytes>"``, then
    ``"\\n<j> <attempts> <exact>"`` for each lease j with attempts or a crash window."""
    parts = [format_d(ready_left) + b" " + format_d(first_token) + b"\n"]
    parts += [b"%d:%s" % (len(sub), sub) for sub in reads.subs]
    if not reads.hashes_read:  # every attempts[j] and exact[j] is nil: no line
        return b"".join(parts)
    for j, (tried, window) in enumerate(zip(reads.attempts, reads.exact, strict=True), 1):
        if tried is not None or window is not None:
            shown_tried = format_s(tried) if tried is not None else b""
            shown_window = format_s(window) if window is not None else b"0"
            parts.append(b"\n%d %s %s" % (j, shown_tried, shown_window))
    return b"".join(parts)


def decode_record(s: bytes, start: int) -> list[Any]:
    """The answer {ready_left, sub1, token1, attempts1, exact1, sub2, ...} of a record (from
    its byte ``start``, after the request id)."""
    header = _HEADER.match(s, start)
    if header is None:
        _decode_fails(s)
    ready_left, first_token = lua_number(int(header[1])), lua_number(int(header[2]))
    answer: list[Any] = [reply_number(ready_left)]
    pos = header.end()
    subs = 0
    while (length := _LENGTH.match(s, pos)) is not None:
        subs += 1
        body = length.end()
        pos = body + int(length[1])
        answer += (s[body:pos], format_d(first_token + subs - 1), b"", b"0")
    for line in _LINE.finditer(s, pos):
        j = int(line[1])
        if 1 <= j <= subs:
            answer[4 * j - 1], answer[4 * j] = line[2], line[3]
        elif j == 0:  # answer[0] (not in the reply) and answer[1]: ready_left becomes exact
            answer[0] = line[3]
        # A line past the record's sub keys (only a foreign writer makes one) would leave a
        # hole in Lua's table, whose length then depends on Lua's table layout: not followed.
    return answer


def _decode_fails(s: bytes) -> NoReturn:
    """decode_record on a record without its header line: Lua fails, in one of two ways."""
    if _LENGTH.match(s) is not None:  # '^(%d+):()' from nil: from the record's first byte
        raise runtime_error(_LINE_TOKEN, "attempt to perform arithmetic on a nil value")
    raise runtime_error(_LINE_SUB, "bad argument #2 to 'sub' (number expected, got nil)")


def with_first_batches(store: Store, args: Arguments, answer: list[Any]) -> list[Any]:
    """The reply of a retried call: each lease of the record's answer followed by the first
    entries of its list, read now (the lease keeps everyone else off the list)."""
    reply: list[Any] = [answer[0]]
    for i in range(1, len(answer), 4):
        sub, token, tried, window = answer[i : i + 4]
        take = 1 if int(window) > 0 else args.first_read
        entries = lrange(store, args.queue_prefix + sub, take)
        reply += (sub, token, tried, window, len(entries), *entries)
    return reply
