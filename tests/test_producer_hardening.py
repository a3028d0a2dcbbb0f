"""Producer under hostile conditions: Redis down or out of memory, close during a wait, bad text,
re-sent batches, the embedded backend shared by a producer and a worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import workshaper
import workshaper.admin
from workshaper import (
    BackendUnavailable,
    Enqueued,
    InvalidInput,
    ProducerClosed,
    RedisOutOfMemory,
)
from workshaper.connection import Backend
from workshaper_tools.testing import RedisServer

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


# --- wrong error types (issue 8, item 11) -----------------------------------------------------


def test_enqueue_to_a_new_partition_while_redis_is_down_is_backend_unavailable(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    with workshaper.Producer(fresh_redis_server.url, namespace) as producer:
        assert producer.enqueue("a", "m", 0, 0) is Enqueued.ACCEPTED
        fresh_redis_server.kill()
        # Partition 1 is new to this producer: it is registered in the same round trip.
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{fresh_redis_server.port}"):
            producer.enqueue("a", "m", 1, 0)
        with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{fresh_redis_server.port}"):
            producer.watermark(0)


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (("\ud800", "m", 0, 0), r"sub_key .*not valid UTF-8 .*surrogate"),
        (("k", "\udfff", 0, 0), r"message .*not valid UTF-8 .*surrogate"),
        (("k", {"text": "a\ud83dz"}, 0, 0), r"message .*not valid UTF-8 .*surrogate"),
        ((10**5000, "m", 0, 0), r"sub_key .*int .*digits"),
    ],
)
def test_text_that_cannot_be_encoded_names_the_field_and_reason(
    backend: Backend, namespace: str, item: tuple[object, ...], fragment: str
) -> None:
    with workshaper.Producer(backend, namespace) as producer:
        with pytest.raises(InvalidInput, match=fragment) as info:
            producer.enqueue(*item)  # type: ignore[arg-type]
        assert "tuple" not in str(info.value)
        with pytest.raises(InvalidInput, match=f"item 1: {fragment}"):
            producer.enqueue_many([("k", "m", 0, 0), item])  # type: ignore[list-item]
        assert wait_for(lambda: producer.watermark(0) is None)
        assert list(backend.client.scan_iter(match=f"ws:{{{namespace}*")) == []


def test_deeply_nested_message_is_invalid_input(backend: Backend, namespace: str) -> None:
    message: object = []
    for _ in range(100_000):
        message = [message]
    with (
        workshaper.Producer(backend, namespace) as producer,
        pytest.raises(InvalidInput, match=r"message .*nested too deeply"),
    ):
        producer.enqueue("k", message, 0, 0)


# --- close while an enqueue waits (issue 8, item 7) ---------------------------------------------


def test_close_wakes_an_enqueue_waiting_on_a_full_partition(
    backend: Backend, namespace: str
) -> None:
    producer = workshaper.Producer(backend, namespace, max_in_queue=1)
    assert producer.enqueue("a", "m", 0, 0) is Enqueued.ACCEPTED  # no worker: stays unacked
    waiting = threading.Event()
    wait_commit = producer._ack_loop.wait_commit

    def noting_wait(partition: int, seen: int, timeout: float) -> None:
        waiting.set()
        wait_commit(partition, seen, timeout)

    producer._ack_loop.wait_commit = noting_wait  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def enqueue() -> None:
        try:
            producer.enqueue_many([("b", "m", 1, 0), ("a", "m", 0, 1)])
        except BaseException as exc:  # recorded for the assertions below
            raised.append(exc)

    enqueuer = threading.Thread(target=enqueue, daemon=True)
    enqueuer.start()
    assert waiting.wait(30)
    closer = threading.Thread(target=producer.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() hangs while an enqueue waits for room"
    enqueuer.join(30)
    assert not enqueuer.is_alive()
    assert len(raised) == 1
    assert isinstance(raised[0], ProducerClosed)
    assert isinstance(raised[0], RuntimeError)  # as before, for an enqueue after close
    assert "closed while" in str(raised[0]) and "partition 0" in str(raised[0])
    assert raised[0].statuses == [Enqueued.ACCEPTED, None]  # partition 1's item was written
    with pytest.raises(ProducerClosed, match="closed"):
        producer.enqueue("a", "m", 0, 2)


# --- Redis at maxmemory (issue 8, item 8, producer side) ----------------------------------------


def test_enqueue_at_maxmemory_raises_a_clear_error_and_writes_nothing(namespace: str) -> None:
    with RedisServer(extra=["--maxmemory-policy", "noeviction"]) as server:
        client = server.client()
        with workshaper.Producer(server.url, namespace) as producer:
            assert producer.enqueue("a", "m", 0, 0) is Enqueued.ACCEPTED
            client.config_set("maxmemory", "1")  # every write is now refused
            with pytest.raises(RedisOutOfMemory) as info:
                producer.enqueue_many([("a", "m", 0, 1), ("b", "m", 1, 0)])
            text = str(info.value)
            assert f"127.0.0.1:{server.port}" in text
            assert "maxmemory" in text and "nothing was written" in text
            assert "partition 0" in text and "partition 1" in text
            assert info.value.statuses == [None, None]
            assert client.llen(f"ws:{{{namespace}:0}}:accepted") == 1
            client.config_set("maxmemory", "0")  # memory freed: the same batch goes in
            assert producer.enqueue_many([("a", "m", 0, 1), ("b", "m", 1, 0)]) == [
                Enqueued.ACCEPTED,
                Enqueued.ACCEPTED,
            ]
            # Partition 1's registration was refused too: it is in the reapers' index now.
            assert client.smembers(f"ws:{{{namespace}}}:partitions") == {b"0", b"1"}
            assert client.zscore(f"ws:{{{namespace}}}:wake", "1") is not None
        client.close()


# --- a re-sent enqueue (issue 8, item 13) -------------------------------------------------------


@pytest.fixture
def reply_lost_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The next batch holding an enqueue runs on the server, then its replies are lost and
    Batch sends it again, as it does after a connection broke mid-read."""
    from workshaper.batch import Batch
    from workshaper.lua_scripts import load_script

    send = Batch._send
    enqueue_sha = load_script("enqueue_items").sha
    armed = [1]

    def send_twice(self: Batch, commands: list[tuple[Any, ...]]) -> list[Any]:
        replies = send(self, commands)
        if armed[0] and any(c[:2] == ("EVALSHA", enqueue_sha) for c in commands):
            armed[0] = 0
            replies = send(self, commands)  # the re-send after a lost reply
        return replies

    monkeypatch.setattr(Batch, "_send", send_twice)
    yield armed


def test_a_re_sent_enqueue_reports_what_it_accepted(
    backend: Backend, namespace: str, reply_lost_once: list[int]
) -> None:
    with workshaper.Producer(backend, namespace) as producer:
        items = [("a", "m", 0, 0), ("b", "m", 0, 1), ("a", "m", 1, 5)]
        assert producer.enqueue_many(items) == [Enqueued.ACCEPTED] * 3
        assert reply_lost_once == [0]  # the loss did happen
        reply_lost_once[0] = 1  # the general path (a gap filled late, a duplicate) too
        assert producer.enqueue_many([("a", "m", 0, 3), ("c", "m", 0, 2), ("a", "m", 0, 1)]) == [
            Enqueued.ACCEPTED,
            Enqueued.ACCEPTED,
            Enqueued.DUPLICATE,
        ]
        assert reply_lost_once == [0]
        # A later enqueue of the same offsets is a real duplicate.
        assert producer.enqueue_many(items) == [Enqueued.DUPLICATE] * 3


def test_manager_counts_items_of_a_re_sent_enqueue(reply_lost_once: list[int]) -> None:
    reply_lost_once[0] = 0
    with workshaper.Manager(work=lambda m, p, o: None) as manager:
        reply_lost_once[0] = 1
        assert manager.enqueue("a", "m", 0, 0) is Enqueued.ACCEPTED
        assert manager.flush(timeout=30)
        assert manager.total_enqueued == 1
        assert manager.total_acked == 1


# --- None = the embedded backend, one per process (issue 8, item 13) ----------------------------


def test_producer_none_and_worker_none_share_the_embedded_backend(namespace: str) -> None:
    runs: list[int] = []
    worker = workshaper.Worker(None, namespace, work=lambda m, p, o: runs.append(o)).start()
    try:
        with workshaper.Producer(None, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, 0), ("a", "m", 0, 1), (None, "m", 1, 7)])
            assert producer.flush(timeout=30), "the worker never saw the producer's items"
            assert producer.watermark(0) == 1 and producer.watermark(1) == 7
    finally:
        worker.stop(10)
    assert sorted(runs) == [0, 1, 7]
    # An Admin(None) reads the same state; a Manager(redis=None) keeps its own backend.
    admin = workshaper.admin.Admin(None, namespace)
    assert admin.partitions() == [0, 1]
    admin.close()
    with workshaper.Manager(work=lambda m, p, o: None, namespace=namespace) as manager:
        assert manager.enqueue("a", "m", 0, 0) is Enqueued.ACCEPTED  # not ALREADY_ACKED
