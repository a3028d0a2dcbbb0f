"""complete_items.lua in Python (see the package's doc): record the finished items of one or
more leases of a partition, then keep, continue, yield or release each lease.

Statement by statement, with the script's reads, writes and replies in its order. Lua numbers are
doubles, and the script formats them with ``string.format('%d')``: the arguments and the
single-step counts it reads are taken as Lua takes them (``numbers.tonumber``: strtod's inf
and nan too, whole numbers past 2**53 rounded) and formatted as Lua's C cast does
(``numbers.format_d``), so even an absurd argument answers what the script answers.

The script checks every argument, the type of every key it writes and every list it reads before
its first write (an error then leaves nothing written); after that only a corrupt single-step
count can fail it, at the point Lua fails, with the writes made so far kept, as on Redis.

Every item passes through here, so the common path works on the store's containers directly,
doing exactly what the command of the script's ``redis.call`` does (the read, the type check,
an emptied container deleted, a blocked pop woken); the rare single-step path goes through
``call``.
"""

from __future__ import annotations

import re

from workshaper.embedded.native.numbers import Number, format_d, to_long, tonumber, whole
from workshaper.embedded.native.partition import (
    FIRST_EXTRA_KEY,
    Partition,
    arg,
    bad_argument,
    call,
    entry_offset,
    key_error,
    now_ms,
    script_error,
    starts_with_field,
)
from workshaper.embedded.protocol import span
from workshaper.embedded.store import CommandError, Store, ZSet

#: The SHA1 of the .lua source (with its includes) this module transcribes.
COMPLETE_SHA1 = "6c7a19619f3cbf530fe369b2c075efc09e890484"
_SCRIPT = "complete_items"

#: Where a corrupt single-step count fails a comparison in the script: (line, as the runtime
#: names it (the source without its shebang), the operand types Lua names). consume_exact's
#: ``left <= 0``, and the take-one check's ``... > 0`` (which Lua runs as ``0 < ...``).
_CONSUME = (299, "nil", "number")
_TAKE_ONE = (579, "number", "nil")

_ACTIONS = frozenset({b"k", b"c", b"y", b"r"})
#: The actions of a lease whose worker may hold entries (held > 0): it is never released.
_HOLDING = frozenset({b"k", b"c"})

Reply = list[bytes | int]


# --- Lua's numbers ---------------------------------------------------------------------------


def _compare_error(site: tuple[int, str, str]) -> CommandError:
    """The error of a Lua comparison with nil (what Lua raises on a corrupt stored count)."""
    line, left, right = site
    message = f"user_script:{line}: attempt to compare {left} with {right}"
    return script_error(COMPLETE_SHA1, message)


# --- arguments -------------------------------------------------------------------------------


def _bad_lease(i: int, what: str, value: bytes | None) -> CommandError:
    return bad_argument(_SCRIPT, f"{what} of lease {i}", value)


def _whole_arg(value: bytes | None, least: int) -> Number | None:
    """``whole(tonumber(value), least)`` of the script: the number, or None when it is not a
    whole number at least ``least``."""
    if value is not None and value.isdigit() and len(value) < 16:
        small = int(value)  # the common case: exact in a double, whole
        return small if small >= least else None
    number = tonumber(value)
    return number if whole(number, least) else None


#: One lease's arguments: where they start in argv, its offset count k, its queue list, and
#: how many entries its worker holds past the k offsets.
LeaseArgs = tuple[int, int, bytes, Number]


def _check_arguments(
    keys: list[bytes], argv: list[bytes]
) -> tuple[Number, Number, list[LeaseArgs]]:
    """(lease ms, batch, each lease's arguments), or the script's error for the first malformed
    argument."""
    lease_ms = _whole_arg(arg(argv, 0), 1)
    if lease_ms is None:
        raise bad_argument(_SCRIPT, "lease ms", arg(argv, 0))
    batch = _whole_arg(arg(argv, 1), 1)
    if batch is None:
        raise bad_argument(_SCRIPT, "batch", arg(argv, 1))
    n = _whole_arg(arg(argv, 2), 0)
    if n is None:
        raise bad_argument(_SCRIPT, "lease count", arg(argv, 2))
    leases: list[LeaseArgs] = []
    at = 3
    i = 1
    while i <= n:  # n may be inf, as in Lua: the arguments run out first
        lease = _well_formed_lease(keys, argv, at, batch)
        if lease is None:  # something is off: check it argument by argument, as Lua does
            lease = _check_lease(keys, argv, at, i, batch)
        leases.append(lease)
        at += 7 + lease[1]
        i += 1
    return lease_ms, batch, leases


def _well_formed_lease(
    keys: list[bytes], argv: list[bytes], at: int, batch: Number
) -> LeaseArgs | None:
    """The arguments of the lease at argv[at] when they are what the workers send (numbers in
    plain digits), else None (then _check_lease finds what is wrong, or takes them as Lua
    takes an unusual number). Every lease of every call passes here."""
    end = len(argv)
    if at + 6 >= end:
        return None
    raw_index, raw_held, raw_k = argv[at], argv[at + 5], argv[at + 6]
    if not (raw_index.isdigit() and raw_k.isdigit() and len(raw_index) < 16 and len(raw_k) < 16):
        return None
    key_index, k, action = int(raw_index), int(raw_k), argv[at + 3]
    held = 0
    if raw_held != b"0":
        if not (raw_held.isdigit() and len(raw_held) < 16):
            return None
        held = int(raw_held)
        if held > batch or (held > 0 and action not in _HOLDING):
            return None
    if (
        not 1 <= key_index <= len(keys) - FIRST_EXTRA_KEY
        or action not in _ACTIONS
        or at + 7 + k > end
        or not all(map(bytes.isdigit, argv[at + 7 : at + 7 + k]))
    ):
        return None
    return at, k, keys[FIRST_EXTRA_KEY + key_index - 1], held


def _check_lease(keys: list[bytes], argv: list[bytes], at: int, i: int, batch: Number) -> LeaseArgs:
    """Check the arguments of lease ``i`` (starting at argv[at]) one by one, in the script's
    order: the error for the first malformed one, else the lease's arguments."""
    key_index, k = _whole_arg(arg(argv, at), 1), _whole_arg(arg(argv, at + 6), 0)
    if key_index is None or key_index > len(keys) - FIRST_EXTRA_KEY:
        raise _bad_lease(i, "key index", arg(argv, at))
    if at + 2 >= len(argv):
        raise _bad_lease(i, "sub key/token", None)
    action = arg(argv, at + 3)
    if action not in _ACTIONS:
        raise _bad_lease(i, "action", action)
    raw_held = arg(argv, at + 5)
    held: Number = 0
    if raw_held != b"0":  # "0" needs no conversion in the script
        number = tonumber(raw_held)
        if not whole(number, 0) or number > batch or (number > 0 and action not in _HOLDING):
            raise _bad_lease(i, "held", raw_held)
        held = number
    if k is None or at + 7 + k > len(argv):
        raise _bad_lease(i, "offset count", arg(argv, at + 6))
    count = int(k)
    for j in range(at + 7, at + 7 + count):
        if not argv[j].isdigit():  # '^%d+$': ASCII digits, at least one
            raise _bad_lease(i, "offset", argv[j])
    return at, count, keys[FIRST_EXTRA_KEY + int(key_index) - 1], held


# --- the script ------------------------------------------------------------------------------


def complete_items(store: Store, keys: list[bytes], argv: list[bytes]) -> list[Reply]:
    """One reply per lease: {1, finished} kept, {1, finished, attempts, entries...} continued,
    {2, finished, requeued} released, {-1, 0} fenced (complete_items.lua's header)."""
    lease_ms, batch, leases = _check_arguments(keys, argv)
    part = Partition(store, keys)
    size = _wrong_type(part, keys)
    subs = _distinct_subs(argv, leases)
    # The fencing check of every lease in one HMGET (sound as no sub key comes twice).
    owner_of = store.get(part.owners, dict) or {}
    run = _Completion(part, size, argv, batch)
    owned: list[int] = []
    counts: list[Number] = []
    holding: list[int] = []  # owned leases whose worker holds entries and continues
    for i, (at, k, _, held) in enumerate(leases):
        owner = owner_of.get(subs[i])
        if owner is not None and starts_with_field(owner, argv[at + 2]):
            take: Number = 1
            if held > 0:
                if argv[at + 3] == b"c":
                    holding.append(len(owned))
            elif run.continues(argv[at + 3]):
                take = batch
            owned.append(i)
            counts.append(k + take)
    reads = _read_lists(store, [leases[i][2] for i in owned], counts)
    # The top-up reads, before the first write: what follows the finished and the held entries
    # (what the lease finished is counted again when it is completed, from the same read).
    topups: dict[int, list[bytes]] = {}
    for h in holding:
        at, k, list_key, held = leases[owned[h]]
        if held < batch:
            finished, _ = _matched(argv, at + 7, k, reads[h])
            topups[h] = _lrange(store, list_key, finished + held, finished + batch - 1)
    now = now_ms(store)
    replies: list[Reply] = [[-1, 0] for _ in leases]  # fenced, unless owned below
    for h, (i, read) in enumerate(zip(owned, reads, strict=True)):
        replies[i] = run.lease(leases[i], read, topups.get(h))
    run.apply(format_d(now + lease_ms))
    return replies


def _wrong_type(part: Partition, keys: list[bytes]) -> dict[bytes, int]:
    """partition.lua's wrong_type for the keys this script writes: the error naming the first
    one of the wrong type, else each one's size. Each key's kind is its role's, as in the
    script's KEY_TYPE table when the twelve fixed keys are distinct (a key named twice has one
    kind there: the shared helper probes that)."""
    probes: tuple[tuple[bytes, type], ...] = (
        (part.owners, dict),
        (part.leases, ZSet),
        (part.ready, list),
        (part.heads, ZSet),
        (part.late, ZSet),
        (part.attempts, dict),
        (part.exact, dict),
    )
    if len(set(keys[:FIRST_EXTRA_KEY])) < FIRST_EXTRA_KEY:
        return part.wrong_type(_SCRIPT, [key for key, _ in probes])
    get = part.store.get
    size: dict[bytes, int] = {}
    for key, kind in probes:
        try:
            value = get(key, kind)
        except CommandError as exc:
            raise key_error(_SCRIPT, key, exc) from None
        size[key] = 0 if value is None else len(value)
    return size


def _distinct_subs(argv: list[bytes], leases: list[LeaseArgs]) -> list[bytes]:
    """The sub key of each lease; a repeated one is an error (the one HMGET would check the
    second completion against what the first one changed)."""
    subs = [argv[at + 1] for at, _, _, _ in leases]
    if len(set(subs)) < len(subs):
        seen: set[bytes] = set()
        for sub in subs:
            if sub in seen:
                raise bad_argument(_SCRIPT, "repeated sub key", sub)
            seen.add(sub)
    return subs


def _lrange(store: Store, key: bytes, start: Number, stop: Number) -> list[bytes]:
    """LRANGE key start stop, its indexes formatted with '%d' (of a list whose type the first
    read checked)."""
    value: list[bytes] | None = store.get(key, list)
    if value is None:
        return []
    lo, hi = span(len(value), to_long(start), to_long(stop))
    return value[lo:hi]


def _read_lists(store: Store, lists: list[bytes], counts: list[Number]) -> list[list[bytes]]:
    """LRANGE list 0 count-1 of each owned lease's list, before the first write: the read is
    also the list's type check. The stop is formatted with '%d' as read_lists does (an absurd
    batch past 64 bits reads nothing, as in Lua)."""
    reads: list[list[bytes]] = []
    for key, count in zip(lists, counts, strict=True):
        try:
            value: list[bytes] | None = store.get(key, list)
        except CommandError as exc:
            raise key_error(_SCRIPT, key, exc) from None
        if value is None:
            reads.append([])
        elif type(count) is int:  # count >= 1: the first count entries
            reads.append(value[:count])
        else:
            lo, hi = span(len(value), 0, to_long(count - 1))
            reads.append(value[lo:hi])
    return reads


class _Completion:
    """One call past its checks: each owned lease is completed in turn, and the writes to the
    partition's shared keys that concern only the lease's own member are collected and made
    once after the loop, in the script's order (its tables of the same names)."""

    __slots__ = (
        "argv",
        "batch",
        "cleared",
        "drained",
        "emptied",
        "extends",
        "late",
        "moved",
        "part",
        "ready_len",
        "released",
        "requeued",
        "size",
    )

    def __init__(
        self, part: Partition, size: dict[bytes, int], argv: list[bytes], batch: Number
    ) -> None:
        self.part, self.size, self.argv, self.batch = part, size, argv, batch
        #: `ready` only grows in this call (released sub keys with items left go to its tail):
        #: its length is probed once and counted here. A yield continues only while it is 0.
        self.ready_len = size[part.ready]
        self.extends: list[bytes] = []  # ZADD leases XX (the subs; the deadline is shared)
        self.moved: list[bytes] = []  # ZADD heads: new head offset, sub
        self.emptied: list[bytes] = []  # ZREM heads, HDEL exact: queue now empty
        self.drained: list[bytes] = []  # DEL: the lists of `emptied`
        self.released: list[bytes] = []  # HDEL owners, ZREM leases
        self.cleared: list[bytes] = []  # HDEL attempts: the head moved
        self.late: list[bytes] = []  # ZREM late: finished offsets, when `late` had any
        self.requeued: list[bytes] = []  # RPUSH ready: released with items left

    def continues(self, action: bytes) -> bool:
        """Does the lease hand out its next batch (a yield only while no other sub key waits)?
        Else it wants the new head alone past its finished entries."""
        return action == b"c" or (action == b"y" and self.ready_len == 0)

    def lease(self, lease: LeaseArgs, read: list[bytes], topup: list[bytes] | None) -> Reply:
        """Record what the owned lease finished, then keep, continue or release it.
        ``topup``: what follows the entries its worker holds, when it holds some and
        continues."""
        argv = self.argv
        at, k, list_key, held = lease
        sub, action, exact_mode = argv[at + 1], argv[at + 3], argv[at + 4] == b"1"
        finished, start = _matched(argv, at + 7, k, read)
        continues = self.continues(action)
        take = self.batch if continues else 1  # entries wanted past the finished (and held) ones
        if finished > 0:
            self._record(at, start, list_key, read, finished)
        if action == b"k":
            self.extends.append(sub)
            return [1, finished]
        if exact_mode and continues and _exact_left(self.part, sub, _TAKE_ONE) > 0:
            take = 1  # still single-step: one item at a time
        # A lease whose worker holds entries ("c" only) is kept even with nothing to add.
        if continues and (finished < len(read) or held > 0):
            self.extends.append(sub)
            attempts: bytes = b""
            if finished == 0 and self.size[self.part.attempts] > 0:
                attempts = self.part.hget(self.part.attempts, sub) or b""
            if held == 0:
                nexts = read[finished : int(min(finished + take, len(read)))]
            else:
                nexts = _first(topup, take - held)
            return [1, finished, attempts, *nexts]
        self.released.append(sub)
        if finished < len(read):
            self.requeued.append(sub)
            self.ready_len += 1
            return [2, finished, 1]
        return [2, finished, 0]

    def _record(
        self, at: int, start: int, list_key: bytes, read: list[bytes], finished: int
    ) -> None:
        """The first ``finished`` entries of the lease's queue are done (the offsets from
        argv[start]): take them off, keep `heads`, `late`, the attempts and the single-step
        window in step."""
        part, argv = self.part, self.argv
        sub = argv[at + 1]
        if self.size[part.late] > 0:
            self.late += argv[start : start + finished]
        self.cleared.append(sub)
        if argv[at + 4] == b"1":
            _consume_exact(part, sub, finished)
            _end_isolation(part, sub)  # flagged again by its worker before the next item starts
        if finished == len(read):
            # The read asked for more than `finished`: it held the whole list, empty now.
            self.drained.append(list_key)
            self.emptied.append(sub)  # a crash window ends with the items it was for
            return
        # LTRIM list finished -1 (a list emptied goes; only a list read twice, by two leases of
        # the call, can be shorter than its read here).
        store = part.store
        entries = store.get(list_key, list)
        if entries is not None:
            del entries[:finished]
            store.drop_if_empty(list_key, entries)
        # A corrupt new head has no offset: the old score stays, which can only hold the
        # watermark back until the entry is dead-lettered.
        head_offset = entry_offset(read[finished])
        if head_offset is not None:
            self.moved += (head_offset, sub)

    def apply(self, deadline: bytes) -> None:
        """The collected writes, in the script's order, each as its command does it on the
        store (one here stands for the script's chunks of it). Empty hashes are not written to,
        as in the script."""
        part, size, store = self.part, self.size, self.part.store
        for key in self.drained:  # DEL
            if store.lookup(key) is not None:
                store.delete(key)
        if size[part.attempts] > 0 and self.cleared:
            _hdel(store, part.attempts, self.cleared)
        if self.late:
            _zrem(store, part.late, self.late)
        if self.emptied:
            _zrem(store, part.heads, self.emptied)
            if size[part.exact] > 0:
                _hdel(store, part.exact, self.emptied)
        if self.moved:
            _zadd_heads(store, part.heads, self.moved)
        if self.released:
            _hdel(store, part.owners, self.released)
            _zrem(store, part.leases, self.released)
        if self.requeued:  # RPUSH
            store.get_or_create(part.ready, list).extend(self.requeued)
        if self.extends:
            # ZADD leases XX: never re-create a lease, nor add a member (`released` and
            # `extends` name different sub keys). Only a score changes: no waiter to wake.
            leases: ZSet | None = store.get(part.leases, ZSet)
            if leases is not None:
                score = float(deadline)
                for sub in self.extends:
                    if sub in leases.scores:
                        leases.add(sub, score)


def _first(entries: list[bytes] | None, count: Number) -> list[bytes]:
    """entries[1 .. math.min(count, #entries)] (Lua's math.min: NaN when count is; a loop to
    NaN or below 1 takes nothing)."""
    if not entries:
        return []
    limit = len(entries) if len(entries) < count else count
    return entries[: int(limit)] if limit >= 1 else []


def _matched(argv: list[bytes], first: int, k: int, read: list[bytes]) -> tuple[int, int]:
    """How many entries at the head of ``read`` match the offsets argv[first : first + k] in
    order, and where in argv the matched offsets start: at the first one, or (a retried call
    whose earlier call was applied and took those before it off) at the one the head starts
    with, searched only when the head is not the first one's. (0, first): the head is none's."""
    if k == 0 or not read:
        return 0, first
    head, start = read[0], first
    if not starts_with_field(head, argv[first]):
        for j in range(first + 1, first + k):
            if starts_with_field(head, argv[j]):
                start = j
                break
        else:
            return 0, first
    finished = 1
    for j in range(1, min(first + k - start, len(read))):
        if not starts_with_field(read[j], argv[start + j]):
            break
        finished = j + 1
    return finished, start


# --- the commands of the writes, on the store ---------------------------------------------------


def _hdel(store: Store, key: bytes, fields: list[bytes]) -> None:
    """HDEL key fields...: an emptied hash goes."""
    h: dict[bytes, bytes] | None = store.get(key, dict)
    if h is not None:
        for field in fields:
            h.pop(field, None)
        store.drop_if_empty(key, h)


def _zrem(store: Store, key: bytes, members: list[bytes]) -> None:
    """ZREM key members...: an emptied sorted set goes."""
    z: ZSet | None = store.get(key, ZSet)
    if z is not None:
        for member in members:
            z.remove(member)
        store.drop_if_empty(key, z)


def _zadd_heads(store: Store, key: bytes, pairs: list[bytes]) -> None:
    """ZADD key offset member ...: the offsets are digits (entry_offset), their scores the
    doubles ZADD parses; a new member wakes a blocking pop waiting on the key, as ZADD does."""
    z: ZSet | None = store.get(key, ZSet)
    if z is None:
        z = store.data[key] = ZSet()
    added = 0
    for j in range(0, len(pairs), 2):
        if z.add(pairs[j + 1], float(pairs[j])):
            added += 1
    if added and key in store.waiters:
        store.changed.notify_all()


# --- the single-step window and the isolation flag (partition.lua) ----------------------------


def _exact_left(part: Partition, sub: bytes, site: tuple[int, str, str]) -> Number:
    """``tonumber(HGET exact sub or '0')``, compared with a number at ``site``: a corrupt count
    fails that comparison as in Lua."""
    value = call(part.store, b"HGET", part.exact, sub)
    number = tonumber(b"0" if value is None else value)  # "" is a value: Lua's `or` keeps it
    if number is None:
        raise _compare_error(site)
    return number


def _consume_exact(part: Partition, sub: bytes, count: int) -> None:
    """partition.lua's consume_exact: after ``count`` items of sub finished, shorten its
    single-step window."""
    left = _exact_left(part, sub, _CONSUME)
    if left <= 0:
        return
    if left <= count:
        call(part.store, b"HDEL", part.exact, sub)
    else:
        call(part.store, b"HSET", part.exact, sub, format_d(left - count))


#: partition.lua's parse_owner pattern: "token|flag|batch|max_attempts|exhausted_mode|worker".
_OWNER = re.compile(rb"([0-9]+)\|(.)\|[0-9]+\|[0-9]+\|[A-Za-z]\|.*", re.DOTALL)


def _end_isolation(part: Partition, sub: bytes) -> None:
    """partition.lua's end_isolation: the lease's isolated item ended, so its owner record's
    flag goes back to "-" (with_flag) until its worker flags the next item."""
    raw = call(part.store, b"HGET", part.owners, sub)
    owner = None if raw is None else _OWNER.fullmatch(raw)
    if owner is not None and owner[2] == b"i":
        token = owner[1]
        call(part.store, b"HSET", part.owners, sub, token + b"|-" + raw[len(token) + 2 :])
