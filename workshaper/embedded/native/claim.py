"""claim_sub_keys.lua in Python (see the package's doc).

Statement by statement: the same commands on the same keys in the same order, the same reply,
the same claim record (so a call retried across the two modes answers alike) and the same
errors. Where Lua's numbers (doubles) or string formatting behave unlike Python's, the helpers
below do what Lua does; they only matter for absurd arguments (a batch of 2**60 items), and
cost the common case one comparison.

A runtime error of the Lua (a corrupt claim record retried under its request id) answers with
the message Lua gives, without Lua's position and traceback, as ``script_error`` words it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from workshaper.embedded.native.partition import (
    FIRST_EXTRA_KEY,
    Partition,
    bad_argument,
    call,
    key_error,
    script_error,
    tonumber,
)
from workshaper.embedded.store import CommandError, Store

#: The SHA1 of the .lua source (with its includes) this module transcribes.
CLAIM_SHA1 = "03c04ed667ca9a7814a08894bf2e99a08f24a261"

SCRIPT = "claim_sub_keys"

#: Lua numbers are doubles: integers up to this are exact, so Python ints agree with them.
EXACT = 2**53
INT64_MIN = -(2**63)

#: redis.call with a nil argument (KEYS[13] missing): the embedded runtime's error.
NIL_ARGUMENT = "ERR Lua redis lib command arguments must be strings or integers"

# decode_record's Lua patterns. %d is isdigit (ASCII in the C locale), as \d is on bytes.
_HEADER = re.compile(rb"(\d+) (\d+)\n")  # '^(%d+) (%d+)\n()' at `from`
_LENGTH = re.compile(rb"(\d+):")  # '^(%d+):()' at pos
_LINE = re.compile(rb"\n(\d+) ([\d|]*) (\d+)")  # gmatch '\n(%d+) ([%d|]*) (%d+)'

Number = int | float


# --- Lua's numbers and formats -----------------------------------------------------------------

#: C's isspace, which strtod skips before a number and Lua after it.
_C_SPACE = b" \t\n\r\f\v"
_NAN = re.compile(rb"nan(\([0-9a-z_]*\))?")


def lua_tonumber(value: bytes | None) -> Number | None:
    """Lua 5.1's ``tonumber`` of a string, which is C's strtod: partition.tonumber, plus what
    strtod reads and it does not (infinities, NaN, signed and fractional hexadecimal). A
    max_leases or lease ms of "inf" passes the script's checks."""
    number = tonumber(value)
    if number is not None or value is None:
        return number
    text = value.strip(_C_SPACE).lower()
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if body in (b"inf", b"infinity") or _NAN.fullmatch(body):
        return float(text.replace(b"infinity", b"inf").split(b"(")[0])
    if body.startswith(b"0x") and body[2:3] not in (b"+", b"-"):
        try:
            return float.fromhex(text.decode("ascii"))
        except ValueError:
            return None
    return None


def whole(number: Number | None, least: int) -> bool:
    """The script's ``whole(value, least)`` of a number read by lua_tonumber."""
    if number is None or math.isnan(number):  # floor(NaN) is NaN: never equal
        return False
    return (math.isinf(number) or number == math.floor(number)) and number >= least


def lua_number(value: int | float) -> Number:
    """A number as Lua holds it: past 2**53 an int becomes the double it rounds to, so the
    arithmetic after it rounds as Lua's does."""
    if type(value) is int and -EXACT <= value <= EXACT:
        return value
    return float(value)


def format_d(value: Number) -> bytes:
    """``string.format('%d', value)``: Lua 5.1 casts to a C long (truncating; out of range
    gives LONG_MIN on x86-64)."""
    if type(value) is int:
        return b"%d" % value
    if -(2.0**63) <= value < 2.0**63:
        return b"%d" % int(value)
    return b"%d" % INT64_MIN


def format_s(value: bytes) -> bytes:
    """``string.format('%s', value)``: Lua 5.1 copies a string of 100 bytes or more, and
    sprintf's a shorter one (which ends it at its first NUL)."""
    if len(value) >= 100:
        return value
    return value.split(b"\0", 1)[0]


def reply_number(value: Number) -> int:
    """A Lua number in a script's reply: truncated to an integer (LuaScripts._from_lua)."""
    if type(value) is int:
        return value
    if not -(2.0**63) <= value < 2.0**63:  # out of range, or NaN
        return INT64_MIN
    return int(value)


def number_arg(value: Number) -> bytes:
    """A Lua number passed to redis.call, as the embedded runtime makes it a string (lupa hands
    over an integral double within 64 bits as an int)."""
    if isinstance(value, int):
        return b"%d" % value
    if value.is_integer() and -(2.0**63) <= value < 2.0**63:
        return b"%d" % int(value)
    return repr(value).encode()


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
        worker, request_id, raw_leases, raw_lease_ms, batch, max_attempts, mode, queue_prefix = (
            _arg(argv, i) for i in range(8)
        )
        if not worker:  # nil or '' (the Lua tests both)
            raise bad_argument(SCRIPT, "worker id", worker)
        if not request_id:
            raise bad_argument(SCRIPT, "request id", request_id)
        max_leases, lease_ms = lua_tonumber(raw_leases), lua_tonumber(raw_lease_ms)
        if not whole(max_leases, 1):
            raise bad_argument(SCRIPT, "max_leases", raw_leases)
        if not whole(lease_ms, 1):
            raise bad_argument(SCRIPT, "lease ms", raw_lease_ms)
        if batch is None or not batch.isdigit():  # '^%d+$' (isdigit: b"" is not digits)
            raise bad_argument(SCRIPT, "batch", batch)
        if max_attempts is None or not max_attempts.isdigit():
            raise bad_argument(SCRIPT, "max_attempts", max_attempts)
        if mode not in (b"d", b"b"):
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


def _arg(argv: list[bytes], i: int) -> Any:
    """ARGV[i + 1], nil (None) past the end."""
    return argv[i] if i < len(argv) else None


# --- the script --------------------------------------------------------------------------------


def claim_sub_keys(store: Store, keys: list[bytes], argv: list[bytes]) -> list[Any]:
    """{ready_left, sub1, token1, attempts1, exact1, count1, entry1..., sub2, ...}."""
    args = Arguments.parse(argv)
    if len(keys) <= FIRST_EXTRA_KEY:  # GET of a nil KEYS[13] (or of nil fixed keys)
        raise CommandError(NIL_ARGUMENT)
    record_key = keys[FIRST_EXTRA_KEY]
    previous = call(store, b"GET", record_key)
    if previous is not None:
        newline = previous.find(b"\n")
        if newline < 0:
            raise script_error(
                CLAIM_SHA1, "attempt to perform arithmetic on local 'newline' (a nil value)"
            )
        if previous[:newline] == args.request_id:
            return with_first_batches(store, args, decode_record(previous, newline + 1))
    part = Partition(store, keys)
    size = part.wrong_type(
        SCRIPT, [part.ready, part.owners, part.meta, part.leases, part.attempts, part.exact]
    )
    reads = read_claim(part, args, size)
    reply: list[Any] = [size[part.ready] - len(reads.popped)]
    # The writes: nothing before this line wrote.
    if reads.popped:
        call(store, b"LPOP", part.ready, b"%d" % len(reads.popped))
    first_token: Number = 0
    if reads.subs:
        first_token = write_leases(part, args, reads, reply)
    record = encode_record(reply[0], first_token, reads.subs, reads.attempts, reads.exact)
    call(
        store,
        b"SET",
        record_key,
        args.request_id + b"\n" + record,
        b"PX",
        number_arg(max(args.lease_ms * 2, 60000)),
    )
    return reply


@dataclass(slots=True)
class Reads:
    """What a claim reads before its first write (the Lua's locals of the same names)."""

    popped: list[bytes]  # the head of `ready`: what the LPOP takes
    subs: list[bytes]  # those not leased already: the new leases
    attempts: list[bytes | None]  # per lease: HMGET of `attempts` (all nil when it is empty)
    exact: list[bytes | None]  # per lease: HMGET of `exact` (all nil when it is empty)
    entries: list[list[bytes]]  # per lease: the first entries of its list


def read_claim(part: Partition, args: Arguments, size: dict[bytes, int]) -> Reads:
    """Every read of a claim before its first write: the head of `ready`, who owns those sub
    keys, their attempts and crash windows, and the first entries of each new lease's list."""
    store = part.store
    popped: list[bytes] = call(store, b"LRANGE", part.ready, b"0", number_arg(args.max_leases - 1))
    reads = Reads(popped, [], [], [], [])
    if not popped:
        return reads
    # A sub key is in `ready` only when unleased; the check makes a double lease impossible.
    owned = call(store, b"HMGET", part.owners, *popped)
    subs = reads.subs = [sub for sub, owner in zip(popped, owned, strict=True) if owner is None]
    # An empty hash is not read (the Lua skips the HMGET): nil for every sub key.
    reads.attempts = [None] * len(subs)
    reads.exact = [None] * len(subs)
    if subs and size[part.attempts] > 0:
        reads.attempts = call(store, b"HMGET", part.attempts, *subs)
    if subs and size[part.exact] > 0:
        reads.exact = call(store, b"HMGET", part.exact, *subs)
    counts = [_read_count(args.first_read, window) for window in reads.exact]
    reads.entries = read_lists(store, [args.queue_prefix + sub for sub in subs], counts)
    return reads


def _read_count(first_read: Number, window: bytes | None) -> Number:
    """How many entries a lease's first read takes: one while its crash window is open
    (``tonumber(exact[j] or '0') > 0``), else the batch."""
    left = lua_tonumber(window if window is not None else b"0")
    if left is None:  # `0 < nil` (Lua compiles `a > b` as `b < a`)
        raise script_error(CLAIM_SHA1, "attempt to compare number with nil")
    return 1 if left > 0 else first_read


def read_lists(store: Store, lists: list[bytes], counts: list[Number]) -> list[list[bytes]]:
    """partition.lua's read_lists: ``LRANGE list 0 <'%d' of count - 1>`` of each list with
    pcall, so a list of the wrong type fails the call naming it, before any write."""
    reads: list[list[bytes]] = []
    for key, count in zip(lists, counts, strict=True):
        try:
            reads.append(call(store, b"LRANGE", key, b"0", format_d(count - 1)))
        except CommandError as exc:
            raise key_error(SCRIPT, key, exc) from None
    return reads


def write_leases(part: Partition, args: Arguments, reads: Reads, reply: list[Any]) -> Number:
    """Lease each new sub key (tokens from the partition's counter, a deadline, an owner
    record) and append its part of the reply; returns the first token."""
    store, subs, n = part.store, reads.subs, len(reads.subs)
    first_token = lua_number(call(store, b"HINCRBY", part.meta, b"token", b"%d" % n)) - n + 1
    # now_ms() + lease_ms as a double: the exact sum of two ints, rounded once, is what IEEE
    # addition gives.
    deadline = format_d(lua_number(part.now_ms() + args.lease_ms))
    suffix = b"|-|" + args.batch + b"|" + args.max_attempts + b"|" + args.mode + b"|" + args.worker
    deadlines: list[bytes] = []
    owners: list[bytes] = []
    for j, sub in enumerate(subs, 1):  # j as in the Lua: tokens add and subtract as doubles
        token = format_d(first_token + j - 1)
        deadlines += (deadline, sub)
        owners += (sub, token + suffix)
        first = reads.entries[j - 1]
        tried, window = reads.attempts[j - 1], reads.exact[j - 1]
        reply += (
            sub,
            token,
            b"" if tried is None else tried,
            b"0" if window is None else window,
            len(first),
            *first,
        )
    call(store, b"ZADD", part.leases, *deadlines)
    call(store, b"HSET", part.owners, *owners)
    return first_token


# --- the claim record --------------------------------------------------------------------------


def encode_record(
    ready_left: int,
    first_token: Number,
    subs: list[bytes],
    attempts: list[bytes | None],
    exact: list[bytes | None],
) -> bytes:
    """``"<ready_left> <first token>\\n"``, each sub key as ``"<length>:<bytes>"``, then
    ``"\\n<j> <attempts> <exact>"`` for each lease j with attempts or a crash window."""
    parts = [format_d(ready_left) + b" " + format_d(first_token) + b"\n"]
    parts += [b"%d:%s" % (len(sub), sub) for sub in subs]
    for j, (tried, window) in enumerate(zip(attempts, exact, strict=True), 1):
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
        raise script_error(CLAIM_SHA1, "attempt to perform arithmetic on a nil value")
    raise script_error(CLAIM_SHA1, "bad argument #2 to 'sub' (number expected, got nil)")


def with_first_batches(store: Store, args: Arguments, answer: list[Any]) -> list[Any]:
    """The reply of a retried call: each lease of the record's answer followed by the first
    entries of its list, read now (the lease keeps everyone else off the list)."""
    reply: list[Any] = [answer[0]]
    for i in range(1, len(answer), 4):
        sub, token, tried, window = answer[i : i + 4]
        take = 1 if int(window) > 0 else args.first_read
        entries = call(store, b"LRANGE", args.queue_prefix + sub, b"0", number_arg(take - 1))
        reply += (sub, token, tried, window, len(entries), *entries)
    return reply
