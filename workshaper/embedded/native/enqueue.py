"""enqueue_items.lua in Python (see the package's doc).

Statement by statement: the same commands on the same keys in the same order, the same replies
(the integer n when the fast path took every item, else one status per item) and the same
``request`` record in meta, so a call re-sent after a lost reply gets its first answer whichever
mode ran it first.

The script's arguments are read as Lua reads ``ARGV[i]``: 1-based, nil past the end (``_arg``),
since Lua's tables have no negative or wrapping indexes. Where Lua fails at run time (a number
argument that is no number) the call fails with Lua's message, without its position and stack
traceback. A malformed call that ``scripts.enqueue_items`` never makes (group numbers or counts
that do not match the entries sent, offsets that are not whole numbers) fails too, but not
necessarily at the same statement.
"""

from __future__ import annotations

import math

from workshaper.embedded.native.partition import (
    Partition,
    call,
    entry_offset,
    fmt,
    script_error,
    tonumber,
)
from workshaper.embedded.store import CommandError, Store

#: The SHA1 of enqueue_items.lua (with its include) this module transcribes.
ENQUEUE_SHA1 = "9baf6994e754de5e7839e11a0b19bffa38c5c933"

SCRIPT = "enqueue_items"
ACCEPTED, DUPLICATE, ACKED, FULL, BEING_ACKED, LOST_WRITES = range(6)
#: What redis.call answers for a nil argument (unpack of a range past ARGV's end).
NIL_ARGUMENT = "ERR Lua redis lib command arguments must be strings or integers"

Number = int | float
Reply = int | list[int] | None


def enqueue_items(store: Store, keys: list[bytes], argv: list[bytes]) -> Reply:
    """Enqueue a batch of items into one partition (enqueue_items.lua's header says how)."""
    return _Enqueue(Partition(store, keys), keys, argv).run()


class _Enqueue:
    """One run of the script: its arguments, what it read, and both its paths."""

    def __init__(self, part: Partition, keys: list[bytes], argv: list[bytes]) -> None:
        self.part = part
        self.keys = keys
        self.argv = argv
        self.request = _arg(argv, 1)
        self.max_in_queue = tonumber(_arg(argv, 2))
        self.expected_highest = tonumber(_arg(argv, 3))
        n = tonumber(_arg(argv, 4))
        if n is None:  # `GROUP_OF = 5 + n`, before the first command
            raise script_error(ENQUEUE_SHA1, "attempt to perform arithmetic on local 'n' (nil)")
        self.n: Number = n
        self.groups = tonumber(_arg(argv, 5))
        # Filled in as the script goes.
        self.lists: list[bytes] = []  # group j's queue list: lists[j - 1]
        self.size: dict[bytes, int] = {}  # each probed fixed key's size
        self.group_sub: dict[Number, bytes | None] = {}
        self.group_first: dict[Number, Number] = {}  # group -> ARGV index of its first entry
        self.new_heads: list[bytes] = []  # ZADD's score, member pairs
        self.new_subs: list[bytes] = []

    def run(self) -> Reply:
        part, store, n = self.part, self.part.store, self.n
        meta = call(store, b"HMGET", part.meta, b"acked", b"offer", b"max", b"request")
        if meta[3] is not None:
            replayed = _replayed(self.request, meta[3])
            if replayed is not _NOT_REPLAYED:
                return replayed  # type: ignore[return-value]  # an int, None or statuses
        acked = tonumber(meta[0] if meta[0] is not None else b"-1")
        floor = _lua_max(acked, tonumber(meta[1] if meta[1] is not None else b"-1"))
        highest = tonumber(meta[2] if meta[2] is not None else b"-1")
        if _lt(highest, self.expected_highest):
            return [LOST_WRITES] * _times(n)
        in_queue: int = call(store, b"LLEN", part.accepted)
        if self.groups is None:
            raise script_error(ENQUEUE_SHA1, "'for' limit must be a number")
        self.lists = [_key(self.keys, 12 + j) for j in range(1, _times(self.groups) + 1)]
        fixed = [part.heads, part.late, part.ready, part.owners, part.clock]
        self.size = part.wrong_type(SCRIPT, fixed, self.lists)
        self._read_groups()
        if n > 0 and self._fast_path_applies(in_queue, _lua_max(highest, floor)):
            return self._fast_path()
        general = _General(
            part,
            self.argv,
            n=n,
            acked=acked,
            floor=floor,
            highest=highest,
            highest_s=meta[2],
            in_queue=in_queue,
            max_in_queue=self.max_in_queue,
        )
        statuses = general.decide(self.group_first)
        self._push_taken(general.taken)
        highest_s = general.highest_s
        if highest_s is not None and highest_s != meta[2]:
            call(store, b"HSET", part.meta, b"max", highest_s)
        concat = b"".join(b"%d" % status for status in statuses)
        call(store, b"HSET", part.meta, b"request", _concat(self.request, b"|", concat))
        if highest_s is not None and (self.new_subs or highest_s != meta[2]):
            _record_clock(part, highest_s)
        return statuses

    def _read_groups(self) -> None:
        """Each group's sub key and the ARGV index of its first entry."""
        argv = self.argv
        a = 6 + 2 * self.n
        for j in range(1, _times(self.groups or 0) + 1):
            self.group_sub[j] = _arg(argv, a)
            self.group_first[j] = a + 2
            count = tonumber(_arg(argv, a + 1))
            if count is None:
                raise script_error(ENQUEUE_SHA1, "attempt to perform arithmetic on a nil value")
            a = a + 2 + count

    # --- the fast path ----------------------------------------------------------------------

    def _fast_path_applies(self, in_queue: int, previous: Number) -> bool:
        """Offsets strictly increasing above every accepted one, and room for all of them."""
        if _lt(self.max_in_queue, in_queue + self.n):
            return False
        for i in range(1, _times(self.n) + 1):
            offset = _number(tonumber(_arg(self.argv, 5 + i)), "compare")
            if offset <= previous:
                return False
            previous = offset
        return True

    def _fast_path(self) -> int | None:
        """Each group's entries straight from ARGV to its list, no per-item work."""
        part, store, argv, n = self.part, self.part.store, self.argv, self.n
        call(store, b"RPUSH", part.accepted, *_range(argv, 6, _times(n)))
        for j in range(1, len(self.group_first) + 1):
            first = self.group_first[j]
            count = _number(tonumber(_arg(argv, first - 1)), "perform arithmetic on")
            values = _range(argv, first, _times(count))
            length = call(store, b"RPUSH", self.lists[j - 1], *values) if values else 0
            if length == count:
                self._new_head(j, _arg(argv, first))
        self._register_new_heads()
        record = _concat(self.request, b"|n", _lua_str(n))
        top = _arg(argv, 5 + n)
        if top is None:
            raise CommandError(NIL_ARGUMENT)
        call(store, b"HSET", part.meta, b"max", top, b"request", record)
        _record_clock(part, top)
        return _lua_int(n)

    # --- both paths -------------------------------------------------------------------------

    def _push_taken(self, taken: dict[Number, list[bytes]]) -> None:
        """The general path's accepted entries to their lists, group by group."""
        store = self.part.store
        for j in range(1, _times(self.groups or 0) + 1):
            entries = taken.get(j)
            if entries is None:
                continue
            length = call(store, b"RPUSH", self.lists[j - 1], *entries) if entries else 0
            if length == len(entries):
                self._new_head(j, entries[0] if entries else None)
        self._register_new_heads()

    def _new_head(self, group: int, entry: bytes | None) -> None:
        """A queue that was empty: its first entry is its head."""
        if entry is None:  # entry_offset(nil)
            raise script_error(ENQUEUE_SHA1, "bad argument #1 to 'match' (string expected)")
        _lua_append(self.new_heads, entry_offset(entry))
        _lua_append(self.new_heads, self.group_sub[group])
        _lua_append(self.new_subs, self.group_sub[group])

    def _register_new_heads(self) -> None:
        """New heads go in `heads`, and their sub keys become runnable unless leased (one ZADD,
        HMGET and RPUSH for all of them; no HMGET while nothing is leased)."""
        part, store, new_subs = self.part, self.part.store, self.new_subs
        if self.new_heads:
            call(store, b"ZADD", part.heads, *self.new_heads)
        owners: list[bytes | None] = []
        if self.size[part.owners] > 0 and new_subs:
            owners = call(store, b"HMGET", part.owners, *new_subs)
        runnable = [sub for j, sub in enumerate(new_subs) if j >= len(owners) or owners[j] is None]
        if runnable:
            call(store, b"RPUSH", part.ready, *runnable)


class _General:
    """The general path: each item decided in order."""

    def __init__(
        self,
        part: Partition,
        argv: list[bytes],
        *,
        n: Number,
        acked: Number | None,
        floor: Number,
        highest: Number | None,
        highest_s: bytes | None,
        in_queue: int,
        max_in_queue: Number | None,
    ) -> None:
        self.part = part
        self.argv = argv
        self.n = n
        self.acked = acked
        self.floor = floor
        self.highest = highest
        self.highest_s = highest_s
        self.in_queue = in_queue
        self.max_in_queue = max_in_queue
        self.taken: dict[Number, list[bytes]] = {}  # group -> its accepted entries, in order
        self.fresh: list[bytes] = []  # accepted above every earlier one, for `accepted`
        self.seen: set[bytes] = set()
        self.full = False

    def decide(self, group_first: dict[Number, Number]) -> list[int]:
        """Every item's status, in order; late ones written as met, fresh ones at the end."""
        argv, n = self.argv, self.n
        cursor: dict[Number, int] = {}  # group -> how many of its entries were looked at
        statuses: list[int] = []
        for i in range(1, _times(n) + 1):
            offset_s = _arg(argv, 5 + i)
            group = tonumber(_arg(argv, 5 + n + i))
            first = None if group is None else group_first.get(group)
            if group is None or first is None:
                raise script_error(ENQUEUE_SHA1, "attempt to perform arithmetic on a nil value")
            entry = _arg(argv, first + cursor.get(group, 0))
            cursor[group] = cursor.get(group, 0) + 1
            status = self._status(offset_s, tonumber(offset_s))
            if status == ACCEPTED:
                assert offset_s is not None  # an accepted offset is a number
                self.seen.add(offset_s)
                self.in_queue += 1
                _lua_append(self.taken.setdefault(group, []), entry)
            statuses.append(status)
        self._append_fresh()
        return statuses

    def _status(self, offset_s: bytes | None, offset: Number | None) -> int:
        if self.full:
            return FULL
        if _le(offset, self.acked):
            return ACKED
        if _le(offset, self.floor):
            return BEING_ACKED
        assert offset is not None and offset_s is not None  # else _le failed
        if offset_s in self.seen or (_le(offset, self.highest) and self._already_accepted(offset)):
            return DUPLICATE
        if _le(self.max_in_queue, self.in_queue):
            self.full = True
            return FULL
        if _lt(self.highest, offset):
            self.highest, self.highest_s = offset, offset_s
            self.fresh.append(offset_s)
        else:
            self._insert_late(offset, offset_s)
        return ACCEPTED

    def _append_fresh(self) -> None:
        if self.fresh:
            call(self.part.store, b"RPUSH", self.part.accepted, *self.fresh)
        self.fresh = []

    def _already_accepted(self, offset: Number) -> bool:
        """Was an offset at or below the highest accepted one accepted already (not acked)?"""
        self._append_fresh()
        at = self._at_rank(offset)
        return at is not None and tonumber(at) == offset

    def _insert_late(self, offset: Number, offset_s: bytes) -> None:
        """A gap filled late: in order in `accepted`, and in `late` so the watermark waits."""
        part, store = self.part, self.part.store
        at = self._at_rank(offset)
        if at is not None:
            call(store, b"LINSERT", part.accepted, b"BEFORE", at, offset_s)
        else:
            call(store, b"RPUSH", part.accepted, offset_s)
        call(store, b"ZADD", part.late, offset_s, offset_s)

    def _at_rank(self, offset: Number) -> bytes | None:
        """``LINDEX accepted accepted_rank(offset, false)``: the first accepted offset not below
        it, or nil."""
        part = self.part
        at: bytes | None = call(
            part.store, b"LINDEX", part.accepted, fmt(part.accepted_rank(int(offset), False))
        )
        return at


def _record_clock(part: Partition, highest_offset: bytes) -> None:
    """partition.lua's record_clock: one sample per call and ms, score = the highest offset."""
    call(part.store, b"ZADD", part.clock, highest_offset, fmt(part.now_ms()))


# --- the idempotency record ---------------------------------------------------------------------

_NOT_REPLAYED = object()


def _replayed(request: bytes | None, record: bytes) -> object:
    """The first run's answer when meta's ``request`` record is this request's, else
    _NOT_REPLAYED."""
    if request is None:
        raise script_error(ENQUEUE_SHA1, "attempt to get length of local 'request' (nil)")
    if not record.startswith(request + b"|"):
        return _NOT_REPLAYED
    answer = record[len(request) + 1 :]
    if answer[:1] == b"n":
        return _lua_int(tonumber(answer[1:]))
    return [byte - 48 for byte in answer]  # string.byte(answer, i) - 48


# --- Lua's semantics ----------------------------------------------------------------------------


def _arg(argv: list[bytes], i: Number) -> bytes | None:
    """``ARGV[i]``: 1-based, nil outside 1..#ARGV and at a non-integer index."""
    if isinstance(i, float):
        if not i.is_integer():
            return None
        i = int(i)
    return argv[i - 1] if 1 <= i <= len(argv) else None


def _key(keys: list[bytes], i: int) -> bytes:
    """``KEYS[i]`` as a command argument: a missing key fails the command that uses it."""
    if i > len(keys):
        raise CommandError(NIL_ARGUMENT)
    return keys[i - 1]


def _range(argv: list[bytes], first: Number, count: int) -> list[bytes]:
    """``unpack(ARGV, first, first + count - 1)`` as command arguments: a nil among them (past
    ARGV's end) fails the command."""
    values = [_arg(argv, first + k) for k in range(count)]
    if None in values:
        raise CommandError(NIL_ARGUMENT)
    return values  # type: ignore[return-value]  # no None left


def _times(limit: Number) -> int:
    """How many times ``for i = 1, limit`` runs."""
    return max(0, math.floor(limit))


def _number(value: Number | None, what: str) -> Number:
    """A number where the script does arithmetic or compares: nil fails as in Lua."""
    if value is None:
        raise script_error(ENQUEUE_SHA1, f"attempt to {what} a nil value")
    return value


def _lt(a: Number | None, b: Number | None) -> bool:
    return _number(a, "compare") < _number(b, "compare")


def _le(a: Number | None, b: Number | None) -> bool:
    return _number(a, "compare") <= _number(b, "compare")


def _lua_max(a: Number | None, b: Number | None) -> Number:
    """``math.max(a, b)``: both must be numbers."""
    if a is None or b is None:
        position = 1 if a is None else 2
        raise script_error(
            ENQUEUE_SHA1, f"bad argument #{position} to 'max' (number expected, got nil)"
        )
    return b if b > a else a


def _lua_str(number: Number) -> bytes:
    """Lua's ``..`` of a number: %.14g."""
    return b"%.14g" % number


def _concat(*parts: bytes | None) -> bytes:
    """``a .. b .. c``: a nil part fails as in Lua."""
    if None in parts:
        raise script_error(ENQUEUE_SHA1, "attempt to concatenate a nil value")
    return b"".join(parts)  # type: ignore[arg-type]  # no None left


def _lua_append(table: list[bytes], value: bytes | None) -> None:
    """``t[#t + 1] = value``: a nil value appends nothing."""
    if value is not None:
        table.append(value)


def _lua_int(number: Number | None) -> int | None:
    """What LuaScripts makes of a Lua number the script returns."""
    if number is None:
        return None
    if isinstance(number, float) and (math.isnan(number) or not -(2**63) <= number < 2**63):
        return -(2**63)
    return int(number)
