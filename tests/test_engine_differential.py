"""Differential test of workshaper.embedded.engine.PartitionEngine against the Lua scripts.

The same random sequence of one partition's operations goes, through scripts.py's typed calls,
into a private redis-server and, as method calls with the same arguments, into a
PartitionEngine of the same namespace and partition. Every reply must be equal, and after every
step the engine's render() must equal the namespace's keys on the server, both masked as
tests/differential.py masks them: lease deadlines compared as the leased members only, clock
samples as their offsets only, failure records without their time and with their JSON decoded.

Covers what the engine supports: enqueue (random offsets, the next ones in order, re-deliveries:
dedupe, acked and being-acked offsets, backpressure, re-sent request ids, late gap fills, None
sub keys, the lost-writes check of expected_highest), claims (two workers, batch sizes,
max_attempts, both exhausted modes, re-sent request ids, head items with attempts), completions
of one lease and of several in one call (keep, continue, yield, release, some with stale
tokens, some holding entries past those they report, retries carrying more offsets), failures
(retry, dead letter, block, force, stale token), lease renewals, and the offer and commit of
watermarks (also re-sent); besides the single operations, whole worker rounds
(claim, complete every new lease in one call, ack), so that every sequence has some. Not here,
as a single process never needs them: lease expiry and the crash window after it, isolation
marks, unblock and replay, corrupt entries; and malformed calls (a repeated sub key...): should
a call get an error reply anyway, the engine must raise too. The rules it shares with
tests/test_embedded_differential.py (enqueue, offer and commit, claim, complete, complete_many,
fail) are tests/differential.py's; here are the ones only this test draws.

Coverage (what the sequences did): pytest --hypothesis-show-statistics. When it was written,
nineteen bugs planted in the engine by hand (a yield that never gives way, a re-sent claim not
recognised, a blocked sub key requeued, attempts records lost...) were each found by the default
run.

The engine's clock follows the server's (see EngineDifferential.both): a clock sample's member
is the server millisecond, and two enqueue calls in one millisecond share one sample, so the
engine must see the same millisecond for its samples to be as many as the server's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.differential import (
    LEASE_MS,
    PartitionDifferential,
    ScriptsPartition,
    acks,
    actions,
    encode_items,
    item_lists,
    masked,
    modes,
    outcome,
    run_machine,
    stale_tokens,
    sub_keys,
)
from workshaper import codec
from workshaper.connection import connect
from workshaper.embedded.engine import PartitionEngine
from workshaper.errors import ScriptError
from workshaper.keys import NamespaceKeys
from workshaper.scripts import Claimed, Completion, CompletionReply, Offer
from workshaper_tools.testing import RedisServer

#: The error reply of a script, as the machine records it (the engine must raise then).
ERROR = ("error", "ResponseError")
#: What PartitionEngine shares with scripts.py: the same name, the same arguments (without the
#: batch and the partition's keys) and the same reply.
OPERATIONS = frozenset(
    {
        "enqueue_items",
        "claim_sub_keys",
        "complete_items",
        "fail_item",
        "extend_leases",
        "offer_watermark",
        "commit_watermark",
    }
)

Partition = PartitionEngine | ScriptsPartition


class EngineDifferential(PartitionDifferential):
    #: One sub key more than tests/test_embedded_differential.py: nothing unblocks a blocked one
    #: here, so a sequence needs more of them to keep items flowing.
    subs = ("a", "b", "c", "d", None)
    tested: PartitionEngine

    def __init__(self, redis_url: str) -> None:
        namespace = "e" + uuid.uuid4().hex[:10]
        super().__init__(ScriptsPartition(connect(redis_url), namespace, OPERATIONS))
        self.now_ms = self.real.server_ms()
        self.tested = PartitionEngine(self.pkeys, clock=self._clock)

    def _clock(self) -> float:
        # +0.25 ms: int(t * 1000) and round(t * 1000) both give now_ms back, float error or not.
        return (self.now_ms + 0.25) / 1000

    def both(self, what: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """``name`` with the same arguments on both sides: the same reply, or an error on both."""
        try:
            real = getattr(self.real, name)(*args, **kwargs)
        except redis.ResponseError:
            self._engine_raises(name, *args, **kwargs)
            event(f"{what}: error")
            return ERROR
        if name == "enqueue_items":
            # The engine's clock reads the millisecond of the sample the call just recorded on
            # the server (if it recorded one); lease deadlines and failure times are masked, so
            # the other calls need no particular time, only one that never goes back.
            self.now_ms = max(self.now_ms, self.real.latest_clock_sample() or 0)
        reply = getattr(self.tested, name)(*args, **kwargs)
        assert reply == real, name
        event(f"{what}: {outcome(real)}")  # --hypothesis-show-statistics: what was covered
        return real

    def _engine_raises(self, name: str, *args: Any, **kwargs: Any) -> None:
        """The script answered an error: the engine must raise (NotImplementedError aside: that
        is an operation the engine does not have, not an answer)."""
        try:
            reply = getattr(self.tested, name)(*args, **kwargs)
        except NotImplementedError:
            raise
        except Exception:
            return
        raise AssertionError(f"{name}: the script answered an error, the engine {reply!r}")

    # --- what only a worker process's partition does -------------------------------------

    @rule(
        subs=st.lists(sub_keys, min_size=1, max_size=6),
        gap=st.sampled_from([0, 0, 0, 1, 2]),
        max_in_queue=st.sampled_from([8, 100]),
    )
    def enqueue_next(self, subs: list[Any], gap: int, max_in_queue: int) -> None:
        """The producer's usual call: the next offsets, in order (after a gap, sometimes, which
        a later call may fill). Keeps items flowing, so that watermarks advance and acked and
        being-acked offsets come back as re-deliveries."""
        first = self.real.highest() + 1 + gap
        items = [(sub, first + i) for i, sub in enumerate(subs)]
        rid = self._request("enqueue", False)
        self.both("enqueue next", "enqueue_items", encode_items(items), max_in_queue, rid)

    @rule(back=st.integers(1, 8), subs=st.lists(sub_keys, min_size=1, max_size=4))
    def redeliver(self, back: int, subs: list[Any]) -> None:
        """The producer resumes from an older position (a restart, a replay): offsets it sent
        before come again, acked (2), being acked (4), pending or finished (1), or a gap's."""
        first = max(0, self.real.highest() - back)
        items = [(sub, first + i) for i, sub in enumerate(subs)]
        rid = self._request("enqueue", False)
        self.both("redeliver", "enqueue_items", encode_items(items), 100, rid)

    @rule(items=item_lists, ahead=st.integers(-2, 2), repeat=st.booleans())
    def enqueue_expecting(self, items: list[tuple[Any, int]], ahead: int, repeat: bool) -> None:
        """The producer names the highest offset it saw accepted: ahead of the partition's
        (Redis lost writes), nothing is written and every item's status is 5."""
        expected = max(-1, self.real.highest() + ahead)
        rid = self._request("enqueue", repeat)
        self.both(
            f"enqueue expecting {'ahead' if ahead > 0 else 'at or below'}",
            "enqueue_items",
            encode_items(items),
            100,
            rid,
            expected_highest=expected,
        )

    @rule(
        worker=st.sampled_from(["w1", "w2"]),
        n=st.integers(1, 3),
        batch_size=st.integers(1, 3),
        ends=st.lists(st.tuples(st.integers(0, 3), actions), min_size=3, max_size=3),
        ack=acks,
    )
    def work(
        self, worker: str, n: int, batch_size: int, ends: list[tuple[int, str]], ack: str
    ) -> None:
        """A worker's round: a claim, some of what each new lease was handed run, every one of
        them completed in one call (each its own action), then the ack loop's turn. The other
        rules interleave anything; this one makes sure full rounds happen in every sequence."""
        claims = self._claim("work: claim", n, worker, batch_size, 3, "d")
        if not claims:
            return
        completions = [
            Completion(c.sub, c.token, action, self.handed[c.sub][:count])
            for c, (count, action) in zip(claims, ends, strict=False)
        ]
        replies = self.both(
            f"work: complete {len(completions)} leases",
            "complete_items",
            completions,
            lease_ms=LEASE_MS,
            batch_size=batch_size,
        )
        self._completed(completions, replies, [False] * len(completions))
        self._ack(ack)

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10), max_attempts=st.integers(1, 3), mode=modes)
    def last_attempt_fails(self, pick: int, max_attempts: int, mode: str) -> None:
        """Out of attempts: dead-lettered ("d", the lease goes on) or blocked ("b", the lease
        released, the sub key held for an operator): rare among the fail rule's random draws."""
        sub, token, _ = self._lease(pick)
        self._fail(sub, token, max_attempts, max_attempts, mode, False)

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10), attempt=st.integers(1, 2), then=st.sampled_from(["r", "c"]))
    def retry_then_complete(self, pick: int, attempt: int, then: str) -> None:
        """A failed attempt, to be retried after a backoff, then the lease completed with
        nothing finished: released ("r", its worker stopping: the next claim of the sub key
        hands out the attempts so far), or continued ("c": the head again, with its attempts)."""
        sub, token, _ = self._lease(pick)
        if self._fail(sub, token, attempt, 3, "d", False) != (1, attempt):
            return  # not a retry
        completion = Completion(sub, token, then, [])
        replies = self.both(
            f"{then} after a retry", "complete_items", [completion], lease_ms=LEASE_MS, batch_size=2
        )
        self._completed([completion], replies, [False])

    @precondition(lambda self: self.leases)
    @rule(picks=st.lists(st.tuples(st.integers(0, 10), stale_tokens), min_size=1, max_size=3))
    def extend(self, picks: list[tuple[int, bool]]) -> None:
        """A worker's renewal of the leases it holds (a lease may come twice: harmless)."""
        leases = []
        for pick, stale in picks:
            sub, token, _ = self._lease(pick)
            leases.append((sub, token - 1 if stale else token))
        self.both("extend", "extend_leases", leases, LEASE_MS)


@pytest.mark.timeout(900)  # a failure's shrinking can take minutes
def test_engine_matches_scripts_step_by_step(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    run_machine(
        lambda: EngineDifferential(redis_server.url), examples=80, steps=40, node=request.node
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_engine_matches_scripts_long_run(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    run_machine(
        lambda: EngineDifferential(redis_server.url), examples=600, steps=60, node=request.node
    )


# --- hand-made cases: the semantics, on the engine and (the same replies) on the scripts --------


@pytest.fixture(params=["engine", "scripts"])
def partition(request: pytest.FixtureRequest) -> Iterator[Partition]:
    """A PartitionEngine, or the scripts on the private redis-server behind the same methods:
    the cases below hold for both (the scripts' run is what checks the hand-written replies)."""
    namespace = "h" + uuid.uuid4().hex[:10]
    if request.param == "engine":
        yield PartitionEngine(NamespaceKeys(namespace).partition(0), clock=lambda: 1.7e9)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    real = ScriptsPartition(connect(server.url), namespace, OPERATIONS)
    yield real
    real.close()


def entry(offset: int) -> bytes:
    """The queue entry encode_items makes for ``offset``."""
    return encode_items([("x", offset)])[0].entry


def claim(p: Partition, request_id: str, **options: Any) -> tuple[int, list[Claimed]]:
    """A claim of worker w1, leases of a minute, ``options`` over these defaults."""
    args: dict[str, Any] = {
        "worker_id": "w1",
        "request_id": request_id,
        "max_leases": 2,
        "lease_ms": LEASE_MS,
        "batch_size": 2,
        "max_attempts": 3,
        "exhausted_mode": "d",
    }
    reply: tuple[int, list[Claimed]] = p.claim_sub_keys(**(args | options))
    return reply


def fail(p: Partition, token: int, offset: int, attempt: int, **options: Any) -> tuple[int, int]:
    """The head item ``offset`` of sub key "a" failed its attempt ``attempt`` (of 2)."""
    args: dict[str, Any] = {
        "sub": b"sa",
        "token": token,
        "head_prefix": codec.entry_prefix(offset),
        "offset": offset,
        "attempt": attempt,
        "max_attempts": 2,
        "exhausted_mode": "d",
        "force": False,
        "error_json": '{"type":"Boom","message":"x"}',
        "lease_ms": LEASE_MS,
    }
    reply: tuple[int, int] = p.fail_item(**(args | options))
    return reply


def test_enqueue_claim_complete_and_ack_by_hand(partition: Partition) -> None:
    p, k = partition, partition.pkeys
    # Items 0 and 2 on sub key "a" (encoded b"sa"), 1 on "b": all new, all accepted.
    items = encode_items([("a", 0), ("b", 1), ("a", 2)])
    assert p.enqueue_items(items, 100, "r1") == [0, 0, 0]
    assert p.enqueue_items(items, 100, "r1") == [0, 0, 0]  # re-sent: the first answer again
    assert p.enqueue_items(items, 100, "r2") == [1, 1, 1]  # another call: duplicates
    # The producer saw offset 5 accepted, the partition's highest is 2: lost writes.
    assert p.enqueue_items(encode_items([("c", 6)]), 100, "r3", expected_highest=5) == [5]

    # Both sub keys leased, in the order they became runnable, each with its first batch.
    assert claim(p, "c1") == (
        0,
        [Claimed(b"sa", 1, b"", 0, [entry(0), entry(2)]), Claimed(b"sb", 2, b"", 0, [entry(1)])],
    )
    # "b" finished its only item and continues: nothing left, so its lease is released.
    done_b = Completion(b"sb", 2, "c", [1])
    assert p.complete_items([done_b], lease_ms=LEASE_MS, batch_size=2) == [
        CompletionReply(2, 1, b"", [], False)
    ]
    # Offset 0 has not finished: no watermark yet.
    assert p.offer_watermark(False) == Offer(-1, -1, 3, [])
    # "a" finished 0 and keeps its lease (for 2); a stale token is fenced, nothing written.
    done_a = Completion(b"sa", 1, "k", [0])
    assert p.complete_items(
        [done_a, Completion(b"sb", 1, "k", [1])], lease_ms=LEASE_MS, batch_size=2
    ) == [CompletionReply(1, 1, b"", []), CompletionReply(-1, 0, b"", [])]
    # 0 and 1 finished: the watermark is 1. Until committed, enqueueing 1 again is "being acked".
    assert p.offer_watermark(True) == Offer(-1, 1, 3, [0, 1])
    assert p.enqueue_items(encode_items([("b", 1)]), 100, "r4") == [4]
    assert p.commit_watermark(1) == 1  # one accepted item left: 2
    assert p.enqueue_items(encode_items([("a", 0), ("b", 1)]), 100, "r5") == [2, 2]  # acked

    assert masked(k, p.render()) == {
        k.meta: (
            b"hash",
            {b"max": b"2", b"request": b"r5|22", b"token": b"2", b"acked": b"1"},
        ),
        k.accepted: (b"list", [b"2"]),
        k.heads: (b"zset", [(b"sa", 2.0)]),
        k.leases: (b"zset", [b"sa"]),  # masked: the members only
        k.owners: (b"hash", {b"sa": b"1|-|2|3|d|w1"}),
        k.clock: (b"zset", [2.0]),  # masked: the offsets only; the sample at 2 outlives ack 1
        k.queue(b"sa"): (b"list", [entry(2)]),
        k.claim_record("w1"): (b"string", b"c1\n0 1\n2:sa2:sb"),
    }


def test_fail_retry_dead_letter_and_block_by_hand(partition: Partition) -> None:
    p, k = partition, partition.pkeys
    assert p.enqueue_items(encode_items([("a", 0), ("a", 1)]), 100, "r1") == [0, 0]
    assert claim(p, "c1", batch_size=1) == (0, [Claimed(b"sa", 1, b"", 0, [entry(0)])])
    # A renewal: the second pair's token is not the lease's (index 1 lost).
    assert p.extend_leases([(b"sa", 1), (b"sa", 7)], LEASE_MS) == [1]

    assert fail(p, 1, 0, attempt=1) == (1, 1)  # retry later: one attempt of two spent
    assert fail(p, 7, 0, attempt=2) == (-1, 0)  # a stale token: fenced
    assert fail(p, 1, 0, attempt=2) == (2, 2)  # attempts spent: dead-lettered, lease held
    assert fail(p, 1, 0, attempt=2) == (0, 0)  # re-sent: 0 is no longer the head
    # The holder continues with the next item (no attempts on it yet).
    assert p.complete_items([Completion(b"sa", 1, "c", [])], lease_ms=LEASE_MS, batch_size=1) == [
        CompletionReply(1, 0, b"", [entry(1)])
    ]
    # Its one attempt allowed spent, on_exhausted "b": blocked, the lease released.
    assert fail(p, 1, 1, attempt=1, max_attempts=1, exhausted_mode="b") == (3, 1)
    # The dead letter counts as finished: the watermark can pass 0, not the blocked 1.
    assert p.offer_watermark(True) == Offer(-1, 0, 2, [0])

    boom = '{"message": "x", "type": "Boom"}'
    assert masked(k, p.render()) == {
        k.meta: (b"hash", {b"max": b"1", b"request": b"r1|n2", b"token": b"1", b"offer": b"0"}),
        k.accepted: (b"list", [b"0", b"1"]),
        k.heads: (b"zset", [(b"sa", 1.0)]),
        k.attempts: (b"hash", {b"sa": b"1|1"}),
        # Masked: (error JSON decoded, attempts, entry) by field, without the time.
        k.dead: (
            b"hash",
            ({b"0": ('{"message": "x", "sub_hex": "7361", "type": "Boom"}', b"2", entry(0))}, []),
        ),
        k.blocked: (b"hash", ({b"sa": (boom, b"1", entry(1))}, [])),
        k.clock: (b"zset", [1.0]),
        k.queue(b"sa"): (b"list", [entry(1)]),
        k.claim_record("w1"): (b"string", b"c1\n0 1\n2:sa"),
    }


def test_a_retried_completion_with_more_offsets_by_hand(partition: Partition) -> None:
    p = partition
    assert p.enqueue_items(encode_items([("a", o) for o in range(4)]), 100, "r1") == [0] * 4
    _, [lease] = claim(p, "c1", max_leases=1, batch_size=3)
    assert lease.entries == [entry(0), entry(1), entry(2)]
    applied = Completion(b"sa", lease.token, "k", [0, 1])
    assert p.complete_items([applied], lease_ms=LEASE_MS, batch_size=3) == [
        CompletionReply(1, 2, b"", [])
    ]
    # Its reply lost, the call is rebuilt from the worker's state, where 2 finished too: 0 and
    # 1 are skipped (taken off already), 2 is recorded, and the lease continues after it.
    retried = Completion(b"sa", lease.token, "c", [0, 1, 2])
    assert p.complete_items([retried], lease_ms=LEASE_MS, batch_size=3) == [
        CompletionReply(1, 1, b"", [entry(3)])
    ]


def test_a_continue_while_holding_entries_by_hand(partition: Partition) -> None:
    p = partition
    assert p.enqueue_items(encode_items([("a", o) for o in range(6)]), 100, "r1") == [0] * 6
    _, [lease] = claim(p, "c1", max_leases=1, batch_size=3)
    # 0 finished, 1 and 2 held: what follows them, up to a batch in all (3 - 2).
    holding = Completion(b"sa", lease.token, "c", [0], held=2)
    assert p.complete_items([holding], lease_ms=LEASE_MS, batch_size=3) == [
        CompletionReply(1, 1, b"", [entry(3)])
    ]
    # 1 finished, 2 to 5 held: nothing new, nothing left, the lease kept all the same.
    holding = Completion(b"sa", lease.token, "c", [1], held=3)
    assert p.complete_items([holding], lease_ms=LEASE_MS, batch_size=3) == [
        CompletionReply(1, 1, b"", [])
    ]
    keeping = Completion(b"sa", lease.token, "k", [2], held=3)
    assert p.complete_items([keeping], lease_ms=LEASE_MS, batch_size=3) == [
        CompletionReply(1, 1, b"", [])
    ]
    assert masked(p.pkeys, p.render())[p.pkeys.owners] == (b"hash", {b"sa": b"1|-|3|3|d|w1"})


@pytest.mark.parametrize(("action", "held"), [("c", -1), ("k", 3), ("y", 1), ("r", 1)])
def test_a_bad_held_count_is_refused_by_hand(partition: Partition, action: str, held: int) -> None:
    p = partition
    assert p.enqueue_items(encode_items([("a", 0), ("a", 1)]), 100, "r1") == [0, 0]
    _, [lease] = claim(p, "c1", max_leases=1)
    bad = Completion(b"sa", lease.token, action, [0], held=held)
    with pytest.raises(ScriptError, match=f"bad argument held of lease 1: {held}"):
        p.complete_items([bad], lease_ms=LEASE_MS, batch_size=2)
    assert masked(p.pkeys, p.render())[p.pkeys.queue(b"sa")] == (b"list", [entry(0), entry(1)])
