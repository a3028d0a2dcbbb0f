"""Regression tests of issue 8 for the worker's Lua scripts: nothing may fail after a script's
first write, whatever the size of a call or the state it finds."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest

from workshaper import codec, scripts
from workshaper.admin import Admin
from workshaper.batch import Batch, Reply
from workshaper.connection import Backend
from workshaper.embedded.native.enqueue import CHUNK
from workshaper.errors import ScriptError
from workshaper.scripts import Completion

from .test_scripts import Partition


@pytest.fixture
def part(backend: Backend, namespace: str) -> Partition:
    return Partition(backend, namespace)


def enqueue_in_calls(part: Partition, items: list[tuple[object, int]]) -> None:
    """As the producer does: at most 1,000 items per script call."""
    for start in range(0, len(items), 1000):
        part.enqueue(*items[start : start + 1000], max_in_queue=1_000_000)


def test_a_claim_of_thousands_of_sub_keys_leases_every_one_it_pops(part: Partition) -> None:
    # Item 1: 2N values in one ZADD passed Lua's stack limit after the LPOP had taken them.
    count = 5000
    enqueue_in_calls(part, [(f"k{i}", i) for i in range(count)])
    _, claimed = part.claim(n=count)
    assert len(claimed) == count
    assert part.ready() == []
    client = part.backend.client
    assert client.zcard(part.keys.leases) == count and client.hlen(part.keys.owners) == count


def test_a_completion_of_thousands_of_late_offsets_frees_the_watermark(part: Partition) -> None:
    # Item 2: every finished offset of a lease in one ZREM of `late` failed after the LTRIM.
    count = 9000
    part.enqueue(("b", 100_000))  # first: every offset below it arrives late
    enqueue_in_calls(part, [("a", i) for i in range(count)])
    assert part.backend.client.zcard(part.keys.late) == count
    _, claimed = part.claim(n=2, batch=count)
    [lease] = [c for c in claimed if c.sub == b"sa"]
    [reply] = part.complete(Completion(b"sa", lease.token, "c", range(count)), batch=count)
    assert (reply.code, reply.finished) == (2, count)
    assert part.backend.client.zcard(part.keys.late) == 0
    assert part.offer().watermark == count - 1


def dead_letter_corrupt(
    batch: Batch, part: Partition, token: int, head_prefix: bytes
) -> Reply[tuple[int, int]]:
    """Queue the worker's call for a corrupt head of sub key "a": dead-letter it at once."""
    return scripts.fail_item(
        batch,
        part.keys,
        sub=b"sa",
        token=token,
        head_prefix=head_prefix,
        offset=None,
        attempt=1,
        max_attempts=3,
        exhausted_mode="d",
        force=True,
        error_json='{"type":"CorruptItem"}',
        lease_ms=60_000,
    )


def test_a_corrupt_entry_just_after_a_batch_boundary_is_handed_out(part: Partition) -> None:
    # Item 4: the next head's offset (nil for a corrupt entry) went to ZADD after the LTRIM.
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    # cast: redis-py types lset's value str; bytes work
    part.backend.client.lset(part.keys.queue(b"sa"), 1, cast(str, b"garbage"))
    _, [lease] = part.claim(batch=1)
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [1]), batch=1)
    assert (reply.code, reply.finished, reply.next_entries) == (1, 1, [b"garbage"])
    # It holds the watermark (the old head's score stays) until it is dead-lettered.
    assert part.offer().watermark == -1
    head = part.backend.client.lindex(part.keys.queue(b"sa"), 0)
    assert head == b"garbage"
    code, _ = part.run(lambda b: dead_letter_corrupt(b, part, lease.token, codec.head_prefix(head)))
    assert code == 2
    assert part.queue("a") == [3]
    assert part.offer().watermark == 2


def test_dead_letters_of_corrupt_entries_are_all_kept(part: Partition) -> None:
    # Item 10: the field "corrupt:<ms>" kept one record per millisecond.
    count = 50
    part.enqueue(*[("a", i) for i in range(count)])
    queue = part.keys.queue(b"sa")
    for i in range(count):
        part.backend.client.lset(queue, i, cast(str, b"garbage %d" % i))  # cast: lset is typed str
    _, [lease] = part.claim(batch=count)
    batch = Batch(part.backend)
    replies = [
        dead_letter_corrupt(batch, part, lease.token, b"garbage %d" % i) for i in range(count)
    ]
    batch.execute()  # one round trip: most of them in the same millisecond
    assert [r.get()[0] for r in replies] == [2] * count
    dead = Admin(part.backend, part.keys.namespace).dead_letters(0)
    assert sorted(d.raw_entry for d in dead) == sorted(b"garbage %d" % i for i in range(count))


@pytest.mark.parametrize(
    ("action", "held", "count", "offset", "error"),
    [
        ("c", 0, 1, "x", "offset of lease 2: x"),
        ("c", -1, 1, 2, "held of lease 2: -1"),
        ("c", 1.5, 1, 2, "held of lease 2: 1.5"),
        ("c", 11, 1, 2, "held of lease 2: 11"),  # past the batch (10)
        ("k", "nan", 1, 2, "held of lease 2: nan"),
        ("y", 1, 1, 2, "held of lease 2: 1"),  # a lease whose worker holds entries is kept
        ("r", 1, 1, 2, "held of lease 2: 1"),
        ("c", 1, 2, 2, "offset count of lease 2: 2"),  # one offset given
    ],
)
def test_complete_items_refuses_malformed_arguments_before_writing(
    part: Partition, action: str, held: object, count: int, offset: object, error: str
) -> None:
    # "Check arguments before writing": a malformed call changes nothing, even when a lease
    # before the malformed one was well formed.
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    _, [lease] = part.claim()
    keys = [*part.keys.fixed, part.keys.queue(b"sa")]
    first = [1, b"sa", lease.token, "c", 0, 0, 1, 1]
    second = [1, b"sb", lease.token, action, 0, held, count, offset]
    args = [60_000, 10, 2, *first, *second]
    with pytest.raises(ScriptError, match=f"complete_items: bad argument {error}"):
        part.run(lambda b: b.script("complete_items", keys, args))
    assert part.queue("a") == [1, 2, 3]


def crash_and_reclaim(part: Partition, sub: bytes, **claim: object) -> scripts.Claimed:
    """The lease of ``sub`` expires as if its worker died; the next claim takes it back."""
    part.make_expired(sub)
    assert part.expire(sub)[0] == 1
    _, [lease] = part.claim(**claim)  # type: ignore[arg-type]
    return lease


def test_a_crash_window_covers_only_the_items_queued_at_the_crash(part: Partition) -> None:
    # Item 5: `exact` only counted down, so a window of batch_size steps outlived the items
    # it was for: items enqueued much later still ran isolated, one at a time.
    part.enqueue(("a", 1), ("a", 2))
    part.claim(batch=10)
    lease = crash_and_reclaim(part, b"sa", batch=10)
    assert lease.exact == 2  # the two items queued, not batch_size
    for offset in (1, 2):
        [reply] = part.complete(Completion(b"sa", lease.token, "c", [offset], exact=True))
    assert reply.code == 2  # released: the queue is empty
    assert not part.backend.client.hexists(part.keys.exact, b"sa")
    part.enqueue(("a", 3), ("a", 4))
    _, [later] = part.claim(batch=10)
    assert later.exact == 0


def test_a_crash_window_of_an_unordered_item_is_cleared_when_it_finishes(
    part: Partition,
) -> None:
    # Item 5: each sub_key=None item has a sub key of its own; its window field stayed forever.
    sub = codec.encode_sub_key(None, 7)
    part.enqueue((None, 7))
    part.claim(batch=10)
    lease = crash_and_reclaim(part, sub, batch=10)
    assert lease.exact == 1
    [reply] = part.complete(Completion(sub, lease.token, "c", [7], exact=True))
    assert reply.code == 2
    assert part.backend.client.hlen(part.keys.exact) == 0


def test_a_release_that_requeues_the_sub_key_says_so(part: Partition) -> None:
    # Item 5: the worker rings the partition's bell for a sub key it handed back with items
    # left (during isolation, or stopping), so other workers need not wait for the reaper.
    part.enqueue(("a", 1), ("a", 2), ("b", 3))
    _, claimed = part.claim(batch=10)
    by_sub = {c.sub: c for c in claimed}
    a, b = part.complete(
        Completion(b"sa", by_sub[b"sa"].token, "r", [1]),
        Completion(b"sb", by_sub[b"sb"].token, "r", [3]),
    )
    assert (a.code, a.requeued) == (2, True)
    assert (b.code, b.requeued) == (2, False)


def test_an_isolated_lease_is_unflagged_while_its_item_waits_for_a_retry(part: Partition) -> None:
    # Item 13, first bullet: the flag stayed set through the retry backoff, so an unrelated
    # SIGKILL then (a deploy) was charged in full to an item that was not running.
    part.enqueue(("a", 1), ("a", 2))
    part.claim(max_attempts=3, batch=10)
    lease = crash_and_reclaim(part, b"sa", max_attempts=3, batch=10)
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    assert part.fail(b"sa", lease.token, attempt=2) == (1, 2)  # retry later
    owner = cast("bytes | None", part.backend.client.hget(part.keys.owners, b"sa"))  # bytes replies
    assert owner is not None and b"|-|" in owner
    part.make_expired(b"sa")  # killed during the backoff
    assert part.expire(b"sa") == (1, 2)  # charged as unattributed: capped below max_attempts
    assert part.queue("a") == [1, 2]


def test_an_isolated_lease_is_unflagged_between_its_window_items(part: Partition) -> None:
    part.enqueue(("a", 1), ("a", 2), ("a", 3))
    part.claim(max_attempts=1, batch=10)
    lease = crash_and_reclaim(part, b"sa", max_attempts=1, batch=10)
    assert part.run(lambda b: scripts.mark_isolated(b, part.keys, b"sa", lease.token)) == 1
    [reply] = part.complete(Completion(b"sa", lease.token, "c", [1], exact=True))
    owner = cast("bytes | None", part.backend.client.hget(part.keys.owners, b"sa"))  # bytes replies
    assert reply.code == 1 and owner is not None and b"|-|" in owner
    part.make_expired(b"sa")  # killed before the next item was flagged and started
    assert part.expire(b"sa") == (1, 0)  # unattributed: never the last attempt
    assert part.queue("a") == [2, 3]


def block(part: Partition, sub_key: str, offset: int) -> None:
    part.enqueue((sub_key, offset))
    _, [lease] = part.claim(max_attempts=1, mode="b")
    assert part.fail(codec.encode_sub_key(sub_key, 0), lease.token, 1, 1, "b") == (3, 1)


@pytest.mark.parametrize("action", ["retry", "dead_letter"])
def test_a_re_sent_unblock_answers_as_the_first_and_rings_the_bell(
    part: Partition, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    # Item 13, fourth bullet: a re-sent unblock (the reply was lost, the batch sent again)
    # found nothing blocked, returned False and rang no bell.
    block(part, "a", 1)
    send = Batch._send

    def send_twice(self: Batch, commands: list[tuple[object, ...]]) -> list[object]:
        send(self, commands)  # applied, but its reply "lost": the batch goes out again
        return send(self, commands)

    monkeypatch.setattr(Batch, "_send", send_twice)
    admin = Admin(part.backend, part.keys.namespace)
    unblock = admin.retry_blocked if action == "retry" else admin.dead_letter_blocked
    assert unblock(0, "a") is True
    monkeypatch.undo()
    assert part.backend.client.zscore(admin._keys.wake, "0") is not None
    assert part.backend.client.hlen(part.keys.blocked) == 0
    assert part.ready() == ([b"sa"] if action == "retry" else [])
    # A later unblock of a sub key that is not blocked is still refused.
    assert admin.retry_blocked(0, "a") is False


# --- a key of the wrong type fails the call before its first write --------------------------


def snapshot(part: Partition) -> dict[bytes, object]:
    """Every key of the namespace with its type and contents (the clock's samples included)."""
    client = part.backend.client
    state: dict[bytes, object] = {}
    for key in cast("list[bytes]", client.keys(f"*{part.keys.namespace}*")):  # bytes replies
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            state[key] = (kind, client.get(key))
        elif kind == "list":
            state[key] = (kind, client.lrange(key, 0, -1))
        elif kind == "hash":
            state[key] = (kind, client.hgetall(key))
        else:
            assert kind == "zset", kind
            state[key] = (kind, client.zrange(key, 0, -1, withscores=True))
    return state


def fail_head(part: Partition, sub: bytes, token: int, head: bytes) -> Callable[[], object]:
    """fail_item as the worker calls it for `head`: a corrupt one is dead-lettered at once."""
    try:
        offset: int | None = codec.parse_entry(head).offset
    except codec.CorruptEntry:
        offset = None
    return lambda: part.run(
        lambda b: scripts.fail_item(
            b,
            part.keys,
            sub=sub,
            token=token,
            head_prefix=codec.head_prefix(head),
            offset=offset,
            attempt=1,
            max_attempts=3,
            exhausted_mode="d",
            force=offset is None,
            error_json='{"type":"Boom"}',
            lease_ms=60_000,
        )
    )


def prepared_call(part: Partition, script: str) -> Callable[[], object]:
    """State in which `script` writes several keys, and the call (to run more than once)."""
    part.enqueue(("a", 1), ("a", 2), ("b", 3))
    if script == "enqueue_items":
        return lambda: part.enqueue(("a", 4), ("c", 5), ("d", 0))  # a new, a late sub key
    if script == "claim_sub_keys":
        return lambda: part.claim(n=2, batch=1)
    _, claimed = part.claim(n=2, batch=1)
    lease = next(c for c in claimed if c.sub == b"sa")
    if script == "complete_items":
        return lambda: part.complete(Completion(b"sa", lease.token, "c", [1]), batch=1)
    if script == "fail_item":
        head = cast("bytes | None", part.backend.client.lindex(part.keys.queue(b"sa"), 0))
        assert head is not None
        return fail_head(part, b"sa", lease.token, head)
    assert script == "expire_lease"
    part.make_expired(b"sa")
    return lambda: part.expire(b"sa")


WRITTEN_KEYS = {
    "enqueue_items": ["heads", "late", "ready", "owners", "clock", "queue"],
    "claim_sub_keys": ["ready", "owners", "meta", "leases", "attempts", "exact", "queue"],
    "complete_items": ["owners", "leases", "ready", "heads", "late", "attempts", "exact", "queue"],
    "fail_item": ["owners", "attempts", "blocked", "leases", "dead", "heads", "exact", "late",
                  "queue"],
    "expire_lease": ["leases", "owners", "exact", "attempts", "blocked", "dead", "heads", "late",
                     "ready", "queue"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("script", "name"), [(s, n) for s, names in WRITTEN_KEYS.items() for n in names]
)
def test_a_key_of_the_wrong_type_fails_a_script_before_its_first_write(
    part: Partition, script: str, name: str
) -> None:
    # Found by fuzzing (issue 8): a claim popped `ready`, then met `owners` holding a string,
    # and the popped sub keys were stranded for good. Every script now checks the type of each
    # key it writes before it writes: the call fails with nothing changed, and once the key is
    # repaired the same call works.
    call = prepared_call(part, script)
    key = part.keys.queue(b"sa") if name == "queue" else getattr(part.keys, name)
    client = part.backend.client
    client.delete(key)
    client.set(key, b"not a container")
    before = snapshot(part)
    with pytest.raises(ScriptError, match="WRONGTYPE") as error:
        call()
    assert key.decode() in str(error.value), "the error names the key"
    assert snapshot(part) == before
    client.delete(key)  # repaired (by an operator: the lost contents are theirs to restore)
    call()


def many_lists_call(part: Partition, script: str) -> tuple[bytes, Callable[[], object]]:
    """A call that reads or writes the lists of many sub keys, and the list (of the last sub
    key, after the others were read or checked) to give the wrong type."""
    subs = [f"k{i}" for i in range(40)]
    if script == "enqueue_items":  # every list new but the last: pushed, then trimmed again
        return part.keys.queue(b"sk39"), lambda: part.enqueue(*[(s, i) for i, s in enumerate(subs)])
    part.enqueue(*[(s, i) for i, s in enumerate(subs)])
    if script == "claim_sub_keys":
        return part.keys.queue(b"sk39"), lambda: part.claim(n=40, batch=5)
    _, claimed = part.claim(n=40, batch=5)
    done = [Completion(c.sub, c.token, "c", [codec.parse_entry(c.entries[0]).offset])
            for c in claimed]  # fmt: skip
    return part.keys.queue(claimed[-1].sub), lambda: part.complete(*done, batch=5)


@pytest.mark.parametrize("script", ["enqueue_items", "claim_sub_keys", "complete_items"])
def test_a_wrong_type_list_among_many_fails_the_call_before_its_first_write(
    part: Partition, script: str
) -> None:
    # The lists' type checks ride on commands the scripts run anyway (the enqueue's RPUSH, the
    # claim's and completion's LRANGE, each with pcall): a wrong type met after other lists were
    # read, or pushed to and trimmed off again, still fails the call with nothing changed.
    key, call = many_lists_call(part, script)
    client = part.backend.client
    client.delete(key)
    client.set(key, b"not a list")
    before = snapshot(part)
    with pytest.raises(ScriptError, match="WRONGTYPE") as error:
        call()
    assert key.decode() in str(error.value), "the error names the key"
    assert snapshot(part) == before
    client.delete(key)
    call()


@pytest.mark.parametrize("bad_at", ["last", "middle"])
def test_an_enqueue_undoes_its_pushes_to_the_lists_before_one_of_the_wrong_type(
    part: Partition, bad_at: str
) -> None:
    # The fast path pushes to the lists first, each RPUSH with pcall, and a failed one trims off
    # what the call pushed to the lists before it: lists that existed keep exactly their
    # entries, lists that were new are gone, no fixed key was written (`accepted`, `heads`,
    # `ready`, `meta`, `clock`), and the next call after the repair works.
    part.enqueue(("a", 0), ("a", 1), ("b", 2), ("c", 3))
    key = part.keys.queue(b"sbad")
    client = part.backend.client
    client.set(key, b"not a list")
    before = snapshot(part)
    assert client.llen(part.keys.queue(b"sa")) == 2, "an existing list with entries"
    groups = [("a", 2), ("new1", 1), ("b", 2), ("new2", 3), ("a", 1)]
    if bad_at == "middle":
        groups.insert(3, ("bad", 1))
    else:
        groups.append(("bad", 1))
    subs = [sub for sub, count in groups for _ in range(count)]
    items = [(sub, 4 + i) for i, sub in enumerate(subs)]
    with pytest.raises(ScriptError, match="WRONGTYPE") as error:
        part.enqueue(*items)  # offsets above every accepted one, room for all: the fast path
    assert key.decode() in str(error.value), "the error names the key"
    assert snapshot(part) == before
    client.delete(key)
    assert part.enqueue(*items) == [0] * len(items)


@pytest.mark.parametrize("existing", [False, True])
def test_an_enqueue_undoes_a_group_past_one_push_before_a_list_of_the_wrong_type(
    part: Partition, existing: bool
) -> None:
    # A group of more entries than one RPUSH takes is pushed in several: the undo trims all of
    # them, from a list that was new (it is gone) or one that had entries (they stay).
    part.enqueue(("x", 0), *([("big", 1), ("big", 2)] if existing else []))
    key = part.keys.queue(b"sbad")
    client = part.backend.client
    client.set(key, b"not a list")
    before = snapshot(part)
    big = [("big", 10 + i) for i in range(CHUNK + 500)]
    items = [("small", 5), *big, ("x", 10 + len(big)), ("bad", 11 + len(big))]
    with pytest.raises(ScriptError, match="WRONGTYPE") as error:
        part.enqueue(*items, max_in_queue=1_000_000)
    assert key.decode() in str(error.value), "the error names the key"
    assert snapshot(part) == before
    client.delete(key)
    assert part.enqueue(*items, max_in_queue=1_000_000) == [0] * len(items)
    assert client.llen(part.keys.queue(b"sbig")) == len(big) + (2 if existing else 0)


def test_the_watermark_moves_past_more_finished_items_than_one_scan_covers(
    part: Partition,
) -> None:
    # offer_watermark and commit_watermark find an offset's rank in `accepted` with one LPOS
    # over its first entries; past them (an ack loop far behind) a binary search takes over.
    count = 5000
    enqueue_in_calls(part, [(f"k{i}", i) for i in range(count)])
    _, claimed = part.claim(n=count, batch=1)
    part.complete(*[Completion(c.sub, c.token, "c", [i]) for i, c in enumerate(claimed[:4500])])
    offer = part.offer()
    assert (offer.watermark, offer.in_queue) == (4499, count)
    assert part.commit(offer.watermark) == 500
    part.complete(
        *[Completion(c.sub, c.token, "c", [4500 + i]) for i, c in enumerate(claimed[4500:])]
    )
    assert part.offer().watermark == count - 1
    assert part.commit(count - 1) == 0


def test_an_entry_without_offset_is_dead_lettered_by_its_exact_bytes(part: Partition) -> None:
    # Found by fuzzing (issue 8): an empty entry's "head prefix" is empty, which fail_item
    # refused, so the sub key stayed stuck. Entries without an offset are now compared whole:
    # an empty one is dead-lettered, and "1" no longer matches a head "12|..." after it.
    part.enqueue(("a", 1), ("a", 2), ("a", 12))
    queue = part.keys.queue(b"sa")
    # cast: redis-py types lset's value str; bytes work
    part.backend.client.lset(queue, 0, cast(str, b""))
    part.backend.client.lset(queue, 1, cast(str, b"1"))
    _, [lease] = part.claim(batch=1)
    assert fail_head(part, b"sa", lease.token, b"")() == (2, 0)
    # A re-sent call finds another head: nothing more is dead-lettered.
    assert fail_head(part, b"sa", lease.token, b"")() == (0, 0)
    assert fail_head(part, b"sa", lease.token, b"1")() == (2, 0)
    assert fail_head(part, b"sa", lease.token, b"1")() == (0, 0)
    assert part.queue("a") == [12]
    dead = Admin(part.backend, part.keys.namespace).dead_letters(0)
    assert sorted(d.raw_entry for d in dead) == [b"", b"1"]


@pytest.mark.parametrize(
    ("setup", "lease_ms", "error"),
    [
        (None, 10**300, "bad argument lease ms"),  # SET ... PX of it fails: after the LPOP
        (None, 2**62, "bad argument lease ms"),
        ("token", 60_000, "not an integer"),  # a corrupt token counter: HINCRBY fails
    ],
    ids=["absurd lease", "lease past 64-bit ms", "corrupt token counter"],
)
def test_a_claim_that_fails_strands_no_sub_key(
    part: Partition, setup: str | None, lease_ms: int, error: str
) -> None:
    """A claim that fails must fail before it takes sub keys out of `ready` (they would wait
    there for no one: nothing leases a sub key that is neither ready nor leased)."""
    part.enqueue(("a", 0), ("b", 1))
    if setup == "token":
        part.backend.client.hset(part.keys.meta, "token", "x")
    with pytest.raises(ScriptError, match=error):
        part.claim(lease_ms=lease_ms)
    assert part.backend.client.lrange(part.keys.ready, 0, -1) == [b"sa", b"sb"]
    assert not part.backend.client.exists(part.keys.owners, part.keys.leases)
