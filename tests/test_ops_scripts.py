"""The operator scripts on both backends: replay_dead_letter keeps the watermark invariant, and
inspect_partition / stuck_sub_keys read what the other scripts wrote."""

from __future__ import annotations

import pytest

from workshaper import codec, scripts
from workshaper.connection import Backend
from workshaper.ops.inspection import Inspector
from workshaper.scripts import Completion

from .test_scripts import Partition


@pytest.fixture
def part(backend: Backend, namespace: str) -> Partition:
    return Partition(backend, namespace)


def replay(part: Partition, offset: int, sub: bytes) -> bytes | None:
    return part.run(lambda b: scripts.replay_dead_letter(b, part.keys, b"%d" % offset, sub))


def test_replay_above_the_watermark_holds_it_until_the_new_run_finishes(part: Partition) -> None:
    part.enqueue(("a", 0), ("b", 1), ("b", 2), ("c", 3))
    _, claimed = part.claim()
    token = {c.sub: c.token for c in claimed}
    assert part.fail(b"sb", token[b"sb"], attempt=3) == (2, 3)  # 1 is dead-lettered
    part.complete(
        Completion(b"sa", token[b"sa"], "r", [0]),
        Completion(b"sb", token[b"sb"], "r", [2]),
        Completion(b"sc", token[b"sc"], "r", [3]),
    )
    # Every offset finished (1 by giving up), none acked yet: replay 1 before the ack.
    assert replay(part, 1, b"sb") == codec.make_entry(1, codec.encode_message("m1", 100))
    assert replay(part, 1, b"sb") is None  # its record is gone: a second replay does nothing
    assert part.offer().watermark == 0  # held below the replayed offset
    _, [again] = part.claim()
    assert again.sub == b"sb"
    part.complete(Completion(b"sb", again.token, "r", [1]))
    assert part.offer().watermark == 3


def test_replay_runs_after_the_items_queued_now(part: Partition, backend: Backend) -> None:
    part.enqueue(("k", 0), ("k", 1))
    _, [lease] = part.claim(n=1)
    assert part.fail(b"sk", lease.token, attempt=3)[0] == 2  # 0 dead-lettered; 1 is the head
    replay(part, 0, b"sk")
    assert part.queue("k") == [1, 0]
    view = Inspector(backend, part.keys.namespace).partition_views([0])[0]
    assert (view.pending_sub_keys, view.leased_sub_keys, view.dead_letters) == (1, 1, 0)
    assert view.lowest_unfinished == 0 and view.oldest_unfinished_age is not None
    [stuck] = Inspector(backend, part.keys.namespace).stuck(older_than=0, partitions=[0])
    assert (stuck.sub_key, stuck.head_offset, stuck.why, stuck.queued) == ("k", 1, "running", 2)
    assert stuck.holder == "w1"


def test_a_bounded_read_of_dead_letters(part: Partition, backend: Backend) -> None:
    part.enqueue(*((f"s{o}", o) for o in range(5)))
    _, claimed = part.claim()
    for c in claimed:
        assert part.fail(c.sub, c.token, attempt=3)[0] == 2
    inspector = Inspector(backend, part.keys.namespace)
    some = inspector.some_dead_letters([0], 2)
    assert len(some) == 2 and some == sorted(some, key=lambda d: d.offset or 0)
    assert {d.sub_key for d in some} <= {f"s{o}" for o in range(5)}
    assert [d.offset for d in inspector.some_dead_letters([0], 10)] == [0, 1, 2, 3, 4]
