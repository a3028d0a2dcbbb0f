"""Regression tests of issue 8 for the worker: an item's failure is its own, a crash window
ends with its items, a worker never dies of a state it finds in Redis."""

from __future__ import annotations

import logging

import pytest

import workshaper
from workshaper import codec
from workshaper.admin import Admin
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys

from .test_worker import Recorder


def test_a_corrupt_entry_at_a_batch_boundary_is_dead_lettered_and_the_worker_lives(
    backend: Backend, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Item 4: with batch_size=1 the corrupt entry becomes the head when its predecessor is
    # recorded, inside complete_items.
    rec = Recorder()
    pkeys = NamespaceKeys(namespace).partition(0)
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, i) for i in range(4)])
        backend.client.lset(pkeys.queue(codec.encode_sub_key("a", 0)), 1, b"garbage")
        worker = workshaper.Worker(backend, namespace, work=rec, batch_size=1).start()
        try:
            with caplog.at_level(logging.ERROR):
                assert producer.flush(timeout=30)
        finally:
            assert worker.stop(10)
    assert rec.order("a") == [0, 2, 3]
    [dead] = Admin(backend, namespace).dead_letters(0)
    assert dead.offset is None and dead.error_type == "CorruptItem"
    assert "crashed" not in caplog.text
