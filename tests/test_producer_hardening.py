"""Producer under hostile conditions: Redis down or out of memory, close during a wait, bad text,
re-sent batches, the embedded backend shared by a producer and a worker."""

from __future__ import annotations

import pytest

import workshaper
from workshaper import BackendUnavailable, Enqueued, InvalidInput
from workshaper.connection import Backend
from workshaper.testing import RedisServer

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
