"""Lanes in the worker: a leased lane runs its sub keys in parallel, each sub key in order.

The window's rules are unit-tested on their own; everything else runs a real worker against
every backend, with a lane's entries enqueued the way a producer with ``lanes`` writes them.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import pytest

import workshaper
from workshaper import codec
from workshaper.admin import Admin
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys
from workshaper.scripts import EncodedItem
from workshaper.worker.lanes import LaneWindow, Run, run_sub_key
from workshaper.worker.lease import Lease
from workshaper.worker.prefetch import PrefetchPolicy

from .conftest import wait_for
from .test_worker import Recorder

# --- the window ------------------------------------------------------------------------------


class _Lease:
    partition, token, stop, lost, valid_until = 0, 1, False, False, 1e18


def _raw(offset: int, sub_key: Any) -> bytes:
    return codec.keyed_entry(offset, codec.encode_sub_key(sub_key, offset), b"sm")


def _take(window: LaneWindow) -> tuple[Run, int]:
    return window.take_run(_Lease(), codec.Lane(0))


def test_a_window_runs_each_sub_key_in_order_and_sub_keys_at_once() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b"), _raw(2, "a"), _raw(3, "c")])
    runs = [_take(window)[0] for _ in range(3)]
    assert [(r.sub_key, [s.offset for s in r.slots]) for r in runs] == [
        ("a", [0, 2]),
        ("b", [1]),
        ("c", [3]),
    ]
    assert not window.runnable and window.in_flight == 3
    window.add([_raw(4, "a")])  # read while a's run is in flight: waits for it
    assert not window.runnable
    window.finished([1, 3])
    assert window.prefix() == []  # 0 is not finished: nothing above it is recorded
    window.run_ended(runs[1], ("finished",))
    window.finished([0, 2])
    window.run_ended(runs[0], ("finished",))
    assert list(window.runnable) == [b"sa"]
    assert window.prefix() == [0, 1, 2, 3]
    assert len(window) == 1


def test_a_failed_item_holds_its_sub_key_until_recorded_as_the_head() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b"), _raw(2, "b"), _raw(3, "c")])
    a, _ = _take(window)
    b, _ = _take(window)
    window.run_ended(b, ("failed", 0, 1, "{}"))  # b's first item failed, above the head
    assert window.head_failure() is None
    assert b"sb" not in window.runnable
    window.finished([0])
    window.run_ended(a, ("finished",))
    assert window.prefix() == [0]
    found = window.head_failure()
    assert found is not None and found[0].offset == 1
    window.retry_later(found[0], 1)
    assert window.head_failure() is None and b"sb" not in window.runnable
    window.retry_now(b"sb")
    c, _ = _take(window)
    retried, attempt = _take(window)
    assert (c.sub_key, retried.sub_key, attempt) == ("c", "b", 2)
    assert [s.offset for s in retried.slots] == [1, 2]


def test_a_dead_lettered_head_frees_its_sub_key_successors() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "a")])
    run, _ = _take(window)
    window.run_ended(run, ("failed", 0, 3, "{}"))
    assert window.head_failure() is not None
    assert window.head_dead_lettered().offset == 0
    run, attempt = _take(window)
    assert ([s.offset for s in run.slots], attempt) == ([1], 1)


def test_a_stopped_run_puts_its_rest_back_in_front_of_later_reads() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "a")])
    run, _ = _take(window)
    window.add([_raw(2, "a")])
    window.finished([0])
    window.run_ended(run, ("stopped", 1))
    run, _ = _take(window)
    assert [s.offset for s in run.slots] == [1, 2]


def test_an_expired_run_asks_for_a_confirmation() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a")])
    run, _ = _take(window)
    window.run_ended(run, ("expired", 0))
    assert window.confirm and list(window.runnable) == [b"sa"]


def test_the_head_attempt_record_sets_its_first_run_attempt() -> None:
    window = LaneWindow()
    window.add([_raw(7, "a"), _raw(8, "a")], b"7|2")
    assert _take(window)[1] == 3
    other = LaneWindow()
    other.add([_raw(7, "a")], b"6|2")  # a record of another item: not this head's
    assert _take(other)[1] == 1


@pytest.mark.parametrize("raw", [b"junk", b"5|sab", b"5|k9:sab", b"5|k2:L1sab"])
def test_an_entry_without_a_readable_sub_key_runs_as_the_lane(raw: bytes) -> None:
    window = LaneWindow()
    window.add([raw, _raw(6, "a")])
    first, _ = _take(window)
    assert first.sub_key == codec.Lane(0)
    assert _take(window)[0].sub_key == "a"


def test_a_run_hands_the_executor_each_item_as_its_window_read_it() -> None:
    """Run.item decodes from the window's reading of each entry (offset, sub key, where the
    payload starts): the same item decode_lane_item gives, in runs of one sub key and of
    several, and a corrupt entry still raises for the executor to report."""
    entries = [
        codec.keyed_entry(0, b"sa", codec.encode_message({"n": 0}, 100)),
        codec.keyed_entry(1, b"i7", codec.encode_message(b"raw", 100)),
        codec.keyed_entry(2, b"sa", codec.encode_message("two", 100)),
    ]
    single = LaneWindow()
    single.add(entries)
    run, _ = _take(single)
    assert run.sub_key == "a" and run.item_reader is not None
    assert [run.item(i) for i in range(len(run.slots))] == [
        codec.decode_lane_item(entries[0]),
        codec.decode_lane_item(entries[2]),
    ]
    several = LaneWindow()
    several.add(entries)
    run, _ = several.take_run(_Lease(), codec.Lane(0), sub_keys=2)
    assert run.sub_key == codec.Lane(0)
    assert [run.item(i) for i in range(3)] == [codec.decode_lane_item(e) for e in entries[:1]] + [
        codec.decode_lane_item(entries[2]),
        codec.decode_lane_item(entries[1]),
    ]
    for raw in (b"5|k9:sab", b"5|k2:L1sab", b"5|k2:sa\xff"):
        corrupt = LaneWindow()
        corrupt.add([raw])
        run, _ = _take(corrupt)
        with pytest.raises((codec.CorruptEntry, ValueError)):
            run.item(0)


def test_run_sub_keys_decode_or_fall_back_to_the_lane() -> None:
    lane = codec.Lane(3)
    assert run_sub_key(lane, b"i42") == 42
    assert run_sub_key(lane, b"n9") is None
    assert run_sub_key(lane, b"zz") == lane


def test_occupies_counts_running_and_runnable_sub_keys_up_to_the_slots() -> None:
    window = LaneWindow()
    window.add([_raw(i, f"k{i}") for i in range(10)])
    _take(window)
    assert window.occupies(4) == 4
    assert window.occupies(100) == 10
    assert len(deque(window.runnable)) == 9


def _lane_lease(index: int, window: LaneWindow) -> Lease:
    keys = NamespaceKeys("t").partition(0)
    lease = Lease(0, keys, codec.lane_sub(index), codec.Lane(index), 1, 0, b"")
    lease.window = window
    return lease


def test_a_worker_holds_at_most_a_lane_per_slot() -> None:
    # Lanes that look empty for a moment fill up again: claiming more of them than slots
    # would leave another worker none (each stays held while it has entries).
    policy = PrefetchPolicy(concurrency=8, prefetch=8)
    policy.claim_left(100)  # a deep backlog: it would prefetch
    quiet = [_lane_lease(i, LaneWindow()) for i in range(8)]
    assert policy.wanted(quiet, claiming=0) == 0
    assert policy.wanted(quiet[:5], claiming=2) == 1


def test_a_lane_with_many_runnable_sub_keys_fills_every_slot() -> None:
    window = LaneWindow()
    window.add([_raw(i, f"k{i}") for i in range(20)])
    policy = PrefetchPolicy(concurrency=8, prefetch=0)
    assert policy.wanted([_lane_lease(0, window)], claiming=0) == 0


# --- a real worker -----------------------------------------------------------------------------


def lane_items(items: list[tuple[Any, Any, int, int]], lanes: int) -> list[tuple[int, EncodedItem]]:
    """Items as a producer with ``lanes`` enqueues them: in their lane's list, keyed."""
    out = []
    for sub_key, message, partition, offset in items:
        p, sub, o, entry = codec.encode_item(sub_key, message, partition, offset, 1 << 20)
        payload = entry.partition(b"|")[2]
        lane = codec.lane_sub(codec.lane_of(sub, lanes))
        out.append((p, EncodedItem(lane, o, codec.keyed_entry(o, sub, payload))))
    return out


def run_lanes(
    backend: Backend,
    namespace: str,
    items: list[tuple[Any, Any, int, int]],
    work: Any,
    lanes: int = 1,
    timeout: float = 60,
    **options: Any,
) -> tuple[workshaper.Worker, bool]:
    worker = workshaper.Worker(backend, namespace, work=work, **options).start()
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_encoded(lane_items(items, lanes))
            flushed = producer.flush(timeout=timeout)
    finally:
        worker.stop(10)
    return worker, flushed


def assert_in_order_once(rec: Recorder, items: list[tuple[Any, Any, int, int]]) -> None:
    assert sorted(j.offset for j in rec.calls) == sorted(o for *_, o in items)
    expected: dict[tuple[Any, int], list[int]] = {}
    for sub_key, _, partition, offset in items:
        expected.setdefault((sub_key, partition), []).append(offset)
    for (sub_key, partition), offsets in expected.items():
        ran_in_order = [
            j.offset for j in rec.calls if (j.sub_key, j.partition) == (sub_key, partition)
        ]
        assert ran_in_order == offsets, (sub_key, partition)


@pytest.mark.parametrize("lanes", [1, 4])
def test_every_item_runs_once_in_order_per_sub_key_as_its_own_sub_key(
    backend: Backend, namespace: str, lanes: int
) -> None:
    items = [(f"k{o % 23}", {"o": o}, o % 2, o) for o in range(400)]
    rec = Recorder()
    worker, flushed = run_lanes(backend, namespace, items, rec, lanes, concurrency=4)
    assert flushed
    assert_in_order_once(rec, items)
    assert worker.stats["finished"] == 400


def test_one_lane_runs_its_sub_keys_at_once(backend: Backend, namespace: str) -> None:
    # Four sub keys in one lane: their first items meet at a barrier, which only opens when
    # all four run at the same time.
    barrier = threading.Barrier(4, timeout=30)
    rec = Recorder()

    def work(message: Any, partition: int, offset: int) -> None:
        rec(message, partition, offset)
        if offset < 4:
            barrier.wait()

    items = [(f"k{o % 4}", "m", 0, o) for o in range(12)]
    _, flushed = run_lanes(backend, namespace, items, work, 1, concurrency=4)
    assert flushed and not barrier.broken
    assert_in_order_once(rec, items)


def test_a_retry_holds_only_its_sub_key(backend: Backend, namespace: str) -> None:
    # "a" at the head fails once; its retry waits until every item of "b" behind it in the
    # same lane has run: a lane held for the retry would never get there.
    b_done = threading.Event()
    rec = Recorder(fail_first={0: 1})

    def work(message: Any, partition: int, offset: int) -> None:
        job = workshaper.current_job()
        if job.sub_key == "a" and job.attempt == 2:
            assert b_done.wait(30)
        rec(message, partition, offset)
        if offset == 10:
            b_done.set()

    items = [("a", "m", 0, 0)] + [("b", "m", 0, o) for o in range(1, 11)] + [("a", "m", 0, 11)]
    worker, flushed = run_lanes(backend, namespace, items, work, 1, retry_backoff=0.05)
    assert flushed
    assert rec.attempts(0) == [1, 2]
    assert rec.order("a") == [0, 0, 11]
    assert rec.order("b") == list(range(1, 11))
    assert worker.stats["retried"] == 1


def test_a_failure_above_the_head_is_retried_once_it_is_the_head(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder(fail_first={5: 2})
    items = [(f"k{o % 3}", "m", 0, o) for o in range(30)]
    worker, flushed = run_lanes(
        backend, namespace, items, rec, 1, concurrency=3, retry_backoff=0.01
    )
    assert flushed
    assert rec.attempts(5) == [1, 2, 3]
    assert rec.order("k2") == [2, 5, 5, 5, *range(8, 30, 3)]
    assert worker.stats["retried"] == 2 and worker.stats["dead_lettered"] == 0


def test_an_exhausted_item_of_a_lane_is_dead_lettered_and_its_successors_run(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder(always_fail={3})
    items = [(f"k{o % 2}", {"n": o}, 0, o) for o in range(10)]
    worker, flushed = run_lanes(
        backend, namespace, items, rec, 1, max_attempts=2, retry_backoff=0.01
    )
    assert flushed
    assert rec.order("k1") == [1, 3, 3, 5, 7, 9]
    assert rec.order("k0") == [0, 2, 4, 6, 8]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert (dead.offset, dead.attempts, dead.message) == (3, 2, {"n": 3})
    assert worker.stats["dead_lettered"] == 1


def test_a_corrupt_entry_in_a_lane_is_dead_lettered_and_the_rest_run(
    backend: Backend, namespace: str
) -> None:
    rec = Recorder()
    good = lane_items([("a", "m", 0, 0), ("a", "m", 0, 2)], 1)
    bad = (0, EncodedItem(codec.lane_sub(0), 1, b"1|k99:sa"))
    worker = workshaper.Worker(backend, namespace, work=rec).start()
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_encoded([good[0], bad, good[1]])
            assert producer.flush(timeout=60)
    finally:
        worker.stop(10)
    assert rec.order("a") == [0, 2]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert (dead.offset, dead.error_type) == (1, "CorruptItem")


def test_an_exhausted_item_blocks_its_lane_in_block_mode(backend: Backend, namespace: str) -> None:
    rec = Recorder(always_fail={0})
    items = [("a", "m", 0, 0), ("b", "m", 0, 1), ("c", "m", 1, 2)]
    worker = workshaper.Worker(
        backend, namespace, work=rec, max_attempts=2, retry_backoff=0.01, on_exhausted="block"
    ).start()
    admin = Admin(backend, namespace)
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_encoded(lane_items(items, 1))
            wait_for(lambda: admin.blocked(0))
            wait_for(lambda: {1, 2} <= {j.offset for j in rec.calls})
            [record] = admin.blocked(0)
            assert (record.sub_key, record.offset, record.attempts) == (codec.Lane(0), 0, 2)
            rec.always_fail.clear()
            assert admin.retry_blocked(0, codec.Lane(0)) is True
            assert producer.flush(timeout=60)
    finally:
        worker.stop(10)
    assert worker.stats["blocked"] == 1
    assert rec.order("a") == [0, 0, 0]
    # b ran beside a, above the lane's head, unless a blocked the lane first: the lane was
    # given up without recording it, so b runs (again) after the unblock: at least once.
    assert rec.order("b") in ([1], [1, 1])


def test_an_operator_dead_letters_a_blocked_lanes_head(backend: Backend, namespace: str) -> None:
    rec = Recorder(always_fail={0})
    worker = workshaper.Worker(
        backend, namespace, work=rec, max_attempts=1, on_exhausted="block"
    ).start()
    admin = Admin(backend, namespace)
    try:
        with workshaper.Producer(backend, namespace) as producer:
            producer.enqueue_encoded(lane_items([("a", "m", 0, 0), ("b", "m", 0, 1)], 1))
            wait_for(lambda: admin.blocked(0))
            with pytest.raises(workshaper.InvalidInput, match="lanes must be from 1 to 4096"):
                admin.dead_letter_blocked(0, codec.Lane(5000))
            assert admin.dead_letter_blocked(0, codec.Lane(0))
            assert producer.flush(timeout=30)
    finally:
        worker.stop(10)
    assert rec.order("b") in ([1], [1, 1])  # as above
    assert [d.offset for d in admin.dead_letters(0)] == [0]


def test_async_handlers_run_a_lanes_sub_keys_at_once(backend: Backend, namespace: str) -> None:
    import asyncio

    seen: list[tuple[Any, int]] = []
    running = 0
    most = 0

    async def work(message: Any, partition: int, offset: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        seen.append((workshaper.current_job().sub_key, offset))
        await asyncio.sleep(0.01)
        running -= 1

    items = [(f"k{o % 5}", "m", 0, o) for o in range(50)]
    _, flushed = run_lanes(backend, namespace, items, work, 1, concurrency=5)
    assert flushed
    for k in range(5):
        assert [o for s, o in seen if s == f"k{k}"] == list(range(k, 50, 5))
    assert most > 1


def test_a_stopped_worker_hands_its_lanes_to_the_next(backend: Backend, namespace: str) -> None:
    rec = Recorder(delay=0.002)
    items = [(f"k{o % 7}", "m", (o % 7) % 2, o) for o in range(300)]
    first = workshaper.Worker(backend, namespace, work=rec, concurrency=3).start()
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_encoded(lane_items(items, 2))
        wait_for(lambda: len(rec.calls) >= 60)
        first.stop(10)
        second = workshaper.Worker(backend, namespace, work=rec, concurrency=3).start()
        try:
            assert producer.flush(timeout=60)
        finally:
            second.stop(10)
    ran = [j.offset for j in rec.calls]
    assert set(ran) == set(range(300))  # at least once
    for k in range(7):  # and in order: a re-run repeats a suffix, never goes back further
        order = rec.order(f"k{k}")
        firsts = sorted(set(order), key=order.index)
        assert firsts == sorted(firsts), k


def test_a_run_of_several_sub_keys_keeps_each_one_together_and_in_order() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b"), _raw(2, "a"), _raw(3, "c"), _raw(4, "d")])
    run, attempt = window.take_run(_Lease(), codec.Lane(0), 3)
    assert run.sub_key == codec.Lane(0)  # the executor reads each item's own sub key
    assert [s.offset for s in run.slots] == [0, 2, 1, 3]
    assert (run.subs, attempt) == ([b"sa", b"sb", b"sc"], 1)
    # b's item fails: a and the item of c after it are not held by it.
    window.finished([0, 2])
    window.run_ended(run, ("failed", 2, 1, "{}"))
    assert b"sb" not in window.runnable
    assert set(window.runnable) == {b"sc", b"sd"}
    rest, _ = window.take_run(_Lease(), codec.Lane(0), 5)
    assert sorted(s.offset for s in rest.slots) == [3, 4]


def test_a_stopped_run_of_several_sub_keys_gives_each_its_rest_back() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b"), _raw(2, "a"), _raw(3, "b")])
    run, _ = window.take_run(_Lease(), codec.Lane(0), 2)
    window.add([_raw(4, "b")])
    window.finished([0])
    window.run_ended(run, ("stopped", 1))
    assert window.in_flight == 0
    by_sub = {}
    while window.runnable:
        r, _ = _take(window)
        by_sub[r.sub_key] = [s.offset for s in r.slots]
    assert by_sub == {"a": [2], "b": [1, 3, 4]}


def test_a_retried_sub_key_is_never_put_behind_another_in_a_run() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b"), _raw(2, "c")])
    first, _ = window.take_run(_Lease(), codec.Lane(0), 1)
    window.run_ended(first, ("failed", 0, 1, "{}"))
    found = window.head_failure()
    assert found is not None
    window.retry_later(found[0], 1)
    window.retry_now(b"sa")  # a is runnable again, behind b and c, on attempt 2
    run, attempt = window.take_run(_Lease(), codec.Lane(0), 5)
    assert (run.subs, attempt) == ([b"sb", b"sc"], 1)
    run, attempt = window.take_run(_Lease(), codec.Lane(0), 5)
    assert (run.subs, attempt) == ([b"sa"], 2)


def test_a_stopping_window_fills_its_gaps_below_what_finished() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "a"), _raw(2, "b"), _raw(3, "a"), _raw(4, "c")])
    a, _ = window.take_run(_Lease(), codec.Lane(0), 1)
    b, _ = window.take_run(_Lease(), codec.Lane(0), 1)
    window.finished([2])
    window.run_ended(b, ("finished",))
    window.begin_fill()
    assert window.fill_until == 2
    assert not a.stops_before(0) and not a.stops_before(1)  # 0 and 1 are below 2
    assert a.stops_before(2)  # 3 is not
    window.finished([0, 1])
    window.run_ended(a, ("stopped", 2))
    assert window.prefix() == [0, 1, 2]
    assert not window.gap_startable()  # 3 and 4 are above everything finished
    assert window.take_gap_run(_Lease(), codec.Lane(0)) is None


def test_a_lost_lanes_runs_stop_at_once() -> None:
    window = LaneWindow()
    window.add([_raw(0, "a"), _raw(1, "b")])
    lease = _Lease()
    lease.lost = True
    run, _ = window.take_run(lease, codec.Lane(0))
    window.finished([1])
    window.begin_fill()
    assert run.stops_before(0)


def test_a_graceful_stop_runs_nothing_twice(backend: Backend, namespace: str) -> None:
    # a's head is slow; b and c finish above it. Stopping records all of it: the gaps below the
    # highest finished item run first, so the next worker re-runs nothing.
    go = threading.Event()
    rec = Recorder()

    def work(message: Any, partition: int, offset: int) -> None:
        rec(message, partition, offset)
        if offset == 0:
            assert go.wait(30)

    items = [("a", "m", 0, 0), ("a", "m", 0, 1), ("b", "m", 0, 2), ("a", "m", 0, 3)]
    items += [("c", "m", 0, o) for o in range(4, 12)]
    first = workshaper.Worker(backend, namespace, work=work, concurrency=4).start()
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_encoded(lane_items(items, 1))
        wait_for(lambda: {0, 2, 11} <= {j.offset for j in rec.calls})
        stopping = threading.Thread(target=first.stop, args=(30,))
        stopping.start()
        wait_for(lambda: first._state.stopping)
        go.set()
        stopping.join(60)
        second = workshaper.Worker(backend, namespace, work=work, concurrency=4).start()
        try:
            assert producer.flush(timeout=60)
        finally:
            second.stop(10)
    assert sorted(j.offset for j in rec.calls) == list(range(12))
    assert rec.order("a") == [0, 1, 3]
