"""A hypothesis state machine: the Lua scripts against a plain-Python model of the watermark,
dedupe and backpressure rules (DESIGN.md invariants 3, 5 and 6)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from workshaper import codec
from workshaper.connection import embedded_backend
from workshaper.scripts import Completion

from .test_scripts import Partition

MAX_IN_QUEUE = 6
ACCEPTED, DUPLICATE, ALREADY_ACKED, FULL, BEING_ACKED = 0, 1, 2, 3, 4

sub_keys = st.sampled_from(["a", "b", "c", None])
offsets = st.integers(min_value=0, max_value=25)


class WatermarkModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.part = Partition(embedded_backend(), "m" + uuid.uuid4().hex[:8])
        self.pending: dict[int, bytes] = {}  # offset -> encoded sub key
        self.fifo: dict[bytes, list[int]] = {}
        self.finished: set[int] = set()  # finished, above the acked watermark
        self.acked = -1
        self.offer = -1
        self.acks: list[int] = []

    # --- the model ------------------------------------------------------------------------

    def expected_statuses(self, items: list[tuple[Any, int]]) -> list[int]:
        statuses, full, in_queue = [], False, len(self.pending) + len(self.finished)
        accepted_now: set[int] = set()
        for sub, offset in items:
            duplicate = offset in self.pending or offset in self.finished or offset in accepted_now
            if full:  # everything after the first refused item is refused (and re-sent later)
                statuses.append(FULL)
            elif offset <= self.acked:
                statuses.append(ALREADY_ACKED)
            elif offset <= self.offer:
                statuses.append(BEING_ACKED)
            elif duplicate:
                statuses.append(DUPLICATE)
            elif in_queue >= MAX_IN_QUEUE:
                full = True
                statuses.append(FULL)
            else:
                statuses.append(ACCEPTED)
                accepted_now.add(offset)
                in_queue += 1
                enc = codec.encode_sub_key(sub, offset)
                self.pending[offset] = enc
                self.fifo.setdefault(enc, []).append(offset)
        return statuses

    def expected_watermark(self) -> int:
        lowest = min(self.pending, default=None)
        below = [o for o in self.finished if lowest is None or o < lowest]
        return max(below, default=self.acked)

    def finish_head(self, sub: bytes) -> int:
        offset = self.fifo[sub].pop(0)
        if not self.fifo[sub]:
            del self.fifo[sub]
        del self.pending[offset]
        self.finished.add(offset)
        return offset

    # --- rules --------------------------------------------------------------------------------

    @rule(items=st.lists(st.tuples(sub_keys, offsets), min_size=1, max_size=6))
    def enqueue(self, items: list[tuple[Any, int]]) -> None:
        expected = self.expected_statuses(items)
        assert self.part.enqueue(*items, max_in_queue=MAX_IN_QUEUE) == expected

    @precondition(lambda self: self.fifo)
    @rule(items=st.integers(min_value=1, max_value=3))
    def work(self, items: int) -> None:
        """A worker leases one sub key and finishes up to `items` items, then releases it."""
        _, [lease] = self.part.claim(n=1)
        assert lease.sub in self.fifo, "only sub keys with items are runnable"
        heads = self.fifo[lease.sub][:items]
        [reply] = self.part.complete(Completion(lease.sub, lease.token, "r", heads))
        assert (reply.code, reply.finished) == (2, len(heads))
        for _ in heads:
            self.finish_head(lease.sub)

    @precondition(lambda self: self.fifo)
    @rule()
    def give_up(self) -> None:
        """The head item of a sub key fails its last attempt: dead-lettered, counts as finished."""
        _, [lease] = self.part.claim(n=1)
        code, attempts = self.part.fail(lease.sub, lease.token, attempt=3, max_attempts=3)
        assert code == 2 and attempts >= 3  # earlier crashes may have charged attempts too
        self.finish_head(lease.sub)
        self.part.complete(Completion(lease.sub, lease.token, "r", []))

    @precondition(lambda self: self.fifo)
    @rule()
    def crash(self) -> None:
        """A worker dies holding a lease; the reaper gives the sub key back, nothing finishes."""
        _, [lease] = self.part.claim(n=1, max_attempts=100)
        self.part.make_expired(lease.sub)
        code, _ = self.part.expire(lease.sub)
        assert code == 1

    @rule(ack_raises=st.booleans())
    def ack_tick(self, ack_raises: bool) -> None:
        offer = self.part.offer(with_offsets=True)
        expected = self.expected_watermark()
        assert (offer.acked, offer.watermark) == (self.acked, expected)
        assert offer.offsets == sorted(o for o in self.finished if o <= expected)
        if not offer.advances:
            return
        self.offer = max(self.offer, offer.watermark)
        if ack_raises:
            return  # offered, not committed: enqueue must already treat it as acked
        assert offer.watermark > (self.acks[-1] if self.acks else -1)
        self.acks.append(offer.watermark)
        self.part.commit(offer.watermark)
        self.acked = offer.watermark
        self.finished = {o for o in self.finished if o > self.acked}
        if self.offer <= self.acked:
            self.offer = -1

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def redis_matches_model(self) -> None:
        client = self.part.backend.client
        keys = self.part.keys
        # The backend's client replies bytes; redis-py types every reply bytes | str.
        accepted = [int(o) for o in cast("list[bytes]", client.lrange(keys.accepted, 0, -1))]
        assert accepted == sorted(set(self.pending) | self.finished)
        scored = cast(
            "list[tuple[bytes, float]]", client.zrange(keys.heads, 0, -1, withscores=True)
        )
        heads = {sub: int(score) for sub, score in scored}
        assert heads == {sub: fifo[0] for sub, fifo in self.fifo.items()}
        late = cast("list[bytes]", client.zrange(keys.late, 0, -1))
        assert {int(o) for o in late} <= set(self.pending)
        for sub, fifo in self.fifo.items():
            entries = cast("list[bytes]", client.lrange(keys.queue(sub), 0, -1))
            assert [codec.parse_entry(e).offset for e in entries] == fifo
        assert client.zcard(keys.leases) == 0

    @invariant()
    def watermark_never_passes_unfinished_work(self) -> None:
        assert all(self.acked < o for o in self.pending)

    @invariant()
    def backpressure_holds(self) -> None:
        assert len(self.pending) + len(self.finished) <= MAX_IN_QUEUE

    def teardown(self) -> None:
        self.part.backend.close()


WatermarkModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, derandomize=True
)
TestWatermarkModel = WatermarkModel.TestCase
