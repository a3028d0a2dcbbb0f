"""A lane's window: the entries a worker holds of a leased lane, run in parallel by sub key.

A producer with ``lanes`` spreads each partition's sub keys over a fixed number of lanes (a
Redis list each, every entry carrying its item's own sub key), and a worker leases a whole
lane. Only a finished *prefix* of the lane can be recorded (its list is trimmed from the head),
so the worker holds a window of the entries it read, at most ``batch_size`` past the recorded
head, and runs them by their own sub key::

    waiting   per sub key, its entries not started yet, in lane order
    runnable  sub keys with entries waiting and nothing running, failed or retrying
    a run     a sub key's waiting entries, handed to the executor as one batch; when items are
              short and sub keys many, several sub keys' entries one after another (a thread
              hand-off and a coordinator event cost more than a no-op item: see take_run)

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

import math
from collections import deque
from collections.abc import Callable, Iterable
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
    def lost(self) -> bool: ...

    @property
    def valid_until(self) -> float: ...


@dataclass(eq=False, slots=True)
class Slot:
    """One entry of the window."""

    offset: int  # for an entry without a readable offset, a negative number of its own
    raw: bytes
    sub: bytes  # the item's encoded sub key; for an entry without one, a name of its own
    #: Where the entry's tagged payload starts in ``raw``; 0: the entry did not read (corrupt).
    payload_at: int = 0
    done: bool = False


class Run:
    """A sub key's waiting entries of one lane, in order: what the executor runs as a batch.

    The executor reads ``stop`` and ``valid_until`` before each item: those are the lease's,
    so stopping or losing the lane stops every run of it. A run has no slice of its own (a
    lane yields by its quantum, lane_leases.py)."""

    yield_at = math.inf

    __slots__ = (
        "finished",
        "lease",
        "notified",
        "partition",
        "slots",
        "started",
        "sub_key",
        "subs",
        "token",
        "took",
        "window",
    )

    def __init__(
        self,
        lease: LaneLease,
        window: LaneWindow,
        subs: list[bytes],
        sub_key: codec.StoredSubKey,
        slots: list[Slot],
    ) -> None:
        self.lease = lease
        self.window = window
        self.subs = subs  # the sub keys whose entries the run holds, each one's together
        #: The sub key every item of the run has. The lane itself when the run holds several
        #: sub keys (the executor then reads each item's own from its entry) or entries that
        #: carry none (the executor then finds them corrupt instead of misnaming them).
        self.sub_key = sub_key
        self.slots = slots
        self.partition = lease.partition
        self.token = lease.token
        self.finished: deque[int] = deque()
        self.notified = False
        self.started = 0.0
        self.took = 0.0

    @property
    def stop(self) -> bool:
        return self.lease.stop

    @property
    def valid_until(self) -> float:
        return self.lease.valid_until

    def stops_before(self, index: int) -> bool:
        """A stopping worker's run goes on with the items below the highest one finished in
        the lane (``fill_until``), so the prefix it records reaches every item it finished and
        none runs again; a lost lane's run stops at once."""
        fill = self.window.fill_until
        return fill is None or self.lease.lost or self.slots[index].offset > fill

    @property
    def entries(self) -> list[bytes]:
        return [slot.raw for slot in self.slots]

    @property
    def item_reader(self) -> Callable[[int], tuple[int, codec.SubKey, codec.Message]]:
        return self.item

    def item(self, index: int) -> tuple[int, codec.SubKey, codec.Message]:
        """Item ``index`` of the run: its offset, its own sub key and its message, from what
        the window read of its entry as it arrived (the entry is not parsed a second time).
        CorruptEntry (or ValueError) for an entry that does not decode, as the executor
        reports a corrupt entry."""
        slot = self.slots[index]
        if not slot.payload_at:  # it did not read: decode_lane_item names what is wrong
            return codec.decode_lane_item(slot.raw)
        payload = slot.raw[slot.payload_at :]
        sub_key = self.sub_key
        if isinstance(sub_key, codec.Lane):  # a run of several sub keys: this item's own
            return codec.decode_lane_payload(slot.offset, slot.sub, payload)
        return slot.offset, sub_key, codec.decode_message(payload)


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
        #: Set as the worker stops: the highest finished offset of the window. Entries below
        #: it that have not run yet still do (gaps), so none that finished runs again.
        self.fill_until: int | None = None
        self._unread = 0  # names entries without a readable offset or sub key

    def __len__(self) -> int:
        return len(self.slots)

    # --- reading -----------------------------------------------------------------------------

    def add(self, entries: Iterable[bytes], attempts_record: bytes = b"") -> None:
        """Append entries read from the lane (after every entry already held)."""
        # Names bound once: this runs for every entry a lane hands out.
        slots, by_offset, waiting_of = self.slots, self._by_offset, self._waiting
        busy, runnable, read = self._busy, self.runnable, codec.read_lane_entry
        for raw in entries:
            offset, sub, payload_at = read(raw)
            if offset is None or sub is None:
                # Unreadable: a sub key of its own (no encoded sub key starts with \x00), and a
                # negative offset of its own when it has none; the executor reports it corrupt.
                self._unread += 1
                sub = b"\x00%d" % self._unread
                if offset is None:
                    offset = -self._unread
            slot = Slot(offset, raw, sub, payload_at)
            slots.append(slot)
            by_offset[offset] = slot
            waiting = waiting_of.get(sub)
            if waiting is None:
                waiting = waiting_of[sub] = deque()
                if sub not in busy:
                    runnable.append(sub)
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

    def take_run(
        self, lease: LaneLease, lane: codec.StoredSubKey, sub_keys: int = 1
    ) -> tuple[Run, int]:
        """The next runnable sub key's waiting entries as a run, and its first item's attempt
        number (every later item of it is on its first).

        ``sub_keys`` > 1: the entries of up to that many runnable sub keys, one sub key after
        the other. Short items pay for a run's hand-off many times over; the sub keys still
        run one at a time each, in order. A sub key whose head item is being retried is never
        added behind another (the executor numbers only a run's first item's attempt)."""
        runnable, waiting, busy, attempts = self.runnable, self._waiting, self._busy, self._attempts
        sub = runnable.popleft()
        slots = list(waiting.pop(sub))
        busy.add(sub)
        self.in_flight += 1
        first_attempt = attempts.get(slots[0].offset, 1)
        if sub_keys <= 1 or not runnable:
            return Run(lease, self, [sub], run_sub_key(lane, sub), slots), first_attempt
        subs = [sub]
        while runnable and len(subs) < sub_keys:
            if attempts and waiting[runnable[0]][0].offset in attempts:
                break
            sub = runnable.popleft()
            slots += waiting.pop(sub)
            busy.add(sub)
            subs.append(sub)
        sub_key = run_sub_key(lane, sub) if len(subs) == 1 else lane
        return Run(lease, self, subs, sub_key, slots), first_attempt

    def finished(self, offsets: Iterable[int]) -> None:
        by_offset, fill = self._by_offset, self.fill_until
        for offset in offsets:
            slot = by_offset.get(offset)
            if slot is not None:
                slot.done = True
                if fill is not None and offset > fill:  # finished as the stop began
                    self.fill_until = fill = offset

    # --- stopping ----------------------------------------------------------------------------

    def begin_fill(self) -> None:
        """The worker stops: fill the gaps below the highest finished entry, then release."""
        if self.fill_until is None:
            self.fill_until = max((s.offset for s in self.slots if s.done), default=-1)

    def _gap(self, sub: bytes) -> bool:
        fill = self.fill_until
        return fill is not None and self._waiting[sub][0].offset <= fill

    def gap_startable(self) -> bool:
        """Is a sub key runnable whose next entry is a gap below ``fill_until``?"""
        return any(self._gap(sub) for sub in self.runnable)

    def take_gap_run(self, lease: LaneLease, lane: codec.StoredSubKey) -> tuple[Run, int] | None:
        """A run of the first runnable sub key whose next entry is a gap (its run stops at
        the first of its entries above ``fill_until``: Run.stops_before)."""
        for sub in self.runnable:
            if self._gap(sub):
                self.runnable.remove(sub)
                self.runnable.appendleft(sub)
                return self.take_run(lease, lane)
        return None

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
        kind = outcome[0]
        if kind == "finished":
            for sub in run.subs:
                self._free(sub)
            return
        rest = run.slots[outcome[1] :]
        if kind == "expired":
            self.confirm = True
        held = None
        if kind in ("failed", "corrupt"):
            held = rest[0].sub
            self.failures[rest[0].offset] = outcome  # its sub key stays busy
        # Not started, or failed: back in front of what was read for each sub key meanwhile.
        for slot in reversed(rest):
            self._waiting.setdefault(slot.sub, deque()).appendleft(slot)
        for sub in run.subs:
            if sub != held:
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
