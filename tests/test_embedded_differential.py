"""Differential test: the same random sequence of partition operations, through scripts.py's
typed calls, into a private redis-server and into the embedded backend. Every reply and, after
every step, every key of the namespace must be the same on both.

Covers enqueue (dedupe, backpressure, late gap fills), claims, completions (keep, continue,
yield, release; one lease a call, and several leases of the partition in one call as the worker
sends them, each its own action, some fenced), failures with retry, dead letter and block,
stale tokens (fencing), crashes (an expired lease reaped by expire_lease), exact mode after a
crash (a claim of a batch in the crash window hands out one entry, then one at a time),
isolation marks, lease renewals, unblocking, corrupt queue entries, and the offer/commit of
watermarks.

What depends on the server's clock is masked before comparing: lease deadlines (the scores of
the leases set), the clock samples' times and the time stamped into failure records. The JSON
of a failure record is compared decoded (cjson writes object keys in Lua's table order).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
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

from tests.differential import dump, encode_items, entry_offsets, outcome
from workshaper import codec, scripts
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend, connect, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.keys import NamespaceKeys
from workshaper.scripts import Completion
from workshaper_tools.testing import RedisServer

T = TypeVar("T")
LEASE_MS = 60_000
SUBS = ["a", "b", "c", None]

sub_keys = st.sampled_from(SUBS)
#: A stale token (a leaseholder that lost its lease) one call in five.
stale_tokens = st.integers(0, 4).map(lambda x: x == 0)
offsets = st.integers(min_value=0, max_value=40)


class Side:
    """One backend driven through the typed script calls."""

    def __init__(self, backend: Backend, namespace: str) -> None:
        self.backend = backend
        self.keys = NamespaceKeys(namespace).partition(0)
        self.pattern = f"ws:{{{namespace}*"

    def run(self, build: Callable[[Batch], Reply[T]]) -> Any:
        try:
            return run_one(self.backend, build)
        except Exception as exc:  # an error must be the same error on both sides
            return ("error", type(exc).__name__)

    def head(self, sub: bytes) -> bytes | None:
        value: bytes | None = self.backend.client.lindex(self.keys.queue(sub), 0)
        return value

    def state(self) -> dict[bytes, Any]:
        return dump(self.backend.client, self.keys, self.pattern)


class Differential(RuleBasedStateMachine):
    def __init__(self, redis_url: str, native: bool) -> None:
        super().__init__()
        namespace = "d" + uuid.uuid4().hex[:10]
        self.real = Side(connect(redis_url), namespace)
        self.emb = Side(embedded_backend(EmbeddedServer(native_scripts=native)), namespace)
        self.sides = (self.real, self.emb)
        self.leases: dict[bytes, tuple[int, bool]] = {}  # sub -> (token, exact), as claimed
        #: sub -> the offsets its lease was handed (by its claim, then by each continue)
        self.handed: dict[bytes, list[int]] = {}
        self.fresh = 1000  # offsets no other rule draws: items that are surely new
        self.requests = 0
        self.offer_seen = -1

    def both(self, what: str, build: Callable[[Side], Callable[[Batch], Reply[T]]]) -> Any:
        real = self.real.run(build(self.real))
        emb = self.emb.run(build(self.emb))
        assert emb == real
        event(f"{what}: {outcome(real)}")  # --hypothesis-show-statistics: what was covered
        return real

    # --- producer ---------------------------------------------------------------------------

    @rule(
        items=st.lists(st.tuples(sub_keys, offsets), min_size=1, max_size=8),
        max_in_queue=st.sampled_from([3, 8, 100]),
        repeat=st.booleans(),
    )
    def enqueue(self, items: list[tuple[Any, int]], max_in_queue: int, repeat: bool) -> None:
        if not repeat:  # repeat: the same request id again (a re-sent round trip)
            self.requests += 1
        rid = f"enqueue:{self.requests}"
        encoded = encode_items(items)
        self.both(
            "enqueue",
            lambda s: lambda b: scripts.enqueue_items(b, s.keys, encoded, max_in_queue, rid),
        )

    @rule(with_offsets=st.booleans(), commit=st.booleans())
    def offer_and_commit(self, with_offsets: bool, commit: bool) -> None:
        offer = self.both(
            "offer", lambda s: lambda b: scripts.offer_watermark(b, s.keys, with_offsets)
        )
        if commit and isinstance(offer, scripts.Offer) and offer.advances:
            self.both(
                "commit", lambda s: lambda b: scripts.commit_watermark(b, s.keys, offer.watermark)
            )

    # --- worker -----------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 3),
        worker=st.sampled_from(["w1", "w2"]),
        batch_size=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=st.sampled_from(["d", "b"]),
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
    ) -> list[scripts.Claimed]:
        if not repeat:  # repeat: the same request id again (a retried round trip)
            self.requests += 1
        rid = f"{worker}:{self.requests}"
        reply = self.both(
            what,
            lambda s: (
                lambda b: scripts.claim_sub_keys(
                    b,
                    s.keys,
                    worker_id=worker,
                    request_id=rid,
                    max_leases=n,
                    lease_ms=LEASE_MS,
                    batch_size=batch_size,
                    max_attempts=max_attempts,
                    exhausted_mode=mode,
                )
            ),
        )
        if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[1], list)):
            return []
        for claimed in reply[1]:
            self.leases[claimed.sub] = (claimed.token, claimed.exact > 0)
            self.handed[claimed.sub] = entry_offsets(claimed.entries)
        claims: list[scripts.Claimed] = reply[1]
        return claims

    def _lease(self, pick: int) -> tuple[bytes, int, bool]:
        subs = sorted(self.leases)
        sub = subs[pick % len(subs)]
        token, exact = self.leases[sub]
        return sub, token, exact

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        count=st.integers(0, 3),
        action=st.sampled_from(["k", "c", "y", "r"]),
        stale=stale_tokens,
        batch_size=st.integers(1, 3),
    )
    def complete(self, pick: int, count: int, action: str, stale: bool, batch_size: int) -> None:
        sub, token, exact = self._lease(pick)
        entries = self.real.backend.client.lrange(self.real.keys.queue(sub), 0, count - 1)
        done = []
        for entry in entries:
            try:
                done.append(codec.parse_entry(entry).offset)
            except codec.CorruptEntry:
                break
        completion = Completion(sub, token - 1 if stale else token, action, done, exact)
        replies = self.both(
            "complete",
            lambda s: (
                lambda b: scripts.complete_items(
                    b, s.keys, [completion], lease_ms=LEASE_MS, batch_size=batch_size
                )
            ),
        )
        self._completed([completion], replies, [stale])

    @precondition(lambda self: self.leases)
    @rule(
        picks=st.lists(
            st.tuples(st.integers(0, 10), st.integers(0, 4), st.sampled_from(["k", "c", "y", "r"])),
            min_size=1,
            max_size=4,
        ),
        stale=st.lists(stale_tokens, min_size=4, max_size=4),
        batch_size=st.integers(1, 3),
    )
    def complete_many(
        self, picks: list[tuple[int, int, str]], stale: list[bool], batch_size: int
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
            token, exact = self.leases[sub]
            done = self.handed.get(sub, [])[:count]
            completions.append(
                Completion(sub, token - 1 if is_stale else token, action, done, exact)
            )
            stales.append(is_stale)
        replies = self.both(
            f"complete {len(completions)} leases",
            lambda s: (
                lambda b: scripts.complete_items(
                    b, s.keys, completions, lease_ms=LEASE_MS, batch_size=batch_size
                )
            ),
        )
        if len(completions) > 1 and isinstance(replies, list):
            codes = ",".join(sorted({str(r.code) for r in replies}))
            written = sum(r.finished > 0 for r in replies)
            event(f"complete_many: {len(completions)} leases, codes {codes}")
            event(f"complete_many: {min(written, 2)}+ leases finished items")
            if len({c.action for c in completions}) > 1:
                event("complete_many: mixed actions")
        self._completed(completions, replies, stales)

    def _completed(self, completions: list[Completion], replies: Any, stales: list[bool]) -> None:
        """Track each lease after a completion call: released, or what it holds now."""
        if not isinstance(replies, list):
            return
        for completion, reply, is_stale in zip(completions, replies, stales, strict=True):
            if is_stale or reply.code == -1:
                continue
            sub = completion.sub
            if reply.code == 2:
                self.leases.pop(sub, None)
                self.handed.pop(sub, None)
            elif reply.next_entries:
                self.handed[sub] = entry_offsets(reply.next_entries)
            else:
                self.handed[sub] = self.handed.get(sub, [])[reply.finished :]

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        attempt=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=st.sampled_from(["d", "b"]),
        force=st.booleans(),
        stale=stale_tokens,
    )
    def fail(
        self, pick: int, attempt: int, max_attempts: int, mode: str, force: bool, stale: bool
    ) -> None:
        sub, token, _ = self._lease(pick)
        head = self.real.head(sub)
        if head is None:
            return
        try:
            offset: int | None = codec.parse_entry(head).offset
        except codec.CorruptEntry:
            offset = None
        self.both(
            "fail",
            lambda s: (
                lambda b: scripts.fail_item(
                    b,
                    s.keys,
                    sub=sub,
                    token=token - 1 if stale else token,
                    head_prefix=codec.head_prefix(head),
                    offset=offset,
                    attempt=attempt,
                    max_attempts=max_attempts,
                    exhausted_mode=mode,
                    force=force,
                    error_json='{"type":"Boom","message":"x/y"}',
                    lease_ms=LEASE_MS,
                )
            ),
        )

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10))
    def crash(self, pick: int) -> None:
        """The leaseholder died: its deadline passes, the reaper finds and expires it."""
        sub, _, _ = self._lease(pick)
        for side in self.sides:
            side.backend.client.zadd(side.keys.leases, {sub: 0}, xx=True)
        self.both("expired_leases", lambda s: lambda b: scripts.expired_leases(b, s.keys, 1, 100))
        self.both(
            "expire_lease", lambda s: lambda b: scripts.expire_lease(b, s.keys, sub, "reaper")
        )
        self.leases.pop(sub, None)
        self.handed.pop(sub, None)

    @rule(
        sub=st.sampled_from(["a", "b", "c"]),  # not None: that is a sub key per item
        items=st.integers(2, 4),
        first_batch=st.integers(2, 3),
        batch_size=st.integers(2, 3),
        finish=st.booleans(),
    )
    def crash_window(
        self, sub: str, items: int, first_batch: int, batch_size: int, finish: bool
    ) -> None:
        """Several items on one sub key, its lease expired (a crash), then a claim of a batch of
        two or more: in the crash window it must hand out one entry. Then, sometimes, the
        exact-mode completion of that one item, continuing (one more at a time)."""
        offsets_ = list(range(self.fresh, self.fresh + items))
        self.fresh += items
        self.requests += 1
        rid = f"enqueue:{self.requests}"
        encoded = encode_items([(sub, off) for off in offsets_])
        self.both(
            "window enqueue",
            lambda s: lambda b: scripts.enqueue_items(b, s.keys, encoded, 100, rid),
        )
        enc = encoded[0].sub
        if enc not in self.leases:
            self._claim("window claim", len(SUBS), "w1", first_batch, 3, "d")
        if enc not in self.leases:  # blocked, or held by a lease this test lost track of
            event("crash_window: sub key not leased")
            return
        self.crash(sorted(self.leases).index(enc))
        claims = [c for c in self._claim("window claim", len(SUBS), "w2", batch_size, 3, "d")
                  if c.sub == enc]  # fmt: skip
        if not claims:
            event("crash_window: not claimed after the crash")
            return
        claimed = claims[0]
        event(
            f"crash_window: exact {min(claimed.exact, 3)}, claim of {batch_size} "
            f"handed {len(claimed.entries)}"
        )
        if finish and claimed.exact > 0:
            completion = Completion(enc, claimed.token, "c", self.handed[enc][:1], True)
            replies = self.both(
                "window complete",
                lambda s: (
                    lambda b: scripts.complete_items(
                        b, s.keys, [completion], lease_ms=LEASE_MS, batch_size=batch_size
                    )
                ),
            )
            if isinstance(replies, list) and replies:
                event(
                    f"crash_window: exact continue code {replies[0].code}, "
                    f"handed {len(replies[0].next_entries)}"
                )
            self._completed([completion], replies, [False])

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10), stale=stale_tokens)
    def renew_and_isolate(self, pick: int, stale: bool) -> None:
        sub, token, _ = self._lease(pick)
        token = token - 1 if stale else token
        self.both(
            "extend", lambda s: lambda b: scripts.extend_leases(b, s.keys, [(sub, token)], LEASE_MS)
        )
        self.both("isolate", lambda s: lambda b: scripts.mark_isolated(b, s.keys, sub, token))

    def blocked(self) -> list[bytes]:
        return sorted(self.real.backend.client.hkeys(self.real.keys.blocked))

    @precondition(lambda self: self.blocked())
    @rule(pick=st.integers(0, 10), action=st.sampled_from(["retry", "dead_letter"]))
    def unblock(self, pick: int, action: str) -> None:
        blocked = self.blocked()
        enc = blocked[pick % len(blocked)]
        note = '{"type":"Unblocked"}'
        self.requests += 1  # one operator action: a request id of its own
        rid = f"unblock:{self.requests}"
        self.both(
            "unblock",
            lambda s: (
                lambda b: scripts.unblock_sub_key(b, s.keys, enc, action, note, request_id=rid)
            ),
        )

    @rule(sub=st.sampled_from(["a", "b"]))
    def corrupt_head(self, sub: str) -> None:
        """A queue entry found corrupt (written by hand, an old version, a bad restore)."""
        enc = codec.encode_sub_key(sub, 0)
        for side in self.sides:
            if side.head(enc) is not None:
                side.backend.client.lset(side.keys.queue(enc), 0, b"garbage")

    # --- the whole state ------------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.emb.state() == self.real.state()

    def teardown(self) -> None:
        for side in self.sides:
            keys = list(side.backend.client.scan_iter(match=side.pattern, count=1000))
            if keys:
                side.backend.client.delete(*keys)
            side.backend.close()


def _run(
    redis_server: RedisServer, examples: int, steps: int, native: bool, node: pytest.Item
) -> None:
    # The state machine runs inside a plain test: hand its events to the pytest item, so that
    # --hypothesis-show-statistics lists what the sequences covered.
    def note(stats: Any) -> None:
        stats["nodeid"] = node.nodeid
        node.hypothesis_statistics = describe_statistics(stats)  # type: ignore[attr-defined]

    with collector.with_value(note):
        _run_machine(redis_server, examples, steps, native)


def _run_machine(redis_server: RedisServer, examples: int, steps: int, native: bool) -> None:
    run_state_machine_as_test(
        lambda: Differential(redis_server.url, native),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            derandomize=True,  # seeded: the same sequences on every run
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


#: The embedded default (the hot scripts transcribed to Python) and every script in Lua.
MODES = pytest.mark.parametrize("native", [True, False], ids=["native", "lua"])


@MODES
@pytest.mark.timeout(900)  # passes in ~25 s; a failure's shrinking alone can take ~300 s
def test_embedded_matches_redis_step_by_step(
    redis_server: RedisServer, native: bool, request: pytest.FixtureRequest
) -> None:
    _run(redis_server, examples=80, steps=40, native=native, node=request.node)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 600 sequences: minutes on a busy machine, past the suite's 300 s
@MODES
def test_embedded_matches_redis_long_run(
    redis_server: RedisServer, native: bool, request: pytest.FixtureRequest
) -> None:
    _run(redis_server, examples=600, steps=60, native=native, node=request.node)
