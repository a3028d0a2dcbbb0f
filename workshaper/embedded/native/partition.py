"""includes/partition.lua in Python: what every transcribed partition script shares.

``Partition`` holds the store and the twelve fixed keys (KEYS[1..12], in the order of
``keys.PARTITION_KEY_NAMES``); its methods are the helpers of partition.lua under the same
names, with the same reads and writes in the same order. ``call`` runs one command of the
embedded command table exactly as ``redis.call`` does from a script, minus the crossing into
Lua and back.
"""

from __future__ import annotations

import math
import re
from typing import Any

from workshaper.embedded.commands import COMMANDS
from workshaper.embedded.store import CommandError, Store, ZSet

FIRST_EXTRA_KEY = 12  # 0-based: KEYS[13] of the Lua scripts
#: How far LPOS scans `accepted` before accepted_rank falls back to a binary search.
RANK_SCAN = 2000

_LUA_NUMBER = re.compile(rb"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_LUA_HEX = re.compile(rb"\s*0[xX][0-9a-fA-F]+\s*")


def call(store: Store, name: bytes, *args: bytes) -> Any:
    """``redis.call(name, ...)``: the command's reply in the embedded command table's shape
    (RESP3; a caller that needs a script's RESP2 form converts it), or CommandError."""
    return COMMANDS[name](store, list(args))


def tonumber(value: bytes | None) -> int | float | None:
    """Lua 5.1's ``tonumber`` of a string: None where Lua gives nil. A whole number is an int
    (Lua's numbers are doubles: a whole one within 2**53 is exact either way)."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    if _LUA_NUMBER.fullmatch(value):
        number = float(value)
        return int(number) if number.is_integer() else number
    if _LUA_HEX.fullmatch(value):
        return int(value.strip(), 16)
    return None


def whole(value: bytes | None, least: int) -> bool:
    """The scripts' ``whole(value, least)``: a whole number at least ``least``."""
    number = tonumber(value)
    return number is not None and number == math.floor(number) and number >= least


def fmt(number: int | float) -> bytes:
    """``string.format('%d', number)``."""
    return b"%d" % int(number)


def bad_argument(script: str, what: str, value: Any) -> CommandError:
    """partition.lua's bad_argument: the error reply naming the script and the argument."""
    if value is None:
        shown = "nil"
    elif isinstance(value, bytes):
        shown = value.decode(errors="replace")
    else:
        shown = str(value)
    return CommandError(f"{script}: bad argument {what}: {shown}")


def key_error(script: str, key: bytes, error: CommandError) -> CommandError:
    """The error of a command that failed on ``key`` (WRONGTYPE), naming the script and key."""
    return CommandError(f"{error} ({script}: key {key.decode(errors='replace')})")


def entry_offset(entry: bytes) -> bytes | None:
    """``string.match(entry, '^(%d+)|')``."""
    bar = entry.find(b"|")
    if bar <= 0:
        return None
    head = entry[:bar]
    return head if head.isdigit() else None


def starts_with_field(s: bytes, value: bytes) -> bool:
    """Does ``s`` start with ``value`` and its "|"?"""
    return s[len(value) : len(value) + 1] == b"|" and s.startswith(value)


def script_error(sha: str, message: str) -> CommandError:
    """What a Lua runtime error in a script answers (the embedded runtime's wording)."""
    return CommandError(f"ERR Error running script {sha}: {message}")


class Partition:
    """The fixed keys of one partition and the helpers of partition.lua over them."""

    __slots__ = (
        "accepted",
        "attempts",
        "blocked",
        "clock",
        "dead",
        "exact",
        "heads",
        "late",
        "leases",
        "meta",
        "owners",
        "ready",
        "store",
    )

    KIND = {
        "meta": dict,
        "accepted": list,
        "heads": ZSet,
        "late": ZSet,
        "ready": list,
        "leases": ZSet,
        "owners": dict,
        "attempts": dict,
        "exact": dict,
        "blocked": dict,
        "dead": dict,
        "clock": ZSet,
    }

    def __init__(self, store: Store, keys: list[bytes]) -> None:
        if len(keys) < FIRST_EXTRA_KEY:
            # Lua would index nil keys and fail on the first command.
            raise CommandError("ERR Lua redis lib command arguments must be strings or integers")
        self.store = store
        (
            self.meta,
            self.accepted,
            self.heads,
            self.late,
            self.ready,
            self.leases,
            self.owners,
            self.attempts,
            self.exact,
            self.blocked,
            self.dead,
            self.clock,
        ) = keys[:FIRST_EXTRA_KEY]

    # --- reads, typed (WRONGTYPE as the command would raise it) -----------------------------

    def hash_at(self, key: bytes) -> dict[bytes, bytes] | None:
        value: dict[bytes, bytes] | None = self.store.get(key, dict)
        return value

    def list_at(self, key: bytes) -> list[bytes] | None:
        value: list[bytes] | None = self.store.get(key, list)
        return value

    def zset_at(self, key: bytes) -> ZSet | None:
        value: ZSet | None = self.store.get(key, ZSet)
        return value

    def hget(self, key: bytes, field: bytes) -> bytes | None:
        h = self.hash_at(key)
        return None if h is None else h.get(field)

    def llen(self, key: bytes) -> int:
        return len(self.list_at(key) or ())

    def size(self, key: bytes, kind: type) -> int:
        """HLEN / ZCARD / LLEN by the key's kind."""
        value = self.store.get(key, kind)
        return 0 if value is None else len(value)

    # --- partition.lua's helpers -------------------------------------------------------------

    def wrong_type(
        self, script: str, fixed: list[bytes], lists: list[bytes] | None = None
    ) -> dict[bytes, int]:
        """Probe the type of each fixed key (and of each queue list, when one exists); raise the
        error naming the first key of the wrong type, else return each fixed key's size."""
        size: dict[bytes, int] = {}
        kinds = self._kinds()
        for key in fixed:
            try:
                size[key] = self.size(key, kinds[key])
            except CommandError as exc:
                raise key_error(script, key, exc) from None
        lists = lists or []
        lookup = self.store.lookup
        if len(lists) > 1:
            existing = sum(1 for key in lists if lookup(key) is not None)
        else:
            existing = len(lists)
        if existing > 0:
            for key in lists:
                try:
                    self.size(key, list)
                except CommandError as exc:
                    raise key_error(script, key, exc) from None
        return size

    def _kinds(self) -> dict[bytes, type]:
        return {getattr(self, name): kind for name, kind in self.KIND.items()}

    def read_lists(self, script: str, lists: list[bytes], counts: list[int]) -> list[list[bytes]]:
        """The first counts[i] entries of each list (LRANGE 0 counts[i]-1, which is also the
        list's type check); raises the error naming the first list of the wrong type."""
        reads: list[list[bytes]] = []
        get = self.store.get
        for key, count in zip(lists, counts, strict=True):
            try:
                value = get(key, list)
            except CommandError as exc:
                raise key_error(script, key, exc) from None
            if value is None:
                reads.append([])
            else:  # count 0 is LRANGE 0 -1: the whole list
                reads.append(value[:count] if count > 0 else list(value))
        return reads

    def now_ms(self) -> int:
        """Server time in ms (TIME, as the scripts read it)."""
        seconds, micros = call(self.store, b"TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def accepted_rank(self, value: int, inclusive: bool) -> int:
        """How many accepted offsets are below ``value`` (at most ``value`` with
        ``inclusive``): LPOS within RANK_SCAN entries, else a binary search."""
        accepted = self.list_at(self.accepted) or []
        try:
            at = accepted.index(fmt(value), 0, RANK_SCAN)
        except ValueError:
            pass
        else:
            return at + 1 if inclusive else at
        lo, hi = 0, len(accepted)
        while lo < hi:
            mid = (lo + hi) // 2
            v = int(accepted[mid])
            if v < value or (inclusive and v == value):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def lowest_unfinished(self) -> int | float | None:
        """The lowest unfinished offset, or None when every accepted item finished."""
        low = _lowest_score(self.zset_at(self.heads))
        late = _lowest_score(self.zset_at(self.late))
        if late is not None and (low is None or late < low):
            low = late
        return low


def _lowest_score(zset: ZSet | None) -> int | float | None:
    """The lowest score of a sorted set as a script reads it back (``tonumber`` of ZRANGE ...
    WITHSCORES), or None when it is empty."""
    if not zset:
        return None
    score: float = zset.order[0][0]
    return int(score) if score.is_integer() else score
