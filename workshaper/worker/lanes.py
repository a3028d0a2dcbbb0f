"""A lane's window: the entries a worker holds of a leased lane, run in parallel by sub key.

A producer with ``lanes`` spreads each partition's sub keys over a fixed number of lanes (a
Redis list each, every entry carrying its item's own sub key), and a worker leases a whole
lane. Only a finished *prefix* of the lane can be recorded (its list is trimmed from the head),
so the worker holds a window of the entries it read, at most ``batch_size`` past the recorded
head, and runs them by their own sub key::

    waiting   per sub key, its entries not started yet, in lane order
    runnable  sub keys with entries waiting and nothing running, failed or retrying
    a run     a sub key's waiting entries, handed to the executor as one batch

So a sub key's items still run one at a time and in order, while different sub keys of the
lane run at once on the executor's slots, and a slow item holds back its own sub key, not its
lane, until the window is full.

A failed item waits with its sub key's successors behind it. Its attempt is recorded only once
it is the lane's head (fail_item.lua works on the head), so the attempts count in Redis stays
the only one, and a crash never resets it. Items finished above an unfinished one stay in the
window until the prefix reaches them: after a crash they run again (README, guarantees).

Only the coordinator thread uses a window; a Run's ``finished`` deque and ``notified`` flag
are written by the executor as a lease's are (see lease.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from workshaper import codec

Outcome = tuple[Any, ...]


class LaneLease(Protocol):
    """What a run reads of its lease before each item (the executor's stop and zombie checks)."""

    partition: int
    token: int

    @property
    def stop(self) -> bool: ...

    @property
    def valid_until(self) -> float: ...


@dataclass(eq=False, slots=True)
class Slot:
    """One entry of the window."""

    offset: int  # for an entry without a readable offset, a negative number of its own
    raw: bytes
    sub: bytes  # the item's encoded sub key; for an entry without one, a name of its own
    done: bool = False


class Run:
    """A sub key's waiting entries of one lane, in order: what the executor runs as a batch.

    The executor reads ``stop`` and ``valid_until`` before each item: those are the lease's,
    so stopping or losing the lane stops every run of it."""

    __slots__ = (
        "finished",
        "lease",
        "notified",
        "partition",
        "slots",
        "started",
        "sub",
        "sub_key",
        "token",
    )

    def __init__(
        self, lease: LaneLease, sub: bytes, sub_key: codec.StoredSubKey, slots: list[Slot]
    ) -> None:
        self.lease = lease
        self.sub = sub
        #: The sub key every item of the run has; the lane itself for entries that carry none,
        #: so the executor finds them corrupt (codec.item_sub_key) instead of misnaming them.
        self.sub_key = sub_key
        self.slots = slots
        self.partition = lease.partition
        self.token = lease.token
        self.finished: deque[int] = deque()
        self.notified = False
        self.started = 0.0

    @property
    def stop(self) -> bool:
        return self.lease.stop

    @property
    def valid_until(self) -> float:
        return self.lease.valid_until

    @property
    def entries(self) -> list[bytes]:
        return [slot.raw for slot in self.slots]


def _slot(raw: bytes, unread: int) -> Slot:
    """The slot of an entry; ``unread`` names one whose offset or sub key cannot be read."""
    head, sep, _ = raw.partition(b"|")
    sub = codec.entry_sub(raw)
    if not sep or not head.isdigit() or len(head) > 16:
        return Slot(-unread, raw, b"\x00%d" % unread)  # no encoded sub key starts with \x00
    return Slot(int(head), raw, b"\x00%d" % unread if sub is None else sub)


def run_sub_key(lane: codec.StoredSubKey, sub: bytes) -> codec.StoredSubKey:
    """The sub key the items of ``sub`` run as: decoded, or the lane when it does not decode."""
    if sub.startswith(b"\x00"):
        return lane
    try:
        sub_key = codec.decode_sub_key(sub)
    except ValueError:
        return lane
    return lane if isinstance(sub_key, codec.Lane) else sub_key


class LaneWindow:
    def __init__(self) -> None:
        #: Entries read and not recorded yet, in lane order: the first one is the lane's head.
        self.slots: deque[Slot] = deque()
        self._by_offset: dict[int, Slot] = {}
        self._waiting: dict[bytes, deque[Slot]] = {}
        #: Sub keys with a run in the executor, a failure to record or a retry to wait for.
        self._busy: set[bytes] = set()
        self.runnable: deque[bytes] = deque()
        self.in_flight = 0  # runs in the executor
        #: Failed attempts to record once their item is the head: offset -> the run's outcome.
        self.failures: dict[int, Outcome] = {}
        self._attempts: dict[int, int] = {}  # offset -> the attempt number of its next run
        #: A run stopped by the zombie rule: nothing starts until Redis confirms the lease.
        self.confirm = False
        self.waiting_for_slot = False  # queued in the dispatcher's lanes_waiting
        self._unread = 0  # names entries without a readable offset or sub key

    def __len__(self) -> int:
        return len(self.slots)

    # --- reading -----------------------------------------------------------------------------

    def add(self, entries: Iterable[bytes], attempts_record: bytes = b"") -> None:
        """Append entries read from the lane (after every entry already held)."""
        for raw in entries:
            self._unread += 1
            slot = _slot(raw, self._unread)
            self.slots.append(slot)
            self._by_offset[slot.offset] = slot
            waiting = self._waiting.get(slot.sub)
            if waiting is None:
                waiting = self._waiting[slot.sub] = deque()
                if slot.sub not in self._busy:
                    self.runnable.append(slot.sub)
            waiting.append(slot)
        self._head_attempts(attempts_record)

    def _head_attempts(self, attempts_record: bytes) -> None:
        """Redis's record of the head's attempts ("<offset>|<count>"): its next run's number."""
        if not attempts_record or not self.slots:
            return
        offset, _, count = attempts_record.partition(b"|")
        if offset.isdigit() and count.isdigit() and int(offset) == self.slots[0].offset:
            self._attempts[self.slots[0].offset] = int(count) + 1

    # --- running -----------------------------------------------------------------------------

    def take_run(self, lease: LaneLease, lane: codec.StoredSubKey) -> tuple[Run, int]:
        """The next runnable sub key's waiting entries as a run, and its first item's attempt
        number (every later item of it is on its first)."""
        sub = self.runnable.popleft()
        slots = list(self._waiting.pop(sub))
        self._busy.add(sub)
        self.in_flight += 1
        return Run(lease, sub, run_sub_key(lane, sub), slots), self._attempts.get(
            slots[0].offset, 1
        )

    def finished(self, offsets: Iterable[int]) -> None:
        by_offset = self._by_offset
        for offset in offsets:
            slot = by_offset.get(offset)
            if slot is not None:
                slot.done = True

    def prefix(self) -> list[int]:
        """Take the finished entries off the front: their offsets, to record in Redis."""
        slots, taken = self.slots, []
        while slots and slots[0].done:
            slot = slots.popleft()
            del self._by_offset[slot.offset]
            self._attempts.pop(slot.offset, None)
            taken.append(slot.offset)
        return taken

    def run_ended(self, run: Run, outcome: Outcome) -> None:
        """The executor is done with ``run`` (its finished offsets collected already)."""
        self.in_flight -= 1
        kind, sub = outcome[0], run.sub
        rest = [] if kind == "finished" else run.slots[outcome[1] :]
        if rest:  # not started, or failed: back in front of what was read for it meanwhile
            self._waiting.setdefault(sub, deque()).extendleft(reversed(rest))
        if kind == "expired":
            self.confirm = True
        if kind in ("failed", "corrupt"):
            self.failures[rest[0].offset] = outcome  # the sub key stays busy
            return
        self._free(sub)

    def _free(self, sub: bytes) -> None:
        self._busy.discard(sub)
        if self._waiting.get(sub):
            self.runnable.append(sub)
        else:
            self._waiting.pop(sub, None)

    # --- failures ----------------------------------------------------------------------------

    def head_failure(self) -> tuple[Slot, Outcome] | None:
        """The head's failed attempt, to record (it is the lane's head in Redis too)."""
        if not self.slots:
            return None
        head = self.slots[0]
        outcome = self.failures.get(head.offset)
        return None if outcome is None else (head, outcome)

    def attempt_of(self, slot: Slot) -> int:
        return self._attempts.get(slot.offset, 1)

    def retry_later(self, slot: Slot, attempt: int) -> None:
        """The head's failed attempt is recorded; it runs again once its backoff is over."""
        self._attempts[slot.offset] = attempt + 1
        self.failures.pop(slot.offset, None)

    def retry_now(self, sub: bytes) -> None:
        """A backoff is over: the sub key's failed item (first of its waiting) may run."""
        if sub in self._busy:
            self._free(sub)

    def head_dead_lettered(self) -> Slot:
        """The head was taken off the lane (dead-lettered, or found gone): forget it."""
        slot = self.slots.popleft()
        del self._by_offset[slot.offset]
        self._attempts.pop(slot.offset, None)
        self.failures.pop(slot.offset, None)
        waiting = self._waiting.get(slot.sub)
        if waiting and waiting[0] is slot:
            waiting.popleft()
        self._free(slot.sub)
        return slot

    def occupies(self, slots: int) -> int:
        """How many executor slots the lane can keep busy now (at most ``slots``)."""
        return min(slots, self.in_flight + len(self.runnable))
