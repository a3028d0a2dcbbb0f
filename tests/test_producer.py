"""Producer: validation before writes, dedupe statuses, backpressure, acks, connection errors."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import workshaper
from workshaper import Enqueued, InvalidInput, InvalidType, QueueFull
from workshaper.ackloop import FIRST_CHECK, ack_each_offset
from workshaper.batch import run_one
from workshaper.connection import Backend, connect, mask_url
from workshaper.keys import NamespaceKeys
from workshaper.scripts import Offer
from workshaper_tools.testing import RedisServer, free_port

from .conftest import partition_counts, wait_for


def keys_of(backend: Backend, namespace: str) -> list[bytes]:
    return sorted(backend.client.scan_iter(match=f"ws:{{{namespace}*"))


def finish_everything(backend: Backend, namespace: str, partition: int = 0) -> None:
    """Complete every queued item with a worker that does nothing."""
    worker = workshaper.Worker(backend, namespace, work=lambda m, p, o: None).start()
    try:
        wait_for(lambda: partition_counts(backend, namespace, partition)[0] == 0)
    finally:
        worker.stop(10)


@pytest.mark.parametrize(
    ("item", "error", "fragment"),
    [
        (("k", "m", -1, 0), InvalidInput, "partition"),
        (("k", "m", True, 0), InvalidType, "partition"),
        (("k", "m", 0, 1.0), InvalidType, "offset"),
        (("k", "m", 0, -5), InvalidInput, "offset"),
        (("k", "m", 0, 2**53), InvalidInput, "offset"),
        ((1.5, "m", 0, 0), InvalidType, "sub_key"),
        ((True, "m", 0, 0), InvalidType, "sub_key"),
        (("k", object(), 0, 0), InvalidType, "JSON-serializable"),
        (("k", b"x" * 101, 0, 0), InvalidInput, "max_message_bytes is 100"),
    ],
)
def test_bad_input_raises_naming_the_value_and_writes_nothing(
    backend: Backend, namespace: str, item: tuple[Any, ...], error: type[Exception], fragment: str
) -> None:
    with workshaper.Producer(backend, namespace, max_message_bytes=100) as producer:
        good = ("k", "m", 0, 0)
        with pytest.raises(error, match=fragment):
            producer.enqueue(*item)
        with pytest.raises(error, match=f"item 1: .*{fragment}"):
            producer.enqueue_many([good, item])  # the good item before it is not written either
        assert keys_of(backend, namespace) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"namespace": ""}, "empty"),
        ({"namespace": "a:b"}, "':'"),
        ({"namespace": "a b"}, "whitespace"),
        ({"max_in_queue": 0}, "max_in_queue"),
        ({"max_in_queue": True}, "max_in_queue"),
        ({"ack_interval": 0}, "ack_interval"),
        ({"ack": "not callable"}, "ack"),
        ({"runnable": "not callable"}, "runnable"),
    ],
)
def test_bad_producer_settings(backend: Backend, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises((InvalidInput, InvalidType), match=fragment):
        workshaper.Producer(backend, **kwargs)


def test_runnable_is_told_instead_of_ringing_the_bell(backend: Backend, namespace: str) -> None:
    """With ``runnable`` (the Manager on its private backend) the partitions that got items to
    run are named to it, and no bell is rung; without it, the bell rings."""
    told: list[list[int]] = []
    bell = NamespaceKeys(namespace).wake
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue("d", "m", 1, 0)
        assert backend.client.zrange(bell, 0, -1) == [b"1"]
    backend.client.delete(bell)
    with workshaper.Producer(backend, namespace, runnable=told.append) as producer:
        producer.enqueue_many([("a", "m", 0, 0), ("b", "m", 2, 0), ("c", "m", 2, 1)])
        assert told == [[0, 2]]
        assert backend.client.exists(bell) == 0
        producer.enqueue("a", "m", 0, 0)  # a duplicate: nothing new to run
        assert told == [[0, 2]]


def test_bad_items_shape(backend: Backend, namespace: str) -> None:
    with (
        workshaper.Producer(backend, namespace) as producer,
        pytest.raises(InvalidType, match="tuple"),
    ):
        producer.enqueue_many([("k", "m", 0)])  # type: ignore[list-item]


def test_statuses_for_accepted_duplicate_and_already_acked(
    backend: Backend, namespace: str
) -> None:
    acks: list[tuple[int, int]] = []
    with workshaper.Producer(backend, namespace, ack=lambda p, o: acks.append((p, o))) as producer:
        assert producer.enqueue("a", "m", 0, 1) is Enqueued.ACCEPTED
        assert producer.enqueue("b", "m", 0, 1) is Enqueued.DUPLICATE
        finish_everything(backend, namespace)
        assert producer.flush(timeout=10)
        assert acks == [(0, 1)]
        assert producer.watermark(0) == 1
        assert producer.watermark(5) is None
        assert producer.enqueue("a", "m", 0, 1) is Enqueued.ALREADY_ACKED
        assert producer.enqueue_many([("a", "m", 0, 0), ("a", "m", 0, 2)]) == [
            Enqueued.ALREADY_ACKED,
            Enqueued.ACCEPTED,
        ]


def test_restarted_producer_re_enqueues_without_re_running(
    backend: Backend, namespace: str
) -> None:
    runs: list[int] = []
    worker = workshaper.Worker(backend, namespace, work=lambda m, p, o: runs.append(o)).start()
    try:
        items = [(f"k{o % 3}", o, 0, o) for o in range(50)]
        with workshaper.Producer(backend, namespace) as first:
            first.enqueue_many(items)
            assert first.flush(timeout=30)
        # A new producer (e.g. after a consumer restart) replays from an older position.
        with workshaper.Producer(backend, namespace) as second:
            statuses = second.enqueue_many(items)
            assert set(statuses) == {Enqueued.ALREADY_ACKED}
    finally:
        worker.stop(10)
    assert sorted(runs) == list(range(50))


def test_new_producer_acks_what_a_dead_producer_offered_but_never_committed(
    backend: Backend, namespace: str
) -> None:
    from workshaper import scripts

    with workshaper.Producer(backend, namespace) as first:
        first.enqueue_many([("a", "m", 0, 0), ("b", "m", 0, 1)])
    finish_everything(backend, namespace)
    pkeys = NamespaceKeys(namespace).partition(0)
    # The first producer's ack loop offered watermark 1 and died before committing it.
    assert run_one(backend, lambda b: scripts.offer_watermark(b, pkeys, False)).watermark == 1
    acks: list[tuple[int, int]] = []
    with workshaper.Producer(backend, namespace, ack=lambda p, o: acks.append((p, o))) as second:
        assert second.enqueue_many([("a", "m", 0, 0), ("b", "m", 0, 1)]) == [
            Enqueued.ALREADY_ACKED,
            Enqueued.ALREADY_ACKED,
        ]
        assert second.flush(timeout=30)
        assert acks == [(0, 1)] and second.watermark(0) == 1


def test_full_partition_times_out_with_queue_full(backend: Backend, namespace: str) -> None:
    with workshaper.Producer(backend, namespace, max_in_queue=3) as producer:
        producer.enqueue_many([("a", "m", 1, o) for o in range(3)])
        started = time.monotonic()
        with pytest.raises(QueueFull, match=r"partition 1.*max_in_queue=3") as info:
            producer.enqueue_many(
                [("a", "m", 0, 0), ("a", "m", 1, 3), ("a", "m", 1, 4)], timeout=0.3
            )
        assert time.monotonic() - started >= 0.3
        assert info.value.partition == 1
        assert info.value.statuses == [Enqueued.ACCEPTED, None, None]  # partition 0 was not full
        assert partition_counts(backend, namespace, 1) == (3, 0)


def test_full_partition_blocks_until_acks_free_room(backend: Backend, namespace: str) -> None:
    release = threading.Event()

    def work(message: Any, partition: int, offset: int) -> None:
        release.wait(30)

    worker = workshaper.Worker(backend, namespace, work=work, concurrency=4).start()
    try:
        with workshaper.Producer(backend, namespace, max_in_queue=2) as producer:
            producer.enqueue_many([("a", "m", 0, 0), ("b", "m", 0, 1)])
            done = threading.Event()

            def enqueue_third() -> None:
                producer.enqueue("c", "m", 0, 2)
                done.set()

            t = threading.Thread(target=enqueue_third)
            t.start()
            assert not done.wait(0.5)  # blocked: the partition holds 2 unacked items
            assert sum(partition_counts(backend, namespace, 0)) == 2
            release.set()
            assert done.wait(30)
            t.join()
            assert producer.flush(timeout=30)
    finally:
        release.set()
        worker.stop(10)


def test_backpressure_is_per_partition(backend: Backend, namespace: str) -> None:
    with workshaper.Producer(backend, namespace, max_in_queue=1) as producer:
        producer.enqueue("a", "m", 0, 0)
        with pytest.raises(QueueFull):
            producer.enqueue("a", "m", 0, 1, timeout=0)
        assert producer.enqueue("a", "m", 1, 0, timeout=0) is Enqueued.ACCEPTED


def test_flush_times_out_while_items_are_unfinished(backend: Backend, namespace: str) -> None:
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue("a", "m", 0, 0)
        assert producer.flush(timeout=0.2) is False


def test_ack_that_raises_is_logged_and_offered_again(
    backend: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[int, int]] = []
    failures = 2

    def ack(partition: int, offset: int) -> None:
        nonlocal failures
        calls.append((partition, offset))
        if failures:
            failures -= 1
            raise RuntimeError("commit failed")

    with (
        caplog.at_level(logging.ERROR, logger="workshaper.ackloop"),
        workshaper.Producer(backend, namespace, ack=ack) as producer,
    ):
        producer.enqueue("a", "m", 0, 7)
        finish_everything(backend, namespace)
        assert producer.flush(timeout=30)
    assert calls == [(0, 7), (0, 7), (0, 7)]
    assert sum("ack(0, 7) raised" in r.getMessage() for r in caplog.records) == 2
    assert "commit failed" in caplog.text


def test_ack_each_calls_once_per_offset_in_order(backend: Backend, namespace: str) -> None:
    calls: list[tuple[int, int]] = []
    with workshaper.Producer(
        backend, namespace, ack=lambda p, o: calls.append((p, o)), ack_each=True
    ) as producer:
        producer.enqueue_many([(f"k{o}", "m", 0, o) for o in (2, 3, 5, 8)])
        finish_everything(backend, namespace)
        assert producer.flush(timeout=30)
    assert calls == [(0, 2), (0, 3), (0, 5), (0, 8)]


def test_ack_watermark_waits_for_the_lowest_unfinished_offset(
    backend: Backend, namespace: str
) -> None:
    gate = threading.Event()
    acks: list[int] = []

    def work(message: Any, partition: int, offset: int) -> None:
        if offset == 1:
            gate.wait(30)

    worker = workshaper.Worker(backend, namespace, work=work, concurrency=4).start()
    try:
        with workshaper.Producer(backend, namespace, ack=lambda p, o: acks.append(o)) as producer:
            producer.enqueue_many([("slow", "m", 0, 1), ("a", "m", 0, 2), ("b", "m", 0, 3)])
            # 2 and 3 finished early; 1 holds the watermark
            wait_for(lambda: partition_counts(backend, namespace, 0) == (1, 2))
            time.sleep(0.1)  # several ack ticks: none may pass offset 1
            assert acks == []
            gate.set()
            assert producer.flush(timeout=30)
    finally:
        gate.set()
        worker.stop(10)
    assert acks == [3]


@pytest.mark.parametrize("stalled_by", ["quiet checks", "ack failures"])
def test_a_partition_stalled_for_long_does_not_stop_the_acks_of_others(
    backend: Backend, namespace: str, stalled_by: str
) -> None:
    """A partition whose watermark has not moved for many checks (a blocked sub key: minutes of
    checks 100 ms apart), or whose ack kept raising (one retry a second), still gets a bounded
    back-off: its delay once overflowed a float, which failed every tick it was offered in and
    left the partitions after it in that tick unacked."""
    gate = threading.Event()
    acked: list[tuple[int, int]] = []

    def ack(partition: int, offset: int) -> None:
        if partition == 0 and stalled_by == "ack failures":
            raise RuntimeError("ack keeps failing")
        acked.append((partition, offset))

    def work(message: Any, partition: int, offset: int) -> None:
        if partition == 0 and stalled_by == "quiet checks":
            gate.wait(30)

    worker = workshaper.Worker(backend, namespace, work=work, concurrency=4).start()
    try:
        with workshaper.Producer(backend, namespace, ack=ack) as producer:
            loop = producer._ack_loop
            producer.enqueue("stuck", "m", 0, 0)
            counts = loop._quiet if stalled_by == "quiet checks" else loop._failures
            wait_for(lambda: counts.get(0, 0) > 0)
            with loop._changed:
                counts[0] = 5000  # as after minutes of checks that found nothing to ack
            for offset in range(5):
                producer.enqueue(f"k{offset}", "m", 1, offset)
                wait_for(lambda o=offset: (1, o) in acked, timeout=5)  # type: ignore[misc]
    finally:
        gate.set()
        worker.stop(10)


def test_closed_producer_refuses_enqueue(backend: Backend, namespace: str) -> None:
    producer = workshaper.Producer(backend, namespace)
    producer.close()
    producer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        producer.enqueue("a", "m", 0, 0)


def test_user_client_with_decode_responses_is_accepted(
    redis_server: RedisServer, namespace: str
) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    with workshaper.Producer(client, namespace) as producer:
        assert producer.enqueue("a", b"\xff\x00binary", 0, 0) is Enqueued.ACCEPTED
    client.close()


def test_unreachable_redis_names_host_and_port_and_masks_password() -> None:
    port = free_port()
    url = f"redis://user:s3cret@127.0.0.1:{port}/0"
    with pytest.raises(workshaper.BackendUnavailable) as info:
        workshaper.Producer(url)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert mask_url(url) == f"redis://user:****@127.0.0.1:{port}/0"


def test_wrong_password_is_a_clear_error() -> None:
    with RedisServer(password="right-pw") as server:
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(workshaper.BackendUnavailable, match="refused the credentials") as info:
            connect(url)
        assert "wrong-pw" not in str(info.value)
        assert f"127.0.0.1:{server.port}" in str(info.value)
        connect(server.url).close()  # the right one works


def test_ack_loop_backs_off_on_a_partition_that_makes_no_progress(namespace: str) -> None:
    with RedisServer() as server:
        client = server.client()
        with workshaper.Producer(server.url, namespace) as producer:
            producer.enqueue("stuck", "m", 0, 0)  # no worker: it never finishes
            client.config_resetstat()
            time.sleep(1.0)
            calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        # Without the back-off: one offer every 5 ms, ~200 in a second. With it: four at 5 ms,
        # then 10, 20, 40, 80, 100, 100, ... ms apart.
        assert 0 < calls <= 20


def test_a_caught_up_partition_is_first_offered_a_fraction_of_the_interval_after_an_enqueue(
    redis_server: RedisServer, namespace: str
) -> None:
    """What was just enqueued cannot have finished: an offer at once found nothing new, and
    the next came a whole ack_interval later, so at sparse enqueues an item waited ~4 ms of a
    5 ms interval for its ack. The first offer is now due FIRST_CHECK of the interval after
    the enqueue (read off the loop's schedule: nothing here waits for it)."""
    interval = 30.0  # no tick of this loop comes during the test
    with workshaper.Producer(redis_server.url, namespace, ack_interval=interval) as producer:
        loop = producer._ack_loop
        producer.enqueue("k", "m", 0, 0)
        with loop._changed:
            due, wait = loop._due()
        assert due == []
        assert wait is not None and 0 < wait <= interval * FIRST_CHECK


def test_new_producer_frees_a_partition_full_of_finished_items_nobody_acked(
    backend: Backend, namespace: str
) -> None:
    """The previous producer died after its items finished and after offering the watermark,
    but before acking it: the partition is full, and the new producer has nothing of its own
    to ack there. Its ack loop must still offer the partition, or it stays full for good."""
    from workshaper import scripts

    def broken_ack(partition: int, offset: int) -> None:
        raise RuntimeError("the consumer died")

    with workshaper.Producer(backend, namespace, max_in_queue=2, ack=broken_ack) as first:
        first.enqueue_many([("a", "m", 0, 0), ("b", "m", 0, 1)])
        finish_everything(backend, namespace)
    pkeys = NamespaceKeys(namespace).partition(0)
    assert run_one(backend, lambda b: scripts.offer_watermark(b, pkeys, False)).watermark == 1
    with workshaper.Producer(backend, namespace) as reader:
        assert reader.watermark(0) is None
    acks: list[tuple[int, int]] = []
    recorded: list[tuple[int, int]] = []
    with workshaper.Producer(
        backend,
        namespace,
        max_in_queue=2,
        ack=lambda p, o: acks.append((p, o)),
        recorded=lambda p, o: recorded.append((p, o)),
    ) as second:
        with pytest.raises(QueueFull):
            second.enqueue("c", "m", 0, 2, timeout=0)  # full now; its ack loop looks at it
        assert second.enqueue("c", "m", 0, 2, timeout=30) is Enqueued.ACCEPTED
        # No wait needed: ack returns before the watermark is recorded, and only the recording
        # frees room. recorded is called after it, so the enqueue may return first: wait.
        assert acks[0] == (0, 1)
        wait_for(lambda: recorded[:1] == [(0, 1)])


def test_close_records_an_ack_whose_commit_failed(namespace: str) -> None:
    """ack returned, then Redis went down before the watermark was recorded: close() retries
    the commit until Redis is back instead of dropping it."""
    with RedisServer(appendonly=True, appendfsync="always") as server:
        worker = workshaper.Worker(server.url, namespace, work=lambda m, p, o: None).start()
        killed = threading.Event()

        def ack(partition: int, offset: int) -> None:
            if not killed.is_set():
                server.kill()  # Redis crashes right after the ack returned
                # Only now: a restart begun while kill() runs would have its new process
                # killed and leave the old one running.
                killed.set()

        try:
            producer = workshaper.Producer(server.url, namespace, ack=ack)
            producer.enqueue("a", "m", 0, 0)
            assert killed.wait(30)
            restart = threading.Thread(target=server.start)
            restart.start()  # comes back while close() retries
            assert producer.close(timeout=60) is True
            restart.join()
            meta = NamespaceKeys(namespace).partition(0).meta
            with server.client() as client:
                assert client.hget(meta, "acked") == b"0"
        finally:
            worker.stop(10)


def test_ack_each_delivery_stops_at_a_raising_ack_and_skips_what_was_delivered() -> None:
    """The ``ack_each`` delivery the ack loop and the embedded Manager share: in order, from
    above what ``ack`` already returned for, stopping at the first call that fails."""
    offer = Offer(acked=3, watermark=9, in_queue=6, offsets=[4, 5, 7, 9])
    calls: list[int] = []

    def ack_until(last_good: int) -> Callable[[int], bool]:
        def call(offset: int) -> bool:
            calls.append(offset)
            return offset <= last_good

        return call

    assert ack_each_offset(ack_until(99), offer, delivered=3) == 9
    assert calls == [4, 5, 7, 9]
    calls.clear()
    # 7 fails: 5 is what was accepted; 9 is not tried past the failure.
    assert ack_each_offset(ack_until(5), offer, delivered=3) == 5
    assert calls == [4, 5, 7]
    calls.clear()
    # Offsets up to 5 were delivered before (their commit failed): not called again, and 5
    # still counts as accepted when the rest fails.
    assert ack_each_offset(ack_until(5), offer, delivered=5) == 5
    assert calls == [7]
    calls.clear()
    # Nothing new accepted: None, not the acked watermark.
    assert ack_each_offset(ack_until(0), offer, delivered=3) is None
    assert calls == [4]
