"""Differential test of workshaper.embedded.engine.PartitionEngine against the Lua scripts.

The same random sequence of one partition's operations goes, through scripts.py's typed calls,
into a private redis-server and, as method calls with the same arguments, into a
PartitionEngine of the same namespace and partition. Every reply must be equal, and after every
step the engine's render() must equal the namespace's keys on the server, both masked as
tests/test_embedded_differential.py masks them: lease deadlines compared as the leased members
only, clock samples as their offsets only, failure records without their time and with their
JSON decoded.

Covers what the engine supports: enqueue (random offsets, the next ones in order, re-deliveries:
dedupe, acked and being-acked offsets, backpressure, re-sent request ids, late gap fills, None
sub keys, the lost-writes check of expected_highest), claims (two workers, batch sizes,
max_attempts, both exhausted modes, re-sent request ids, head items with attempts), completions
of one lease and of several in one call (keep, continue, yield, release, some with stale
tokens), failures (retry, dead letter, block, force, stale token), lease renewals, and the offer
and commit of watermarks (also re-sent); besides the single operations, whole worker rounds
(claim, complete every new lease in one call, ack), so that every sequence has some. Not here,
as a single process never needs them: lease expiry and the crash window after it, isolation
marks, unblock and replay, corrupt entries; and malformed calls (a repeated sub key...): should
a call get an error reply anyway, the engine must raise too.

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
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis.statistics import collector, describe_statistics

from tests.differential import encode_items, entry_offsets, masked, outcome, read_keys
from workshaper import codec, scripts
from workshaper.batch import run_one
from workshaper.connection import Backend, connect
from workshaper.embedded.engine import PartitionEngine
from workshaper.keys import NamespaceKeys
from workshaper.scripts import Claimed, Completion, CompletionReply, Offer
from workshaper_tools.testing import RedisServer

LEASE_MS = 60_000
#: One sub key more than tests/test_embedded_differential.py: nothing unblocks a blocked one
#: here, so a sequence needs more of them to keep items flowing.
SUBS = ["a", "b", "c", "d", None]
#: The error reply of a script, as the machine records it (the engine must raise then).
ERROR = ("error",)
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

sub_keys = st.sampled_from(SUBS)
offsets = st.integers(min_value=0, max_value=40)
item_lists = st.lists(st.tuples(sub_keys, offsets), min_size=1, max_size=8)
#: A stale token (a leaseholder that lost its lease) one call in five.
stale_tokens = st.integers(0, 4).map(lambda x: x == 0)
modes = st.sampled_from(["d", "b"])
actions = st.sampled_from(["k", "c", "y", "r"])
acks = st.sampled_from(["none", "offer", "commit"])


class ScriptsPartition:
    """Partition 0 of a namespace on a redis-server, behind PartitionEngine's methods: each
    operation is the typed call of scripts.py of the same name, in a batch of its own."""

    def __init__(self, backend: Backend, namespace: str) -> None:
        self.backend = backend
        self.pkeys = NamespaceKeys(namespace).partition(0)
        # The whole namespace, not the partition alone: a write outside it shows up too.
        self.pattern = f"ws:{{{namespace}*"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in OPERATIONS:
            raise AttributeError(name)
        typed = getattr(scripts, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return run_one(self.backend, lambda batch: typed(batch, self.pkeys, *args, **kwargs))

        return call

    def render(self) -> dict[bytes, tuple[bytes, Any]]:
        """The keys as PartitionEngine.render() gives them (unmasked)."""
        return read_keys(self.backend.client, self.pattern)

    # The client does not decode responses: its replies are bytes (the casts say so to mypy).

    def head(self, sub: bytes) -> bytes | None:
        return cast("bytes | None", self.backend.client.lindex(self.pkeys.queue(sub), 0))

    def entries(self, sub: bytes, count: int) -> list[bytes]:
        """The first ``count`` entries of the sub key's queue."""
        return cast("list[bytes]", self.backend.client.lrange(self.pkeys.queue(sub), 0, count - 1))

    def highest(self) -> int:
        """The highest accepted offset (-1: none), as the producer last saw it accepted."""
        value = cast("bytes | None", self.backend.client.hget(self.pkeys.meta, "max"))
        return -1 if value is None else int(value)

    def latest_clock_sample(self) -> int | None:
        """The server millisecond of the newest clock sample left, if any."""
        members = cast("list[bytes]", self.backend.client.zrange(self.pkeys.clock, 0, -1))
        return max((int(m) for m in members), default=None)

    def server_ms(self) -> int:
        seconds, micros = self.backend.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def close(self) -> None:
        keys = list(self.backend.client.scan_iter(match=self.pattern, count=1000))
        if keys:
            self.backend.client.delete(*keys)
        self.backend.close()


Partition = PartitionEngine | ScriptsPartition


class EngineDifferential(RuleBasedStateMachine):
    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.real = ScriptsPartition(connect(redis_url), "e" + uuid.uuid4().hex[:10])
        self.pkeys = self.real.pkeys
        self.now_ms = self.real.server_ms()
        self.engine = PartitionEngine(self.pkeys, clock=self._clock)
        self.leases: dict[bytes, int] = {}  # sub -> token, as claimed
        #: sub -> the offsets its lease was handed (by its claim, then by each continue)
        self.handed: dict[bytes, list[int]] = {}
        self.requests: dict[str, int] = {}  # per stream of request ids: the last one's number

    def _clock(self) -> float:
        # +0.25 ms: int(t * 1000) and round(t * 1000) both give now_ms back, float error or not.
        return (self.now_ms + 0.25) / 1000

    def _request(self, stream: str, repeat: bool) -> str:
        """A new request id of ``stream`` (the partition's producer, a worker), or with
        ``repeat`` its last one again (a re-sent round trip)."""
        number = self.requests.get(stream, 0)
        if not repeat or number == 0:
            number = self.requests[stream] = number + 1
        return f"{stream}:{number}"

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
        reply = getattr(self.engine, name)(*args, **kwargs)
        assert reply == real, name
        event(f"{what}: {outcome(real)}")  # --hypothesis-show-statistics: what was covered
        return real

    def _engine_raises(self, name: str, *args: Any, **kwargs: Any) -> None:
        """The script answered an error: the engine must raise (NotImplementedError aside: that
        is an operation the engine does not have, not an answer)."""
        try:
            reply = getattr(self.engine, name)(*args, **kwargs)
        except NotImplementedError:
            raise
        except Exception:
            return
        raise AssertionError(f"{name}: the script answered an error, the engine {reply!r}")

    # --- producer ---------------------------------------------------------------------------

    @rule(items=item_lists, max_in_queue=st.sampled_from([3, 8, 100]), repeat=st.booleans())
    def enqueue(self, items: list[tuple[Any, int]], max_in_queue: int, repeat: bool) -> None:
        rid = self._request("enqueue", repeat)
        self.both("enqueue", "enqueue_items", encode_items(items), max_in_queue, rid)

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

    @rule(with_offsets=st.booleans(), commit=st.booleans(), resend=st.booleans())
    def offer_and_commit(self, with_offsets: bool, commit: bool, resend: bool) -> None:
        """A watermark offered and, if it advances, committed (or not yet: its ack still runs,
        and enqueue answers "being acked", 4, for the offsets it covers)."""
        offer = self.both("offer", "offer_watermark", with_offsets)
        if commit and isinstance(offer, Offer) and offer.advances:
            self.both("commit", "commit_watermark", offer.watermark)
            if resend:  # the commit's round trip again: the watermark is already there
                self.both("commit again", "commit_watermark", offer.watermark)

    def _ack(self, ack: str) -> None:
        """The ack loop's turn after a completion ("none", "offer" or "commit"; offsets asked
        for when committing): without it watermarks would seldom move in a sequence
        (offer_and_commit is one rule of many)."""
        if ack != "none":
            commit = ack == "commit"
            self.offer_and_commit(with_offsets=commit, commit=commit, resend=False)

    # --- worker -----------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 3),
        worker=st.sampled_from(["w1", "w2"]),
        batch_size=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=modes,
        repeat=st.booleans(),
    )
    def claim(
        self, n: int, worker: str, batch_size: int, max_attempts: int, mode: str, repeat: bool
    ) -> None:
        self._claim("claim", n, worker, batch_size, max_attempts, mode, repeat)

    def _claim(
        self,
        what: str,
        n: int,
        worker: str,
        batch_size: int,
        max_attempts: int,
        mode: str,
        repeat: bool = False,
    ) -> list[Claimed]:
        """Claim and track the leases: the claim's leases."""
        reply = self.both(
            what,
            "claim_sub_keys",
            worker_id=worker,
            request_id=self._request(worker, repeat),
            max_leases=n,
            lease_ms=LEASE_MS,
            batch_size=batch_size,
            max_attempts=max_attempts,
            exhausted_mode=mode,
        )
        if reply == ERROR:
            return []
        claims: list[Claimed] = reply[1]
        for claimed in claims:
            self.leases[claimed.sub] = claimed.token
            self.handed[claimed.sub] = entry_offsets(claimed.entries)
            if claimed.attempts_record:
                event("claim: a head item with attempts")
        return claims

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

    def _lease(self, pick: int) -> tuple[bytes, int]:
        subs = sorted(self.leases)
        sub = subs[pick % len(subs)]
        return sub, self.leases[sub]

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        count=st.integers(0, 3),
        action=actions,
        stale=stale_tokens,
        batch_size=st.integers(1, 3),
        ack=acks,
    )
    def complete(
        self, pick: int, count: int, action: str, stale: bool, batch_size: int, ack: str
    ) -> None:
        """One lease: the offsets at the head of its queue now (what its holder finished)."""
        sub, token = self._lease(pick)
        done = entry_offsets(self.real.entries(sub, count))
        completion = Completion(sub, token - 1 if stale else token, action, done)
        replies = self.both(
            "complete",
            "complete_items",
            [completion],
            lease_ms=LEASE_MS,
            batch_size=batch_size,
        )
        self._completed([completion], replies, [stale])
        self._ack(ack)

    @precondition(lambda self: self.leases)
    @rule(
        picks=st.lists(
            st.tuples(st.integers(0, 10), st.integers(0, 4), actions), min_size=1, max_size=4
        ),
        stale=st.lists(stale_tokens, min_size=4, max_size=4),
        batch_size=st.integers(1, 3),
        ack=acks,
    )
    def complete_many(
        self, picks: list[tuple[int, int, str]], stale: list[bool], batch_size: int, ack: str
    ) -> None:
        """One call for several leases of the partition, as the worker sends them: each its
        own action and the offsets it was handed (a prefix, as it finished them), some fenced."""
        subs = sorted(self.leases)
        start = picks[0][0]
        completions: list[Completion] = []
        stales: list[bool] = []
        # Distinct sub keys (one entry per lease in a call): consecutive ones from `start`.
        for i, ((_, count, action), is_stale) in enumerate(
            zip(picks[: len(subs)], stale, strict=False)
        ):
            sub = subs[(start + i) % len(subs)]
            token = self.leases[sub]
            done = self.handed.get(sub, [])[:count]
            completions.append(Completion(sub, token - 1 if is_stale else token, action, done))
            stales.append(is_stale)
        replies = self.both(
            f"complete {len(completions)} leases",
            "complete_items",
            completions,
            lease_ms=LEASE_MS,
            batch_size=batch_size,
        )
        if len(completions) > 1 and replies != ERROR:
            codes = ",".join(sorted({str(r.code) for r in replies}))
            event(f"complete_many: {len(completions)} leases, codes {codes}")
            if len({c.action for c in completions}) > 1:
                event("complete_many: mixed actions")
        self._completed(completions, replies, stales)
        self._ack(ack)

    def _completed(self, completions: list[Completion], replies: Any, stales: list[bool]) -> None:
        """Track each lease after a completion call: released, or what it holds now."""
        if replies == ERROR:
            return
        for completion, reply, is_stale in zip(completions, replies, stales, strict=True):
            if is_stale or reply.code == -1:
                continue
            if completion.action == "y":  # gave way (others waiting) or went on
                event(f"yield: {'gave way' if reply.requeued else f'code {reply.code}'}")
            sub = completion.sub
            if reply.code == 2:
                self.leases.pop(sub, None)
                self.handed.pop(sub, None)
            elif reply.next_entries:
                self.handed[sub] = entry_offsets(reply.next_entries)
                if reply.attempts_record:
                    event("continue: a head item with attempts")
            else:
                self.handed[sub] = self.handed.get(sub, [])[reply.finished :]

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        attempt=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=modes,
        force=st.booleans(),
        stale=stale_tokens,
    )
    def fail(
        self, pick: int, attempt: int, max_attempts: int, mode: str, force: bool, stale: bool
    ) -> None:
        """The head item of a lease failed (a blocked sub key's lease is kept here on purpose:
        its holder does not know yet, and its next calls must be fenced)."""
        sub, token = self._lease(pick)
        self._fail(sub, token - 1 if stale else token, attempt, max_attempts, mode, force)

    def _fail(
        self, sub: bytes, token: int, attempt: int, max_attempts: int, mode: str, force: bool
    ) -> Any:
        """The head item of ``sub`` (as the server has it) failed: the reply, or None when
        there is no item to fail."""
        head = self.real.head(sub)
        if head is None:
            return None
        return self.both(
            "fail",
            "fail_item",
            sub=sub,
            token=token,
            head_prefix=codec.head_prefix(head),
            offset=codec.parse_entry(head).offset,
            attempt=attempt,
            max_attempts=max_attempts,
            exhausted_mode=mode,
            force=force,
            error_json='{"type":"Boom","message":"x/y"}',
            lease_ms=LEASE_MS,
        )

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10), max_attempts=st.integers(1, 3), mode=modes)
    def last_attempt_fails(self, pick: int, max_attempts: int, mode: str) -> None:
        """Out of attempts: dead-lettered ("d", the lease goes on) or blocked ("b", the lease
        released, the sub key held for an operator): rare among the fail rule's random draws."""
        sub, token = self._lease(pick)
        self._fail(sub, token, max_attempts, max_attempts, mode, False)

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10), attempt=st.integers(1, 2), then=st.sampled_from(["r", "c"]))
    def retry_then_complete(self, pick: int, attempt: int, then: str) -> None:
        """A failed attempt, to be retried after a backoff, then the lease completed with
        nothing finished: released ("r", its worker stopping: the next claim of the sub key
        hands out the attempts so far), or continued ("c": the head again, with its attempts)."""
        sub, token = self._lease(pick)
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
            sub, token = self._lease(pick)
            leases.append((sub, token - 1 if stale else token))
        self.both("extend", "extend_leases", leases, LEASE_MS)

    # --- the whole state ------------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert masked(self.pkeys, self.engine.render()) == masked(self.pkeys, self.real.render())

    def teardown(self) -> None:
        self.real.close()


def _run(redis_server: RedisServer, examples: int, steps: int, node: pytest.Item) -> None:
    # The state machine runs inside a plain test: hand its events to the pytest item, so that
    # --hypothesis-show-statistics lists what the sequences covered.
    def note(stats: Any) -> None:
        stats["nodeid"] = node.nodeid
        node.hypothesis_statistics = describe_statistics(stats)  # type: ignore[attr-defined]

    # Both take what their annotations do not say: a callable, and a factory of the machine.
    with collector.with_value(note):  # type: ignore[arg-type]
        run_state_machine_as_test(
            lambda: EngineDifferential(redis_server.url),  # type: ignore[arg-type]
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                derandomize=True,  # seeded: the same sequences on every run
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


@pytest.mark.timeout(900)  # a failure's shrinking can take minutes
def test_engine_matches_scripts_step_by_step(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    _run(redis_server, examples=80, steps=40, node=request.node)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_engine_matches_scripts_long_run(
    redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    _run(redis_server, examples=600, steps=60, node=request.node)


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
    real = ScriptsPartition(connect(server.url), namespace)
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
