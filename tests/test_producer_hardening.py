"""Producer under hostile conditions: Redis down or out of memory, close during a wait, bad text,
re-sent batches, the embedded backend shared by a producer and a worker."""

from __future__ import annotations

import math
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
from workshaper.connection import Backend, connect
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


@pytest.mark.parametrize("field", ["partition", "offset"])
def test_huge_int_partition_or_offset_names_the_field(
    backend: Backend, namespace: str, field: str
) -> None:  # found by tests/test_fuzz.py: the error message itself raised ValueError
    item: list[object] = ["k", "m", 0, 0]
    item[2 if field == "partition" else 3] = -(10**5000)
    with (
        workshaper.Producer(backend, namespace) as producer,
        pytest.raises(InvalidInput, match=f"{field} must be an int .* of 16610 bits"),
    ):
        producer.enqueue(*item)  # type: ignore[arg-type]


def test_closing_a_producer_leaves_a_shared_backend_open(
    redis_server: RedisServer, namespace: str
) -> None:  # found by tests/test_fuzz.py: the worker on the same Backend died
    backend = connect(redis_server.url)
    runs: list[int] = []
    worker = workshaper.Worker(backend, namespace, work=lambda m, p, o: runs.append(o)).start()
    try:
        for partition in range(3):
            with workshaper.Producer(backend, namespace) as producer:
                producer.enqueue("k", "m", partition, 0)
                assert producer.flush(timeout=30)
            assert not backend._closed  # closing it dropped the worker's connections
        assert worker._thread is not None and worker._thread.is_alive()
        assert backend.client.ping()
    finally:
        worker.stop(10)
        backend.close()
    assert runs == [0, 0, 0]


# --- options found wrong by tests/test_fuzz.py (issue 8, item 14) -------------------------------


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"ack_interval": math.nan}, "ack_interval must be a finite number"),
        ({"ack_interval": math.inf}, "ack_interval must be a finite number"),
        ({"ack_interval": 3601.0}, "ack_interval must be at most 60"),
        ({"ack_each": "no"}, "ack_each must be True or False"),
        ({"max_message_bytes": 2**40}, "max_message_bytes must be at most"),
        ({"namespace": "a\ud800"}, "namespace is not valid UTF-8"),
    ],
)
def test_producer_options_that_would_break_it_later_are_refused(
    backend: Backend, options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        workshaper.Producer(backend, **options)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"lease": math.nan}, "lease must be a finite number"),
        ({"lease": math.inf}, "lease must be a finite number"),
        ({"lease": 1e300}, "lease must be at most 86400"),
        ({"retry_backoff": math.nan}, "retry_backoff must be a finite number"),
        ({"retry_backoff": math.inf}, "retry_backoff must be a finite number"),
        ({"concurrency": 10**9}, "concurrency must be at most 10000"),
        ({"batch_size": 10**30}, "batch_size must be at most 100000"),
        ({"max_attempts": 10**30}, "max_attempts must be at most 1e"),
        ({"prefetch": 10**9}, "prefetch must be at most 100000"),
        ({"name": 5}, "name must be a str"),
        ({"name": "w\ud800"}, "name is not valid UTF-8"),
        ({"name": "two words"}, "without whitespace"),
        ({"on_exhausted": ["block"]}, "on_exhausted must be"),
    ],
)
def test_worker_options_that_would_kill_it_later_are_refused(
    backend: Backend, options: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        workshaper.Worker(backend, work=lambda m, p, o: None, **options)


def test_manager_with_a_bad_worker_option_leaves_no_thread(backend: Backend) -> None:
    before = set(threading.enumerate())
    with pytest.raises(InvalidInput, match="lease"):
        workshaper.Manager(lambda m, p, o: None, redis=backend, lease=-1)
    with pytest.raises(TypeError, match="no_such_option"):
        workshaper.Manager(lambda m, p, o: None, redis=backend, no_such_option=1)
    assert set(threading.enumerate()) <= before


# --- URLs found wrong by tests/test_fuzz.py (issue 8, item 14) ----------------------------------


@pytest.mark.parametrize(
    ("tail", "fragment"),
    [
        ("/0?password=\ud800", "not valid UTF-8"),
        ("/0?client_name=a b", "client_name='a b' is not valid"),
        ("/0?socket_timeout=nan", "socket_timeout='nan' is not valid"),
        ("/0?socket_timeout=-1", "socket_timeout='-1' is not valid"),
        ("/0?socket_timeout=inf", "socket_timeout='inf' is not valid"),
        ("/0?db=-1", "db='-1' is not valid"),
        ("/0?protocol=9", "protocol='9' is not valid"),
        ("/99999", "refused the connection: DB index is out of range"),
    ],
)
def test_url_settings_that_fail_later_are_named_now(
    redis_server: RedisServer, tail: str, fragment: str
) -> None:
    with pytest.raises(BackendUnavailable, match=fragment):
        connect(f"redis://127.0.0.1:{redis_server.port}{tail}")


def test_url_errors_never_show_the_password() -> None:
    for url in ("://:pw@127.0.0.1", "x:pw@host", "redis://u:pw@127.0.0.1:1/0?x=\ud800"):
        with pytest.raises(BackendUnavailable) as info:
            connect(url)
        assert "pw" not in str(info.value), url


def test_url_with_a_host_idna_cannot_encode_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="cannot connect to Redis at"):
        connect("redis://\x80host:1/0")
