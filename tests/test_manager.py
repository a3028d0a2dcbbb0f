"""The Manager on its private embedded backend (redis=None) queues new items and sends them in
batches (group commit): its statuses, backpressure and errors must stay the script's."""

from __future__ import annotations

import threading
import time

import pytest

import workshaper
from workshaper import Enqueued, InvalidInput, QueueFull


def _wait_for(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_re_enqueued_offsets_get_the_scripts_status() -> None:
    gate = threading.Event()

    def work(message: object, partition: int, offset: int) -> None:
        if offset == 2:
            gate.wait(30)

    with workshaper.Manager(work=work, max_in_queue=10) as manager:
        assert manager.enqueue("a", "m", 0, 1) is Enqueued.ACCEPTED
        assert manager.enqueue("b", "m", 0, 2) is Enqueued.ACCEPTED
        _wait_for(lambda: manager.producer.acked_watermarks().get(0) == 1)
        assert manager.enqueue("a", "m", 0, 1) is Enqueued.ALREADY_ACKED
        assert manager.enqueue("b", "m", 0, 2) is Enqueued.DUPLICATE  # still running
        assert manager.enqueue("c", "m", 0, 0) is Enqueued.ALREADY_ACKED  # below the watermark
        assert manager.enqueue("c", "m", 1, 0) is Enqueued.ACCEPTED  # another partition
        gate.set()
        assert manager.flush(timeout=30)
        assert manager.total_enqueued == manager.total_acked == 3
        assert manager.producer.stats["accepted"] == 3


def test_a_full_partition_blocks_then_times_out_with_queue_full() -> None:
    gate = threading.Event()
    most_unacked = [0]
    acked = [-1]
    enqueued = [-1]

    def ack(partition: int, offset: int) -> None:
        acked[0] = offset

    with workshaper.Manager(work=lambda m, p, o: gate.wait(30), ack=ack, max_in_queue=3) as manager:
        for offset in range(3):
            assert manager.enqueue("k", "m", 0, offset) is Enqueued.ACCEPTED
            enqueued[0] = offset
        with pytest.raises(QueueFull, match="partition 0 stayed full"):
            manager.enqueue("k", "m", 0, 3, timeout=0.2)
        gate.set()
        for offset in range(3, 20):
            assert manager.enqueue("k", "m", 0, offset, timeout=30) is Enqueued.ACCEPTED
            enqueued[0] = offset
            most_unacked[0] = max(most_unacked[0], offset - acked[0])
        assert manager.flush(timeout=30)
    assert most_unacked[0] <= 3  # never more than max_in_queue accepted and not acked
    assert acked[0] == 19


def test_a_bad_item_raises_at_once_and_nothing_is_queued() -> None:
    with workshaper.Manager(work=lambda m, p, o: None) as manager:
        with pytest.raises(InvalidInput, match="partition"):
            manager.enqueue("k", "m", -1, 0)
        with pytest.raises(InvalidInput, match="offset"):
            manager.enqueue("k", "m", 0, -5)
        assert manager.total_enqueued == 0
        assert manager.enqueue("k", "m", 0, 0) is Enqueued.ACCEPTED
        assert manager.flush(timeout=30)


def test_shutdown_without_wait_leaves_no_thread_behind() -> None:
    gate = threading.Event()
    manager = workshaper.Manager(work=lambda m, p, o: gate.wait(5), max_in_queue=5)
    for offset in range(5):
        manager.enqueue("k", "m", 0, offset)
    gate.set()
    assert manager.shutdown(timeout=10, wait=False) is False
    assert not any(t.name == "workshaper-enqueue" for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shut down"):
        manager.enqueue("k", "m", 0, 9)


def test_room_frees_only_once_the_watermark_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The script counts a partition's items until the acked watermark is committed, not when
    # ack returns: room the Manager freed at ack made its queued sends find the partition full
    # (a wasted script call and a wait for the commit).
    import workshaper.ackloop

    real_commit = workshaper.ackloop.scripts.commit_watermark

    def slow_commit(*args: object, **kwargs: object) -> object:
        time.sleep(0.05)  # a window between ack and commit in which a send would be refused
        return real_commit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workshaper.ackloop.scripts, "commit_watermark", slow_commit)
    with workshaper.Manager(work=lambda m, p, o: None, max_in_queue=2) as manager:
        for offset in range(12):
            assert manager.enqueue("k", "m", 0, offset, timeout=30) is Enqueued.ACCEPTED
        assert manager.flush(timeout=30)
        assert manager.total_acked == 12
        assert manager.producer.stats["full_waits"] == 0


@pytest.mark.parametrize("max_in_queue", [1, 100])
def test_an_error_of_a_queued_send_is_raised_by_the_next_enqueue_and_flush(
    max_in_queue: int,
) -> None:
    # max_in_queue 1: the enqueueing thread sends the queue itself before it waits for room;
    # 100: the writer thread sends it.
    manager = workshaper.Manager(work=lambda m, p, o: None, max_in_queue=max_in_queue)
    try:

        def refuse(*args: object, **kwargs: object) -> list[Enqueued]:
            raise ConnectionError("the send failed")

        manager.producer.enqueue_encoded = refuse  # type: ignore[method-assign]
        assert manager.enqueue("k", "m", 0, 0) is Enqueued.ACCEPTED  # queued, not sent yet
        with pytest.raises(RuntimeError, match="enqueue of this Manager failed") as raised:
            for offset in range(1, 50):
                manager.enqueue("k", "m", 0, offset, timeout=30)
                time.sleep(0.01)
        assert isinstance(raised.value.__cause__, ConnectionError)
        with pytest.raises(RuntimeError, match="enqueue of this Manager failed"):
            manager.flush(timeout=30)
    finally:
        manager.shutdown(timeout=5, wait=False)


def test_sent_items_reach_the_managers_worker_without_the_bell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On its private backend the Manager tells its own worker which partitions got items, in
    process: with the waker never started (so no bell is ever popped) every item still runs."""
    from workshaper.worker.waker import Waker

    monkeypatch.setattr(Waker, "start", lambda self: None)
    ran: list[int] = []
    manager = workshaper.Manager(work=lambda m, p, o: ran.append(o), max_in_queue=100)
    try:
        for offset in range(40):
            manager.enqueue(f"k{offset % 7}", "m", offset % 2, offset)
        assert manager.flush(timeout=20)
    finally:
        manager.shutdown(timeout=5, wait=False)
    assert sorted(ran) == list(range(40))


def test_the_managers_lone_worker_claims_what_is_left_without_ringing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No other worker can reach the Manager's private backend: sub keys left runnable while
    its worker has no room are claimed by it once it has room, and no bell is rung (with
    the waker never started, nothing but the worker itself could take them)."""
    from workshaper.worker.coordinator import Coordinator
    from workshaper.worker.waker import Waker

    monkeypatch.setattr(Waker, "start", lambda self: None)
    rung: list[int] = []
    add_wakes = Coordinator._add_wakes

    def spy(self: Coordinator, batch: object) -> object:
        rung.extend(self.state.wakes)
        return add_wakes(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(Coordinator, "_add_wakes", spy)
    ran: dict[str, list[int]] = {}
    lock = threading.Lock()

    def work(message: object, partition: int, offset: int) -> None:
        with lock:
            ran.setdefault(str(message), []).append(offset)

    manager = workshaper.Manager(work=work, max_in_queue=300, concurrency=2, prefetch=0)
    try:
        for offset in range(300):
            key = f"k{offset % 40}"
            manager.enqueue(key, key, 0, offset)
        assert manager.flush(timeout=30)
    finally:
        manager.shutdown(timeout=5, wait=False)
    assert rung == []
    assert sum(len(offsets) for offsets in ran.values()) == 300
    assert all(offsets == sorted(offsets) for offsets in ran.values())


def test_mark_alone_refuses_a_running_worker() -> None:
    """The coordinator reads the flag without a lock: it is set before the worker runs."""
    with (
        workshaper.Manager(work=lambda m, p, o: None) as manager,
        pytest.raises(RuntimeError, match="before the Worker runs"),
    ):
        manager.worker.mark_alone()
