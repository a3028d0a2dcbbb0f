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

from workshaper.embedded.native.numbers import Number, number_arg, tonumber
from workshaper.embedded.native.partition import (
    Partition,
    call,
    entry_offset,
    key_error,
    now_ms,
    script_error,
)
from workshaper.embedded.store import CommandError, Store, ZSet

#: The SHA1 of enqueue_items.lua (with its include) this module transcribes.
ENQUEUE_SHA1 = "a8fa2d87aea15284b85ae331a3de68805422e9d3"

SCRIPT = "enqueue_items"
#: The script's CHUNK: the most ARGV values one RPUSH of it pushes.
CHUNK = 2000
ACCEPTED, DUPLICATE, ACKED, FULL, BEING_ACKED, LOST_WRITES = range(6)
#: What redis.call answers for a nil argument (unpack of a range past ARGV's end).
NIL_ARGUMENT = "ERR Lua redis lib command arguments must be strings or integers"

Reply = int | list[int] | None


def enqueue_items(store: Store, keys: list[bytes], argv: list[bytes]) -> Reply:
    """Enqueue a batch of items into one partition (enqueue_items.lua's header says how)."""
    return _Enqueue(Partition(store, keys), keys, argv).run()


class _Enqueue:
    """One run of the script: its arguments, what it read, and both its paths.

    The fast path runs for every call of the Manager's shape, so it reads and writes the
    store's containers itself where that is exactly what the command does: HMGET, LLEN, the
    type probes, RPUSH, HSET, TIME, and ZADD where every score is digits (_zadd_digits). The
    rest, and anything unusual (a nil argument, pairs out of step, the undo of the lists'
    RPUSHes), goes through ``call`` and so answers as the command does.
    """

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
        self.owners_size = 0  # HLEN owners, as probed
        self.group_sub: dict[Number, bytes | None] = {}
        self.group_first: dict[Number, Number] = {}  # group -> ARGV index of its first entry
        self.group_count: dict[Number, Number] = {}  # group -> its number of entries
        self.new_heads: list[bytes] = []  # ZADD's score, member pairs
        self.new_subs: list[bytes] = []

    def run(self) -> Reply:
        part, store, n = self.part, self.part.store, self.n
        meta = _meta(store, part.meta)
        if meta[3] is not None:
            replayed = _replayed(self.request, meta[3])
            if replayed is not _NOT_REPLAYED:
                return replayed  # type: ignore[return-value]  # an int, None or statuses
        # `tonumber(meta[k] or '-1')`: a missing field reads as -1.
        acked = tonumber(meta[0]) if meta[0] is not None else -1
        floor = _lua_max(acked, tonumber(meta[1]) if meta[1] is not None else -1)
        highest = tonumber(meta[2]) if meta[2] is not None else -1
        if _lt(highest, self.expected_highest):
            return [LOST_WRITES] * _times(n)
        in_queue = len(store.get(part.accepted, list) or ())  # LLEN
        self.owners_size = _wrong_type(part)
        if self.groups is None:
            raise script_error(ENQUEUE_SHA1, "'for' limit must be a number")
        self.lists = [_key(self.keys, 12 + j) for j in range(1, _times(self.groups) + 1)]
        self._read_groups()
        offsets = self._offsets()
        if n > 0 and self._fast_path_applies(offsets, in_queue, _lua_max(highest, floor)):
            return self._fast_path()
        _probe_lists(part, self.lists)
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
        statuses = general.decide(offsets, self.group_first)
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
        """Each group's sub key, the ARGV index of its first entry and its count."""
        argv = self.argv
        end = len(argv)
        a = 6 + 2 * self.n
        sub: bytes | None
        for j in range(1, _times(self.groups or 0) + 1):
            if type(a) is int and 1 <= a < end:  # both in ARGV: read them directly
                sub, count_s = argv[a - 1], argv[a]
                count = int(count_s) if count_s.isdigit() else tonumber(count_s)
            else:
                sub, count = _arg(argv, a), tonumber(_arg(argv, a + 1))
            self.group_sub[j] = sub
            self.group_first[j] = a + 2
            if count is None:
                raise script_error(ENQUEUE_SHA1, "attempt to perform arithmetic on a nil value")
            self.group_count[j] = count
            a = a + 2 + count

    def _offsets(self) -> list[Number | None]:
        """``tonumber(ARGV[OFFSETS + i])`` for i = 1..n (nil where that is no number: it fails
        where the script compares it, if it gets there)."""
        n, argv = self.n, self.argv
        if type(n) is int and 5 + n <= len(argv):
            # Digits short of 2**53 are the same number to Lua and Python.
            return [int(s) if s.isdigit() and len(s) < 16 else tonumber(s) for s in argv[5 : 5 + n]]
        return [tonumber(_arg(argv, 5 + i)) for i in range(1, _times(n) + 1)]

    # --- the fast path ----------------------------------------------------------------------

    def _fast_path_applies(
        self, offsets: list[Number | None], in_queue: int, previous: Number
    ) -> bool:
        """Offsets strictly increasing above every accepted one, and room for all of them."""
        if _lt(self.max_in_queue, in_queue + self.n):
            return False
        for offset in offsets:
            if offset is None:
                raise script_error(ENQUEUE_SHA1, "attempt to compare nil with number")
            if offset <= previous:
                return False
            previous = offset
        return True

    def _fast_path(self) -> int | None:
        """Each group's entries straight from ARGV to its list, no per-item work; the lists
        first, then `accepted` and the rest."""
        part, store, argv, n = self.part, self.part.store, self.argv, self.n
        self._push_groups()
        if _times(n) > 0:  # rpush_range of an empty range makes no call
            offsets = argv[5 : 5 + n] if type(n) is int else None
            if offsets is None or len(offsets) < n:
                offsets = _range(argv, 6, _times(n))  # a nil among them fails the RPUSH
            store.get_or_create(part.accepted, list).extend(offsets)  # RPUSH
        self._register_new_heads()
        record = _concat(self.request, b"|n", _lua_str(n))
        top = _arg(argv, 5 + n)
        if top is None:
            raise CommandError(NIL_ARGUMENT)
        meta = store.get_or_create(part.meta, dict)  # HSET max, request
        meta[b"max"] = top
        meta[b"request"] = record
        _record_clock(part, top)
        return _lua_int(n)

    def _push_groups(self) -> None:
        """Each group's entries (ARGV[first .. first + count - 1]) to its list in one RPUSH; a
        list that was empty gets a new head. An RPUSH that fails (pcall: a list of the wrong
        type) trims what the call pushed off the lists before it, and fails the call naming its
        list."""
        store, argv, lists = self.part.store, self.argv, self.lists
        get, data = store.get, store.data
        new_heads, new_subs = self.new_heads, self.new_subs
        end = len(argv)
        for j in range(1, len(self.group_first) + 1):
            first, count = self.group_first[j], self.group_count[j]
            if (
                not (type(first) is int and type(count) is int and 0 < count <= end + 1 - first)
                or first < 1
            ):  # not all in ARGV, or no entry at all: as the script goes
                self._push_group(j, first, count)
                continue
            key = lists[j - 1]
            try:
                queue = get(key, list)  # RPUSH, as the command does it
            except CommandError as exc:  # before it pushed anything
                self._undo(j, 0)
                raise key_error(SCRIPT, key, exc) from None
            if queue is None:  # a new list: the sub key's first entry is its head
                data[key] = argv[first - 1 : first - 1 + count]
                sub = self.group_sub[j]
                head = entry_offset(argv[first - 1])
                if head is not None and sub is not None:  # (else _new_head keeps Lua's nils)
                    new_heads += (head, sub)
                    new_subs.append(sub)
                else:
                    self._new_head(j, argv[first - 1])
            else:
                queue.extend(argv[first - 1 : first - 1 + count])
                if len(queue) == count:  # it was empty (only a list left so by hand can be)
                    self._new_head(j, argv[first - 1])

    def _push_group(self, j: int, first: Number, count: Number) -> None:
        """_push_groups for a group whose entries are not all in ARGV (a nil fails the RPUSH of
        the chunk holding it) or that has none (no RPUSH: its list's length, 0, equals its
        count)."""
        store, key = self.part.store, self.lists[j - 1]
        total = _times(count)
        length = 0
        for done in range(0, total, CHUNK):
            try:
                values = _range(self.argv, first + done, min(CHUNK, total - done))
                length = call(store, b"RPUSH", key, *values)
            except CommandError as exc:
                self._undo(j, done)
                raise key_error(SCRIPT, key, exc) from None
        if length == count:
            self._new_head(j, _arg(self.argv, first))

    def _undo(self, j: int, done: int) -> None:
        """Group j's RPUSH failed after ``done`` of its entries: trim those off its list, then
        each earlier group's (its count: the call's entries are at the tails of the lists),
        last first."""
        store = self.part.store
        if done > 0:
            call(store, b"LTRIM", self.lists[j - 1], b"0", b"%d" % (-done - 1))
        for k in range(j - 1, 0, -1):
            pushed = self.group_count[k]
            if pushed > 0:
                call(store, b"LTRIM", self.lists[k - 1], b"0", number_arg(-pushed - 1))

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
        head = entry_offset(entry)
        sub = self.group_sub[group]
        if head is not None:  # t[#t + 1] = nil appends nothing
            self.new_heads.append(head)
        if sub is not None:
            self.new_heads.append(sub)
            self.new_subs.append(sub)

    def _register_new_heads(self) -> None:
        """New heads go in `heads`, and their sub keys become runnable unless leased (one ZADD,
        HMGET and RPUSH for all of them; no HMGET while nothing is leased)."""
        part, store, new_subs = self.part, self.part.store, self.new_subs
        if self.new_heads:  # (call_chunked of nothing makes no call)
            if len(self.new_heads) == 2 * len(new_subs):  # every head has its offset: digits
                _zadd_digits(store, part.heads, self.new_heads)
            else:  # pairs out of step: ZADD says what is wrong
                call(store, b"ZADD", part.heads, *self.new_heads)
        if self.owners_size > 0 and new_subs:
            owners = store.get(part.owners, dict) or {}  # HMGET
            runnable = [sub for sub in new_subs if owners.get(sub) is None]
        else:
            runnable = new_subs
        if runnable:
            store.get_or_create(part.ready, list).extend(runnable)  # RPUSH


def _meta(store: Store, key: bytes) -> tuple[bytes | None, ...]:
    """``HMGET meta acked offer max request``."""
    meta: dict[bytes, bytes] | None = store.get(key, dict)
    if meta is None:
        return (None, None, None, None)
    return (meta.get(b"acked"), meta.get(b"offer"), meta.get(b"max"), meta.get(b"request"))


def _wrong_type(part: Partition) -> int:
    """partition.lua's wrong_type for this script's fixed keys: raise the error naming the
    first key of the wrong type (before any write), else return the size of `owners` (the one
    size it uses). Partition.wrong_type, without its per-call table of every key's kind."""
    get = part.store.get
    owners_size = 0
    # The fixed keys it writes (or reads after a write), in the order the script probes them.
    probed = (
        (part.heads, ZSet),
        (part.late, ZSet),
        (part.ready, list),
        (part.owners, dict),
        (part.clock, ZSet),
    )
    for key, kind in probed:
        try:
            value = get(key, kind)
        except CommandError as exc:
            raise key_error(SCRIPT, key, exc) from None
        if kind is dict:
            owners_size = len(value or ())
    return owners_size


def _probe_lists(part: Partition, lists: list[bytes]) -> None:
    """partition.lua's wrong_type of the queue lists, on the general path: one EXISTS for all
    of them, then the type of each if any exists (the error names the first of the wrong
    type)."""
    store, get = part.store, part.store.get
    if len(lists) <= 1:
        existing = bool(lists)
    elif store.expires.keys().isdisjoint(lists):  # one EXISTS for all; none of them expires
        existing = not store.data.keys().isdisjoint(lists)
    else:  # EXISTS looks at each (and drops the expired ones)
        existing = sum(1 for key in lists if store.lookup(key) is not None) > 0
    if existing:
        for key in lists:
            try:
                get(key, list)
            except CommandError as exc:
                raise key_error(SCRIPT, key, exc) from None


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

    def decide(self, offsets: list[Number | None], group_first: dict[Number, Number]) -> list[int]:
        """Every item's status, in order; late ones written as met, fresh ones at the end.
        ``offsets``: tonumber of each item's offset (ARGV[OFFSETS + i])."""
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
            status = self._status(offset_s, offsets[i - 1])
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
        rank = self.part.accepted_rank(offset, False, SCRIPT)
        accepted = self.part.list_at(self.part.accepted) or []
        return accepted[rank] if rank < len(accepted) else None


def _record_clock(part: Partition, highest_offset: bytes) -> None:
    """partition.lua's record_clock: one sample per call and ms, score = the highest offset."""
    sample = [highest_offset, b"%d" % now_ms(part.store)]
    if highest_offset.isdigit():
        _zadd_digits(part.store, part.clock, sample)
    else:  # ZADD parses (or refuses) the score
        call(part.store, b"ZADD", part.clock, *sample)


def _zadd_digits(store: Store, key: bytes, pairs: list[bytes]) -> None:
    """``ZADD key score member ...`` where every score is digits: what the command does then
    (its plain form: float() of each score, then the adds; a blocked pop on the key woken)."""
    zset = store.get(key, ZSet)
    if zset is None:
        zset = store.data[key] = ZSet()
    add = zset.add
    added = 0
    for k in range(0, len(pairs), 2):
        if add(pairs[k + 1], float(pairs[k])):
            added += 1
    if added and key in store.waiters:
        store.changed.notify_all()


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
    if not limit >= 1:  # also NaN: `1 <= NaN` is false at once
        return 0
    if limit == math.inf:  # Lua would loop until it fails or runs out of memory
        raise script_error(ENQUEUE_SHA1, "a 'for' loop to infinity")
    return math.floor(limit)


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
