"""includes/partition.lua in Python: what every transcribed partition script shares.

``Partition`` holds the store and the twelve fixed keys (KEYS[1..12], in the order of
``keys.PARTITION_KEY_NAMES``); its methods are the helpers of partition.lua under the same
names, with the same reads and writes in the same order. ``call`` runs one command of the
embedded command table exactly as ``redis.call`` does from a script, minus the crossing into
Lua and back.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from workshaper.embedded.commands import COMMANDS
from workshaper.embedded.native.numbers import Number, format_d, tonumber
from workshaper.embedded.store import CommandError, Store, ZSet
from workshaper.lua_scripts import load_script

FIRST_EXTRA_KEY = 12  # 0-based: KEYS[13] of the Lua scripts
#: How far LPOS scans `accepted` before accepted_rank falls back to a binary search.
RANK_SCAN = 2000


def call(store: Store, name: bytes, *args: bytes) -> Any:
    """``redis.call(name, ...)``: the command's reply in the embedded command table's shape
    (RESP3; a caller that needs a script's RESP2 form converts it), or CommandError."""
    return COMMANDS[name](store, list(args))


def now_ms(store: Store) -> int:
    """partition.lua's now_ms, as TIME answers it: seconds * 1000 + microseconds // 1000 of
    the store's clock, which is its microseconds // 1000."""
    return int(store.clock() * 1_000_000) // 1000


def arg(argv: list[bytes], index: int) -> bytes | None:
    """ARGV[index + 1]: nil (None) past the end."""
    return argv[index] if index < len(argv) else None


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


def _include_line(text: str) -> int:
    """The line of partition.lua that holds ``text`` (1-based)."""
    source = _read_include()
    return source[: source.index(text)].count("\n") + 1


@cache
def _read_include() -> str:
    return (resources.files("workshaper") / "lua" / "includes" / "partition.lua").read_text()


_RANK_FORMAT_LINE = "local at = redis.call('LPOS', K_ACCEPTED, string.format('%d', value)"
_RANK_COMPARE_LINE = "if v < value or (inclusive and v == value)"


@cache
def _include_start(script: str) -> int:
    """How many lines of ``script`` (as the embedded runtime runs it: without its shebang) come
    before partition.lua's first line."""
    plain = load_script(script).plain
    return plain[: plain.index(_read_include())].count("\n")


def include_error(script: str, text: str, message: str) -> CommandError:
    """A Lua runtime error raised by partition.lua's line holding ``text``, inside ``script``:
    the embedded runtime's message, with the line as it counts it."""
    line = _include_start(script) + _include_line(text)
    return script_error(load_script(script).plain_sha, f"user_script:{line}: {message}")


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

    def accepted_rank(self, value: Number | None, inclusive: bool, script: str) -> int:
        """How many accepted offsets are below ``value`` (at most ``value`` with
        ``inclusive``): LPOS within RANK_SCAN entries, else a binary search. ``value`` and the
        entries are Lua numbers: a nil or an entry that is no number fails ``script`` where its
        Lua fails."""
        if value is None:
            raise include_error(
                script, _RANK_FORMAT_LINE, "bad argument #2 to 'format' (number expected, got nil)"
            )
        accepted = self.list_at(self.accepted) or []
        try:
            at = accepted.index(format_d(value), 0, RANK_SCAN)
        except ValueError:
            pass
        else:
            return at + 1 if inclusive else at
        lo, hi = 0, len(accepted)
        while lo < hi:
            mid = (lo + hi) // 2
            v = tonumber(accepted[mid])
            if v is None:
                raise include_error(
                    script, _RANK_COMPARE_LINE, "attempt to compare nil with number"
                )
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
