"""Each Lua script on its own, on the embedded backend and on a real redis-server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest

from workshaper import codec, scripts
from workshaper.admin import Admin
from workshaper.batch import Batch, Reply, run_one
from workshaper.connection import Backend
from workshaper.errors import ScriptError
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.scripts import Completion, EncodedItem

T = TypeVar("T")
LEASE_MS = 60_000


class Partition:
    """Drives the scripts of one partition directly, as a worker or producer would."""

    def __init__(self, backend: Backend, namespace: str, partition: int = 0) -> None:
        self.backend = backend
        self.keys: PartitionKeys = NamespaceKeys(namespace).partition(partition)
        self.requests = 0

    def run(self, build: Callable[[Batch], Reply[T]]) -> T:
        return run_one(self.backend, build)

    def enqueue(self, *items: tuple[Any, int], max_in_queue: int = 1000) -> list[int]:
        encoded = [
            EncodedItem(
                codec.encode_sub_key(sub, off),
                off,
                codec.make_entry(off, codec.encode_message(f"m{off}", 100)),
            )
            for sub, off in items
        ]
        return self.run(lambda b: scripts.enqueue_items(b, self.keys, encoded, max_in_queue))

    def claim(
        self,
        n: int = 10,
        worker: str = "w1",
        lease_ms: int = LEASE_MS,
        request: str | None = None,
        max_attempts: int = 3,
        mode: str = "d",
        batch: int = 10,
    ) -> tuple[int, list[scripts.Claimed]]:
        self.requests += 1
        rid = request or f"{worker}:{self.requests}"
        return self.run(
            lambda b: scripts.claim_sub_keys(
                b,
                self.keys,
                worker_id=worker,
                request_id=rid,
                max_leases=n,
                lease_ms=lease_ms,
                batch_size=batch,
                max_attempts=max_attempts,
                exhausted_mode=mode,
            )
        )

    def complete(self, *completions: Completion, batch: int = 10) -> list[scripts.CompletionReply]:
        return self.run(
            lambda b: scripts.complete_items(
                b, self.keys, completions, lease_ms=LEASE_MS, batch_size=batch
            )
        )

    def fail(
        self,
        sub: bytes,
        token: int,
        attempt: int,
        max_attempts: int = 3,
        mode: str = "d",
        force: bool = False,
    ) -> tuple[int, int]:
        # The backend's client replies bytes; redis-py types every reply bytes | str.
        head = cast("bytes | None", self.backend.client.lindex(self.keys.queue(sub), 0))
        assert head is not None
        offset = codec.parse_entry(head).offset
        return self.run(
            lambda b: scripts.fail_item(
                b,
                self.keys,
                sub=sub,
                token=token,
                head_prefix=codec.head_prefix(head),
                offset=offset,
                attempt=attempt,
                max_attempts=max_attempts,
                exhausted_mode=mode,
                force=force,
                error_json='{"type":"Boom"}',
                lease_ms=LEASE_MS,
            )
        )

    def expire(self, sub: bytes) -> tuple[int, int]:
        return self.run(lambda b: scripts.expire_lease(b, self.keys, sub, "reaper"))

    def offer(self, with_offsets: bool = False) -> scripts.Offer:
        return self.run(lambda b: scripts.offer_watermark(b, self.keys, with_offsets))

    def commit(self, watermark: int) -> int:
        return self.run(lambda b: scripts.commit_watermark(b, self.keys, watermark))

    def queue(self, sub: Any) -> list[int]:
        queue = self.keys.queue(codec.encode_sub_key(sub, 0))
        raw = cast("list[bytes]", self.backend.client.lrange(queue, 0, -1))  # bytes replies
        return [codec.parse_entry(e).offset for e in raw]

    def ready(self) -> list[bytes]:
        return list(cast("list[bytes]", self.backend.client.lrange(self.keys.ready, 0, -1)))

    def make_expired(self, sub: bytes) -> None:
        self.backend.client.zadd(self.keys.leases, {sub: 0}, xx=True)


@pytest.fixture
def part(backend: Backend, namespace: str) -> Partition:
    return Partition(backend, namespace)


ACCEPTED, DUPLICATE, ALREADY_ACKED, FULL, BEING_ACKED = 0, 1, 2, 3, 4


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_appends_per_sub_key_and_marks_new_sub_keys_ready(part: Partition) -> None:
    assert part.enqueue(("a", 1), ("b", 2), ("a", 3)) == [ACCEPTED] * 3
    assert part.queue("a") == [1, 3] and part.queue("b") == [2]
    assert part.ready() == [b"sa", b"sb"]


def test_enqueue_dedupes_pending_within_batch_and_finished(part: Partition) -> None:
    assert part.enqueue(("a", 1), ("a", 1)) == [ACCEPTED, DUPLICATE]
    assert part.enqueue(("a", 1), ("b", 1)) == [DUPLICATE, DUPLICATE]  # offset, not sub key
    _, [lease] = part.claim()
    part.complete(Completion(b"sa", lease.token, "c", [1]))
    assert part.enqueue(("a", 1)) == [DUPLICATE]  # finished above the watermark
    assert part.queue("a") == []


def test_enqueue_at_or_below_acked_watermark_is_ignored(part: Partition) -> None:
    part.enqueue(("a", 5))
    _, [lease] = part.claim()
    part.complete(Completion(b"sa", lease.token, "c", [5]))
    assert part.offer().watermark == 5
    # While 5 is being acked, a late offset below it is already covered by that ack.
    assert part.enqueue(("z", 3), ("a", 5)) == [BEING_ACKED, BEING_ACKED]
    assert part.queue("z") == []
    part.commit(5)
    assert part.enqueue(("a", 5), ("a", 4), ("a", 6)) == [ALREADY_ACKED, ALREADY_ACKED, ACCEPTED]


def test_enqueue_backpressure_stops_at_the_first_item_that_does_not_fit(part: Partition) -> None:
    statuses = part.enqueue(("a", 1), ("b", 2), ("a", 3), ("c", 4), max_in_queue=2)
    assert statuses == [ACCEPTED, ACCEPTED, FULL, FULL]
    assert part.queue("a") == [1] and part.queue("c") == []
    # Finished-but-unacked items still count: the partition frees room only when acked.
    _, leases = part.claim()
    for lease in leases:
        part.complete(
            Completion(lease.sub, lease.token, "c", part.queue(codec.decode_sub_key(lease.sub)))
        )
    assert part.enqueue(("a", 3), max_in_queue=2) == [FULL]
    part.commit(part.offer().watermark)
    assert part.enqueue(("a", 3), ("c", 4), ("d", 5), max_in_queue=2) == [ACCEPTED, ACCEPTED, FULL]


def test_duplicates_are_reported_even_when_the_partition_is_full(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 2), max_in_queue=2)
    # A restarted producer replays 1 and 2: they must not block on backpressure.
    assert part.enqueue(("a", 1), ("b", 2), ("c", 3), max_in_queue=2) == [
        DUPLICATE,
        DUPLICATE,
        FULL,
    ]


def test_late_gap_fill_is_accepted_in_order_and_holds_the_watermark(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 5))
    assert part.enqueue(("c", 3)) == [ACCEPTED]  # 3 arrives after 5: a gap filled late
    assert [int(o) for o in part.backend.client.lrange(part.keys.accepted, 0, -1)] == [1, 3, 5]
    _, leases = part.claim()
    token = {c.sub: c.token for c in leases}
    part.complete(
        Completion(b"sa", token[b"sa"], "c", [1]), Completion(b"sb", token[b"sb"], "c", [5])
    )
    assert part.offer().watermark == 1  # 3 is still running: the ack may not pass it
    part.complete(Completion(b"sc", token[b"sc"], "c", [3]))
    assert part.offer().watermark == 5
    assert part.backend.client.exists(part.keys.late) == 0


def test_enqueue_to_leased_sub_key_does_not_make_it_ready(part: Partition) -> None:
    part.enqueue(("a", 1))
    part.claim()
    part.enqueue(("a", 2))
    assert part.ready() == []


def test_large_batches_are_written_in_chunks(part: Partition) -> None:
    items = [("a", i) for i in range(5000)]
    assert part.enqueue(*items, max_in_queue=10_000) == [ACCEPTED] * 5000
    assert part.queue("a") == list(range(5000))


def test_thousands_of_new_sub_keys_in_one_call(part: Partition) -> None:
    """New heads are registered in chunks (ZADD heads, HMGET owners, RPUSH ready): 12,000 new
    sub keys in one call, three of them leased with an empty queue (not made runnable)."""
    part.enqueue(*[(f"k{i}", i) for i in range(3000)], max_in_queue=20_000)
    _, leased = part.claim(n=3)
    part.complete(*[Completion(c.sub, c.token, "k", [i]) for i, c in enumerate(leased)])
    assert [part.queue(f"k{i}") for i in range(3)] == [[], [], []]  # empty, still leased
    items = [(f"k{i}", 3000 + i) for i in range(12_000)]
    assert part.enqueue(*items, max_in_queue=20_000) == [ACCEPTED] * 12_000
    assert part.ready() == [f"sk{i}".encode() for i in range(3, 12_000)]
    assert part.backend.client.zcard(part.keys.heads) == 12_000
    assert part.offer().watermark == 2  # 0-2 finished, 3 is the lowest unfinished


# --- claim -------------------------------------------------------------------------------------


def test_claim_leases_ready_sub_keys_with_growing_tokens(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 2), ("c", 3))
    left, leases = part.claim(n=2)
    assert left == 1  # runnable sub keys left for other workers
    assert [c.sub for c in leases] == [b"sa", b"sb"]
    left, [last] = part.claim(n=2)
    assert left == 0
    assert leases[0].token < leases[1].token < last.token


def test_claim_is_idempotent_per_request_id(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 2))
    first = part.claim(n=1, request="w1:r1")
    again = part.claim(n=1, request="w1:r1")  # a retried call (reply lost)
    assert first == again
    assert part.claim(n=5, request="w1:r2")[1][0].sub == b"sb"


def test_a_retried_claim_answers_binary_sub_keys_attempts_and_windows_as_the_first(
    part: Partition,
) -> None:
    # The claim record keeps what a retry (reply lost) must answer again: sub keys of any bytes
    # (the record's own separators and digits included), tokens, attempts and crash windows.
    subs: list[object] = [b"1:x\n2 3", b"", "k\u00e9y", 7, b"\x00\xff:"]
    part.enqueue(*[(sub, i + 1) for i, sub in enumerate(subs)], ("plain", 6), ("plain", 7))
    _, [held] = part.claim(n=1, request="w1:r1")  # b"1:x\n2 3"
    part.make_expired(held.sub)
    part.expire(held.sub)  # an unattributed crash: attempts "1|1", a window of one item
    first = part.claim(n=10, batch=2, request="w2:r1", worker="w2")
    assert part.claim(n=10, batch=2, request="w2:r1", worker="w2") == first
    left, leases = first
    assert left == 0 and len(leases) == 6
    by_sub = {c.sub: c for c in leases}
    crashed = by_sub[codec.encode_sub_key(b"1:x\n2 3", 1)]
    assert (crashed.attempts_record, crashed.exact) == (b"1|1", 1)
    assert all(c.attempts_record == b"" and c.exact == 0 for c in leases if c is not crashed)
    assert [c.token for c in leases] == list(range(leases[0].token, leases[0].token + 6))
    assert len(by_sub[codec.encode_sub_key("plain", 6)].entries) == 2


def test_claim_hands_back_the_first_batch_of_each_lease(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 2), ("a", 3), ("a", 4))
    first = part.claim(n=2, batch=2, request="w1:r1")
    _, (a, b) = first
    assert [codec.parse_entry(e).offset for e in a.entries] == [1, 3]  # up to `batch`
    assert [codec.parse_entry(e).offset for e in b.entries] == [2]
    # A retried call (reply lost) hands back the same leases and batches: nothing was popped.
    assert part.claim(n=2, batch=2, request="w1:r1") == first
    assert part.queue("a") == [1, 3, 4]


def test_claim_hands_back_one_entry_in_a_crash_window(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    _, [lease] = part.claim(batch=10)
    assert len(lease.entries) == 3
    part.make_expired(lease.sub)
    part.expire(lease.sub)  # an unattributed crash: the next holder runs one item at a time
    _, [again] = part.claim(batch=10, worker="w2")
    assert again.exact > 0
    assert [codec.parse_entry(e).offset for e in again.entries] == [1]


def test_claim_checks_the_queue_key_prefix(part: Partition) -> None:
    part.enqueue(("a", 1))
    with pytest.raises(ScriptError, match="queue key prefix"):
        run_one(
            part.backend,
            lambda b: b.script(
                "claim_sub_keys",
                [*part.keys.fixed, part.keys.claim_record("w1")],
                ["w1", "r1", 1, LEASE_MS, 10, 3, "d", ""],
            ),
        )
    assert part.ready() == [b"sa"]  # nothing was leased


def test_concurrent_claims_never_double_lease(part: Partition) -> None:
    part.enqueue(*[(f"k{i}", i) for i in range(50)])
    owners: dict[bytes, str] = {}
    for round_ in range(20):
        for worker in ("w1", "w2", "w3"):
            for c in part.claim(n=1, worker=worker, request=f"{worker}:{round_}")[1]:
                assert c.sub not in owners
                owners[c.sub] = worker
    assert len(owners) == 50


# --- complete ----------------------------------------------------------------------------------


def test_complete_continue_hands_out_next_batch(part: Partition) -> None:
    part.enqueue(*[("a", i) for i in range(5)])
    _, [lease] = part.claim(batch=2)
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [0, 1]), batch=2)
    assert reply.code == 1 and reply.finished == 2
    assert [codec.parse_entry(e).offset for e in reply.next_entries] == [2, 3]


def test_complete_releases_when_the_queue_is_empty(part: Partition) -> None:
    part.enqueue(("a", 1))
    _, [lease] = part.claim()
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [1]))
    assert (reply.code, reply.finished) == (2, 1)
    part.enqueue(("a", 2))
    assert part.ready() == [b"sa"]  # the next item makes the sub key runnable again


def test_complete_is_idempotent(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    _, [lease] = part.claim()
    done = Completion(b"sa", lease.token, "k", [1, 2])
    assert part.complete(done)[0].finished == 2
    assert part.complete(done)[0].finished == 0  # a retried call changes nothing
    assert part.queue("a") == [3]


@pytest.mark.parametrize("action", ["k", "c"])
def test_a_retried_completion_with_more_offsets_records_the_ones_left(
    part: Partition, action: str
) -> None:
    # The coordinator re-sends its ops after a connection error, rebuilt from its state: by then
    # item 3 finished too. The first call was applied (1 and 2 trimmed) but its reply was lost;
    # the retry must still take 3 off the head, or it is run again (and a kept lease stays
    # misaligned with what its worker holds).
    part.enqueue(("b", 10), ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("a", 6))
    _, claimed = part.claim(batch=10)
    token = {c.sub: c.token for c in claimed}
    assert part.complete(Completion(b"sa", token[b"sa"], "k", [1, 2]))[0].finished == 2
    [reply] = part.complete(Completion(b"sa", token[b"sa"], action, [1, 2, 3]), batch=2)
    assert (reply.code, reply.finished) == (1, 1)
    if action == "c":  # the next batch starts after the entries this call took off
        assert [codec.parse_entry(e).offset for e in reply.next_entries] == [4, 5]
    assert part.queue("a") == [4, 5, 6]
    # Every offset of "a" arrived late (after 10): 3 left `late` too, so the watermark is 3.
    assert part.offer().watermark == 3
    # Sent once more: the head (4) is none of the offsets, nothing is recorded.
    [reply] = part.complete(Completion(b"sa", token[b"sa"], "k", [1, 2, 3]))
    assert (reply.code, reply.finished) == (1, 0)
    # A skip stops at the first entry that is not the next offset, as from the first one.
    [reply] = part.complete(Completion(b"sa", token[b"sa"], "k", [3, 4, 6]))
    assert (reply.code, reply.finished) == (1, 1)
    assert part.queue("a") == [5, 6]


def offsets_of(entries: list[bytes]) -> list[int]:
    return [codec.parse_entry(e).offset for e in entries]


def test_a_continue_while_holding_entries_hands_out_what_follows_them(part: Partition) -> None:
    # A worker holding a window of entries finishes them out of order: it reports the finished
    # prefix (0, 1) and the count it still holds (2, 3, 4), and reads on past those, up to a
    # batch in all (10 - 3).
    part.enqueue(*[("a", i) for i in range(20)])
    _, [lease] = part.claim(batch=5)
    assert offsets_of(lease.entries) == [0, 1, 2, 3, 4]
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [0, 1], held=3), batch=10)
    assert reply == scripts.CompletionReply(1, 2, b"", reply.next_entries)
    assert offsets_of(reply.next_entries) == [5, 6, 7, 8, 9, 10, 11]
    assert part.queue("a") == list(range(2, 20))  # only the finished ones were taken off
    assert part.offer().watermark == 1
    # Holding a whole batch: nothing more, the lease kept.
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [2], held=10), batch=10)
    assert reply == scripts.CompletionReply(1, 1, b"", [])
    assert part.backend.client.hexists(part.keys.owners, b"sa")


def test_a_continue_while_holding_the_last_entries_keeps_the_lease(part: Partition) -> None:
    part.enqueue(*[("a", i) for i in range(5)])
    _, [lease] = part.claim(batch=5)
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [0, 1], held=3), batch=10)
    assert reply == scripts.CompletionReply(1, 2, b"", [])  # nothing new, but not released
    client = part.backend.client
    assert client.hexists(part.keys.owners, b"sa") and client.zscore(part.keys.leases, b"sa")
    assert part.queue("a") == [2, 3, 4] and part.ready() == []
    # Once it holds nothing, a continue with nothing left releases it, as before.
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [2, 3, 4]), batch=10)
    assert (reply.code, reply.finished, reply.requeued) == (2, 3, False)
    assert not client.hexists(part.keys.owners, b"sa")


def test_a_keep_while_holding_entries_is_a_keep(part: Partition) -> None:
    part.enqueue(*[("a", i) for i in range(6)])
    _, [lease] = part.claim(batch=5)
    [reply] = part.complete(Completion(b"sa", lease.token, "k", [0, 1], held=3), batch=10)
    assert reply == scripts.CompletionReply(1, 2, b"", [])
    assert part.queue("a") == [2, 3, 4, 5]


def test_a_retried_continue_while_holding_entries_reads_past_them(part: Partition) -> None:
    # The first call (0 and 1 finished, 2, 3 and 4 held) was applied, its reply lost; by the
    # retry 2 finished too: it is taken off, and the new entries follow the two still held.
    part.enqueue(*[("a", i) for i in range(20)])
    _, [lease] = part.claim(batch=5)
    part.complete(Completion(b"sa", lease.token, "c", [0, 1], held=3), batch=10)
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [0, 1, 2], held=2), batch=10)
    assert (reply.code, reply.finished) == (1, 1)
    assert offsets_of(reply.next_entries) == list(range(5, 13))
    assert part.queue("a") == list(range(3, 20))


def test_a_continue_while_holding_entries_in_a_crash_window_hands_out_none(
    part: Partition,
) -> None:
    # Single-step mode takes one entry at a time: a worker holding one gets no other.
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    part.claim(batch=10)
    part.make_expired(b"sa")
    part.expire(b"sa")
    _, [lease] = part.claim(batch=10)
    assert lease.exact == 3
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [1], True, held=1), batch=10)
    assert reply == scripts.CompletionReply(1, 1, b"", [])
    assert part.backend.client.hget(part.keys.exact, b"sa") == b"2"


def test_one_completion_call_for_thousands_of_leases(part: Partition) -> None:
    """The writes a call collects over its leases go out chunked: 2,500 leases released, 10
    continued and 10 kept in one call (past the 1,000 values of a chunk and Lua's unpack limit)."""
    count = 2520
    part.enqueue(*[(f"k{i}", i) for i in range(count)], max_in_queue=10_000)
    part.enqueue(*[(f"k{i}", count + i) for i in range(2500, count)], max_in_queue=10_000)
    _, leases = part.claim(n=count, batch=10)
    assert len(leases) == count
    actions = ["c"] * 2510 + ["k"] * 10
    replies = part.complete(
        *[
            Completion(lease.sub, lease.token, action, [codec.parse_entry(lease.entries[0]).offset])
            for lease, action in zip(leases, actions, strict=True)
        ]
    )
    assert [r.code for r in replies] == [2] * 2500 + [1] * 20
    assert [r.finished for r in replies] == [1] * count
    client = part.backend.client
    assert client.hlen(part.keys.owners) == 20 and client.zcard(part.keys.leases) == 20
    scored = cast(
        "list[tuple[bytes, float]]", client.zrange(part.keys.heads, 0, -1, withscores=True)
    )
    heads = {sub: int(score) for sub, score in scored}
    assert heads == {lease.sub: count + i + 2500 for i, lease in enumerate(leases[2500:])}
    assert part.offer().watermark == count - 1  # every head left went into `heads`


def test_complete_refuses_a_sub_key_twice_in_one_call(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    _, [lease] = part.claim()
    with pytest.raises(ScriptError, match="repeated sub key"):
        part.complete(
            Completion(b"sa", lease.token, "k", [1]), Completion(b"sa", lease.token, "r", [2])
        )
    assert part.queue("a") == [1, 2]  # nothing was written


def test_release_requeues_sub_key_with_items_left(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    _, [lease] = part.claim()
    [reply] = part.complete(Completion(b"sa", lease.token, "r", [1]))
    assert reply.code == 2
    assert part.ready() == [b"sa"]


def test_yield_gives_way_only_when_others_wait(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    _, [lease] = part.claim()
    assert part.complete(Completion(b"sa", lease.token, "y", [1]))[0].code == 1  # nobody waits
    part.enqueue(("b", 9))
    assert part.complete(Completion(b"sa", lease.token, "y", [2]))[0].code == 2
    assert part.ready() == [b"sb", b"sa"]


# --- fencing -----------------------------------------------------------------------------------


def test_stale_token_cannot_complete_fail_extend_or_release(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    _, [old] = part.claim(worker="w1")
    part.make_expired(b"sa")
    assert part.expire(b"sa")[0] == 1
    _, [new] = part.claim(worker="w2")
    assert new.token > old.token
    for action in "kcyr":
        assert part.complete(Completion(b"sa", old.token, action, [1]))[0].code == -1
    assert part.fail(b"sa", old.token, attempt=1) == (-1, 0)
    lost = part.run(lambda b: scripts.extend_leases(b, part.keys, [(b"sa", old.token)], LEASE_MS))
    assert lost == [0]
    assert part.queue("a") == [1, 2]  # nothing the old holder sent was applied
    assert part.complete(Completion(b"sa", new.token, "k", [1]))[0].finished == 1


# --- failures, dead letters, blocking ----------------------------------------------------------


def test_fail_retries_until_max_attempts_then_dead_letters(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    _, [lease] = part.claim()
    assert part.fail(b"sa", lease.token, attempt=1) == (1, 1)
    assert part.fail(b"sa", lease.token, attempt=1) == (1, 1)  # retried call: no double count
    assert part.fail(b"sa", lease.token, attempt=2) == (1, 2)
    assert part.fail(b"sa", lease.token, attempt=3) == (2, 3)
    assert part.queue("a") == [2]
    record = cast("bytes | None", part.backend.client.hget(part.keys.dead, "1"))  # bytes replies
    assert record is not None
    error, attempts, _, entry = record.split(b"\n", 3)
    # The sub key is kept (hex) so the dead letter can be replayed in its sub key's order.
    assert (error, attempts, entry) == (
        b'{"sub_hex":"' + b"sa".hex().encode() + b'","type":"Boom"}',
        b"3",
        codec.make_entry(1, b"sm1"),
    )
    # Dead-lettered counts as finished: the watermark moves past it.
    part.complete(Completion(b"sa", lease.token, "c", [2]))
    assert part.offer().watermark == 2


def test_fail_with_block_holds_the_sub_key_and_the_watermark(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2), ("b", 3))
    _, leases = part.claim()
    token = {c.sub: c.token for c in leases}
    assert part.fail(b"sa", token[b"sa"], attempt=3, mode="b") == (3, 3)
    part.complete(Completion(b"sb", token[b"sb"], "c", [3]))
    assert part.offer().watermark == -1  # offset 1 is not finished
    assert part.ready() == [] and part.claim()[1] == []
    # Operator: retry it.
    assert (
        part.run(
            lambda b: scripts.unblock_sub_key(b, part.keys, b"sa", "retry", "{}", request_id="r1")
        )
        is True
    )
    assert part.ready() == [b"sa"]
    _, [again] = part.claim()
    assert again.attempts_record == b""  # fresh attempts


def test_unblock_dead_letter_moves_on(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    _, [lease] = part.claim()
    part.fail(b"sa", lease.token, attempt=3, mode="b")
    assert part.run(
        lambda b: scripts.unblock_sub_key(
            b, part.keys, b"sa", "dead_letter", '{"type":"Operator"}', request_id="r2"
        )
    )
    assert part.queue("a") == [2]
    assert part.backend.client.hexists(part.keys.dead, "1")
    assert (
        part.run(
            lambda b: scripts.unblock_sub_key(b, part.keys, b"sa", "retry", "{}", request_id="r3")
        )
        is False
    )


def test_corrupt_item_is_dead_lettered_at_once(part: Partition) -> None:
    part.enqueue(("a", 1))
    _, [lease] = part.claim()
    assert part.fail(b"sa", lease.token, attempt=1, force=True) == (2, 1)
    assert part.queue("a") == []


# --- expiry and crash attribution -----------------------------------------------------------


def test_expire_ignores_live_leases(part: Partition) -> None:
    part.enqueue(("a", 1))
    part.claim()
    assert part.expire(b"sa") == (0, 0)


def test_unattributed_crash_charges_head_but_never_its_last_attempt(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2))
    for expected in (1, 2, 2):  # max_attempts=3: a batch-mode crash stops at 2
        _, [lease] = part.claim(max_attempts=3, batch=10)
        part.make_expired(b"sa")
        assert part.expire(b"sa") == (1, expected)
        part.backend.client.hdel(part.keys.exact, b"sa")  # leave exact mode for this test
    assert part.queue("a") == [1, 2]


def test_exact_mode_after_crash_runs_one_item_at_a_time_and_can_dead_letter(
    part: Partition,
) -> None:
    part.enqueue(("a", 1), ("a", 2), ("a", 3), ("a", 4))
    _, [lease] = part.claim(max_attempts=2, batch=10)
    part.make_expired(b"sa")
    assert part.expire(b"sa") == (1, 1)  # unattributed: charged, capped below 2
    _, [lease] = part.claim(max_attempts=2, batch=10)
    assert lease.exact == 4 and lease.attempts_record == b"1|1"  # the 4 items queued
    # In the window but not isolated (its worker ran other items too): still capped.
    part.make_expired(b"sa")
    assert part.expire(b"sa") == (1, 1)
    _, [lease] = part.claim(max_attempts=2, batch=10)
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    part.make_expired(b"sa")
    assert part.expire(b"sa") == (2, 2)  # isolated: the crash can only be the head item's
    assert part.queue("a") == [2, 3, 4]
    [dead] = Admin(part.backend, part.keys.namespace).dead_letters(0)
    assert (dead.offset, dead.attempts, dead.error_type) == (1, 2, "LeaseExpired")
    assert "worker w1 crashed or stalled" in dead.error_message and dead.worker == "reaper"
    _, [lease] = part.claim(max_attempts=2, batch=10)
    assert lease.exact == 3  # the dead-lettered item used one step of the window
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [2], exact=True), batch=10)
    assert len(reply.next_entries) == 1  # still one at a time inside the window
    assert part.backend.client.hget(part.keys.exact, b"sa") == b"2"
    # The item ended: unflagged until its worker flags the next one, just before running it.
    owner = cast("bytes | None", part.backend.client.hget(part.keys.owners, b"sa"))
    assert owner is not None and b"|-|" in owner
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [3], exact=True), batch=10)
    assert len(reply.next_entries) == 1 and part.backend.client.hget(part.keys.exact, b"sa") == b"1"
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [4], exact=True), batch=10)
    assert reply.code == 2 and not part.backend.client.hexists(part.keys.exact, b"sa")


def test_mark_isolated_is_fenced(part: Partition) -> None:
    part.enqueue(("a", 1))
    _, [lease] = part.claim()
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token + 1)) == -1
    owner = cast("bytes | None", part.backend.client.hget(part.keys.owners, b"sa"))
    assert owner is not None and b"|-|" in owner


def test_expire_requeues_and_blocks_when_asked(part: Partition) -> None:
    part.enqueue(("a", 1))
    _, [lease] = part.claim(max_attempts=1, mode="b")
    part.make_expired(b"sa")
    assert part.expire(b"sa") == (1, 0)
    _, [lease] = part.claim(max_attempts=1, mode="b")
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    part.make_expired(b"sa")
    assert part.expire(b"sa") == (3, 1)
    assert part.backend.client.hexists(part.keys.blocked, b"sa")
    assert part.ready() == []


def test_expired_leases_lists_only_deadlines_before_the_bound(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 2), ("c", 3))
    part.claim(n=3)
    part.make_expired(b"sa")
    part.backend.client.zadd(part.keys.leases, {b"sb": 5000}, xx=True)
    read = part.run(lambda b: scripts.expired_leases(b, part.keys, 5000, 10))
    assert read == [b"sa"]  # sb's deadline is not before the bound, sc's far after it
    assert part.run(lambda b: scripts.expired_leases(b, part.keys, 5001, 1)) == [b"sa"]


def test_a_yield_gives_way_to_a_sub_key_released_earlier_in_the_same_call(
    part: Partition,
) -> None:
    part.enqueue(("a", 1), ("a", 2), ("b", 3), ("b", 4))
    _, leases = part.claim(n=2, batch=1)
    token = {c.sub: c.token for c in leases}
    released, yielded = part.complete(
        Completion(b"sa", token[b"sa"], "r", [1]), Completion(b"sb", token[b"sb"], "y", [3])
    )
    assert (released.code, released.requeued) == (2, True)
    assert (yielded.code, yielded.requeued) == (2, True)  # `sa` was waiting by then
    assert part.ready() == [b"sa", b"sb"]


# --- watermark -------------------------------------------------------------------------------


def test_watermark_is_contiguous_and_skips_gaps(part: Partition) -> None:
    part.enqueue(("a", 1), ("b", 4), ("c", 7))  # 2, 3, 5, 6 never existed (compaction gaps)
    _, leases = part.claim()
    token = {c.sub: c.token for c in leases}
    part.complete(
        Completion(b"sb", token[b"sb"], "c", [4]), Completion(b"sc", token[b"sc"], "c", [7])
    )
    offer = part.offer(with_offsets=True)
    assert (offer.acked, offer.watermark, offer.advances) == (-1, -1, False)  # 1 holds it back
    part.complete(Completion(b"sa", token[b"sa"], "c", [1]))
    offer = part.offer(with_offsets=True)
    assert (offer.watermark, offer.offsets) == (7, [1, 4, 7])
    assert part.commit(7) == 0
    assert part.commit(7) == 0 and part.commit(3) == 0  # idempotent, never moves back
    assert part.backend.client.hget(part.keys.meta, "acked") == b"7"
