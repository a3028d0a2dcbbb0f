"""The embedded backend's data: Redis's value types in Python containers, expiry by a clock.

A key holds one of: ``bytes`` (a string), ``list`` (a list), ``dict`` (a hash), ``set`` (a set)
or ``ZSet`` (a sorted set). As in Redis, a container that becomes empty is deleted, and a key
whose deadline passed is gone the next time anything looks at it. Every access happens under
``Store.lock`` (the server's one lock), so a script sees and changes the store atomically, like
Redis's single thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sortedcontainers import SortedList

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class CommandError(Exception):
    """An error reply (its text is what Redis would answer, e.g. "ERR ..." or "WRONGTYPE ...")."""


class ZSet:
    """A sorted set: member -> score, plus (score, member) pairs kept in Redis's order."""

    __slots__ = ("order", "scores")

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}
        self.order: SortedList = SortedList()

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, member: bytes, score: float) -> bool:
        """Set ``member``'s score; True when it is new."""
        old = self.scores.get(member)
        if old is not None:
            if old == score:
                return False
            self.order.remove((old, member))
            self.scores[member] = score
            self.order.add((score, member))
            return False
        self.scores[member] = score
        self.order.add((score, member))
        return True

    def remove(self, member: bytes) -> bool:
        score = self.scores.pop(member, None)
        if score is None:
            return False
        self.order.remove((score, member))
        return True

    def items(self) -> Iterator[tuple[float, bytes]]:
        return iter(self.order)


#: The Python type of each Redis value type, and the name TYPE answers.
TYPE_NAMES: dict[type, bytes] = {
    bytes: b"string",
    list: b"list",
    dict: b"hash",
    set: b"set",
    ZSet: b"zset",
}


class Store:
    """All keys of one embedded server (one database)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        #: Seconds since the epoch; the TIME command and key expiry read it (tests may pass a
        #: clock they move by hand).
        self.clock = clock
        self.data: dict[bytes, Any] = {}
        self.expires: dict[bytes, float] = {}  # key -> deadline in clock seconds
        self.lock = threading.Lock()
        #: Notified after a write that may end a blocking pop (BZPOPMIN waits on it).
        self.changed = threading.Condition(self.lock)
        #: key -> threads blocked in a blocking pop on it: a write wakes them only when it
        #: touches one of their keys (scripts ZADD to other sorted sets all the time).
        self.waiters: dict[bytes, int] = {}

    def _expired(self, key: bytes) -> bool:
        deadline = self.expires.get(key)
        if deadline is None or self.clock() < deadline:
            return False
        del self.expires[key]
        self.data.pop(key, None)
        return True

    def get(self, key: bytes, kind: type) -> Any:
        """The value at ``key`` if it is of ``kind``; None when there is none; WRONGTYPE else."""
        value = self.data.get(key)
        if value is None:
            return None
        if key in self.expires and self._expired(key):
            return None
        if type(value) is not kind:
            raise CommandError(WRONGTYPE)
        return value

    def get_or_create(self, key: bytes, kind: type) -> Any:
        value = self.get(key, kind)
        if value is None:
            value = self.data[key] = kind()
        return value

    def lookup(self, key: bytes) -> Any:
        """The value at ``key`` of any type, or None."""
        value = self.data.get(key)
        if value is None or (key in self.expires and self._expired(key)):
            return None
        return value

    def delete(self, key: bytes) -> bool:
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None

    def drop_if_empty(self, key: bytes, value: Any) -> None:
        """Redis deletes a list, hash, set or sorted set when its last element goes."""
        if not value:
            self.data.pop(key, None)
            self.expires.pop(key, None)

    def set_deadline(self, key: bytes, deadline: float | None) -> None:
        if deadline is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = deadline

    def live_keys(self) -> list[bytes]:
        if self.expires:
            for key in list(self.expires):
                self._expired(key)
        return list(self.data)

    def flush(self) -> None:
        self.data.clear()
        self.expires.clear()
