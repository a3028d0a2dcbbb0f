"""Shared fixtures: a private redis-server per session, the embedded backend, namespaces."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workshaper
from workshaper.connection import Backend, connect, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper_tools.testing import RedisServer, redis_server_binary
from workshaper_tools.testing.redis_cluster import RedisCluster, redis_cli_binary


def _need_redis_server() -> None:
    if redis_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must run the integration tests")
        pytest.skip("redis-server is not installed")


def _need_cluster_tools() -> None:
    _need_redis_server()
    if redis_cli_binary() is None:
        pytest.skip("redis-cli is not installed")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters, no replicas, for the whole session (tests use their own
    namespaces; tests/test_cluster.py, the Kafka bridge's cluster test)."""
    _need_cluster_tools()
    cluster = RedisCluster(masters=3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (never the shared one on 6379)."""
    _need_redis_server()
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone, with AOF appendfsync always (restartable)."""
    _need_redis_server()
    server = RedisServer(appendonly=True, appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(params=["embedded", "embedded-lua", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The same tests on the embedded backend (the hot scripts transcribed to Python, the rest
    in Lua), on it with every script in Lua, and on a real redis-server."""
    if request.param == "embedded":
        b = embedded_backend()
    elif request.param == "embedded-lua":
        b = embedded_backend(EmbeddedServer(native_scripts=False))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        b = connect(server.url)
    yield b
    b.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def enqueue_retrying(
    producer: workshaper.Producer, chunk: list[tuple[Any, ...]], *, max_failures: int, what: str
) -> int:
    """Enqueue, sending the chunk again while ``what`` (Redis, the cluster) fails over (written
    items come back as duplicates); fail the test after ``max_failures`` failed attempts.
    Returns how many attempts failed."""
    failures = 0
    while True:
        try:
            producer.enqueue_many(chunk, timeout=60)
            return failures
        except workshaper.BackendUnavailable as exc:
            failures += 1
            logging.getLogger(__name__).info("enqueue failed during the failover (%s); again", exc)
            assert failures < max_failures, f"{what} did not come back"
            time.sleep(0.1)


def partition_counts(backend: Backend, namespace: str, partition: int) -> tuple[int, int]:
    """(unfinished, finished-but-unacked) items of a partition, read from Redis."""
    from workshaper.admin import Admin

    for status in Admin(backend, namespace).status():
        if status.partition == partition:
            return status.pending, status.finished_unacked
    return 0, 0
