"""Differential test: the same random sequence of partition operations, through scripts.py's
typed calls, into a private redis-server and into the embedded backend. Every reply and, after
every step, every key of the namespace must be the same on both.

Covers enqueue (dedupe, backpressure, late gap fills), claims, completions (keep, continue,
yield, release; one lease a call, and several leases of the partition in one call as the worker
sends them, each its own action, some fenced; a worker holding entries past those it reports;
a retry, its first call applied, carrying more offsets), failures with retry, dead letter and block,
stale tokens (fencing), crashes (an expired lease reaped by expire_lease), exact mode after a
crash (a claim of a batch in the crash window hands out one entry, then one at a time),
isolation marks, lease renewals, unblocking, corrupt queue entries, and the offer/commit of
watermarks. The rules it shares with tests/test_engine_differential.py (enqueue, offer and
commit, claim, complete, complete_many, fail) are tests/differential.py's; here are the ones
only the scripts have (crashes, isolation, unblock, corrupt entries).

What depends on the server's clock is masked before comparing (tests/differential.py's masked:
lease deadlines, the clock samples' times, the time in failure records).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from tests.differential import (
    LEASE_MS,
    PartitionDifferential,
    ScriptsPartition,
    encode_items,
    outcome,
    run_machine,
    stale_tokens,
)
from workshaper import codec
from workshaper.connection import connect, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.scripts import Completion
from workshaper_tools.testing import RedisServer


class Differential(PartitionDifferential):
    subs = ("a", "b", "c", None)
    tested: ScriptsPartition

    def __init__(self, redis_url: str, native: bool) -> None:
        namespace = "d" + uuid.uuid4().hex[:10]
        super().__init__(ScriptsPartition(connect(redis_url), namespace))
        backend = embedded_backend(EmbeddedServer(native_scripts=native))
        self.tested = ScriptsPartition(backend, namespace)
        self.sides = (self.real, self.tested)
        self.fresh = 1000  # offsets no other rule draws: items that are surely new

    def both(self, what: str, name: str, *args: Any, **kwargs: Any) -> Any:
        real, emb = (self._reply(side, name, *args, **kwargs) for side in self.sides)
        assert emb == real
        event(f"{what}: {outcome(real)}")  # --hypothesis-show-statistics: what was covered
        return real

    @staticmethod
    def _reply(side: ScriptsPartition, name: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(side, name)
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # an error must be the same error on both sides
            return ("error", type(exc).__name__)

    # --- what only the scripts have ---------------------------------------------------------

    @precondition(lambda self: self.leases)
    @rule(pick=st.integers(0, 10))
    def crash(self, pick: int) -> None:
        """The leaseholder died: its deadline passes, the reaper finds and expires it."""
        sub, _, _ = self._lease(pick)
        for side in self.sides:
            side.backend.client.zadd(side.pkeys.leases, {sub: 0}, xx=True)
        self.both("expired_leases", "expired_leases", 1, 100)
        self.both("expire_lease", "expire_lease", sub, "reaper")
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
        rid = self._request("enqueue", False)
        encoded = encode_items([(sub, off) for off in offsets_])
        self.both("window enqueue", "enqueue_items", encoded, 100, rid)
        enc = encoded[0].sub
        if enc not in self.leases:
            self._claim("window claim", len(self.subs), "w1", first_batch, 3, "d")
        if enc not in self.leases:  # blocked, or held by a lease this test lost track of
            event("crash_window: sub key not leased")
            return
        self.crash(sorted(self.leases).index(enc))
        claims = [c for c in self._claim("window claim", len(self.subs), "w2", batch_size, 3, "d")
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
                "complete_items",
                [completion],
                lease_ms=LEASE_MS,
                batch_size=batch_size,
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
        self.both("extend", "extend_leases", [(sub, token)], LEASE_MS)
        self.both("isolate", "mark_isolated", sub, token)

    def blocked(self) -> list[bytes]:
        return sorted(cast("list[bytes]", self.real.backend.client.hkeys(self.pkeys.blocked)))

    @precondition(lambda self: self.blocked())
    @rule(pick=st.integers(0, 10), action=st.sampled_from(["retry", "dead_letter"]))
    def unblock(self, pick: int, action: str) -> None:
        blocked = self.blocked()
        enc = blocked[pick % len(blocked)]
        note = '{"type":"Unblocked"}'
        rid = self._request("unblock", False)  # one operator action: a request id of its own
        self.both("unblock", "unblock_sub_key", enc, action, note, request_id=rid)

    @rule(sub=st.sampled_from(["a", "b"]))
    def corrupt_head(self, sub: str) -> None:
        """A queue entry found corrupt (written by hand, an old version, a bad restore)."""
        enc = codec.encode_sub_key(sub, 0)
        for side in self.sides:
            if side.head(enc) is not None:
                side.backend.client.lset(side.pkeys.queue(enc), 0, "garbage")

    def teardown(self) -> None:
        super().teardown()
        self.tested.close()


#: The embedded default (the hot scripts transcribed to Python) and every script in Lua.
MODES = pytest.mark.parametrize("native", [True, False], ids=["native", "lua"])


@MODES
@pytest.mark.timeout(900)  # passes in ~25 s; a failure's shrinking alone can take ~300 s
def test_embedded_matches_redis_step_by_step(
    redis_server: RedisServer, native: bool, request: pytest.FixtureRequest
) -> None:
    run_machine(
        lambda: Differential(redis_server.url, native), examples=80, steps=40, node=request.node
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 600 sequences: minutes on a busy machine, past the suite's 300 s
@MODES
def test_embedded_matches_redis_long_run(
    redis_server: RedisServer, native: bool, request: pytest.FixtureRequest
) -> None:
    run_machine(
        lambda: Differential(redis_server.url, native), examples=600, steps=60, node=request.node
    )
