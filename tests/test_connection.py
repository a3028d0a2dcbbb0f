"""Reaching Redis: URL forms, unix sockets, transient errors of a failover, masked secrets."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel

import workshaper
from workshaper.batch import Batch, Reply
from workshaper.connection import connect, is_transient, mask_url
from workshaper.errors import BackendUnavailable
from workshaper.keys import NamespaceKeys
from workshaper.worker.waker import Waker
from workshaper_tools.testing import RedisServer, free_port

from .conftest import _need_redis_server, wait_for


@pytest.fixture(scope="module")
def replica() -> Iterator[RedisServer]:
    """A read-only replica of a master that does not exist: every write answers READONLY,
    as the old primary does after a failover demoted it."""
    _need_redis_server()
    with RedisServer(extra=["--replicaof", "127.0.0.1", str(free_port())]) as server:
        yield server


def test_unix_socket_url_connects(tmp_path: Path) -> None:
    _need_redis_server()
    sock = tmp_path / "redis.sock"
    with RedisServer(extra=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
        backend = connect(f"unix://{sock}")
        assert backend.client.ping()
        assert backend.where == f"unix:{sock}"
        backend.close()


def test_batch_on_a_demoted_primary_is_transient_not_a_script_error(
    replica: RedisServer,
) -> None:
    """READONLY (and LOADING, TRYAGAIN, ...) arrive as redis-py exception classes whose text no
    longer starts with the code: the batch must still see them as "not now"."""
    backend = connect(replica.url)
    batch = Batch(backend)
    reply: Reply[int] = batch.command("ZADD", b"ws:{t}:wake", "NX", 1, 0)
    with pytest.raises(redis.ConnectionError, match="not ready"):
        batch.execute()
    with pytest.raises(RuntimeError):  # no reply was set: the caller sends it all again
        reply.get()
    backend.close()


def test_a_batch_is_one_socket_write(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command of a batch goes out in one write: handed a list, redis-py makes a
    syscall per command, which doubled the cost of each producer's enqueue (script + bell)."""
    backend = connect(redis_server.url)
    writes: list[int] = []
    sendall = socket.socket.sendall  # the socket module redis.connection writes through

    def counted(sock: Any, data: Any, *args: Any) -> Any:
        writes.append(len(data))
        return sendall(sock, data, *args)

    batch = Batch(backend)
    replies: list[Reply[bytes]] = [batch.command("PING") for _ in range(3)]
    batch.command("SET", b"ws:{t}:one-write", b"x")
    backend.client.ping()  # connect before counting
    monkeypatch.setattr(socket.socket, "sendall", counted)
    batch.execute()
    monkeypatch.undo()
    assert [r.get() for r in replies] == [b"PONG"] * 3
    assert len(writes) == 1
    backend.client.delete(b"ws:{t}:one-write")
    backend.close()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (redis.ConnectionError("reset"), True),
        (redis.TimeoutError("slow"), True),
        (redis.exceptions.ReadOnlyError("You can't write", status_code="READONLY"), True),
        (redis.exceptions.BusyLoadingError("loading", status_code="LOADING"), True),
        (redis.exceptions.TryAgainError("again", status_code="TRYAGAIN"), True),
        (redis.exceptions.MasterDownError("down", status_code="MASTERDOWN"), True),
        (redis.ResponseError("BUSY Redis is busy running a script"), True),
        (redis.ResponseError("WRONGTYPE Operation against a key"), False),
        (redis.exceptions.NoPermissionError("no", status_code="NOPERM"), False),
        (redis.AuthenticationError("invalid username-password pair"), False),
        (ValueError("x"), False),
    ],
)
def test_transient_errors(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_waker_survives_a_demoted_primary(replica: RedisServer) -> None:
    backend = connect(replica.url)
    calls = 0
    real = backend.client.bzpopmin

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    backend.client.bzpopmin = counting  # type: ignore[method-assign]
    stop = threading.Event()
    waker = Waker(backend, NamespaceKeys("t"), queue.SimpleQueue(), stop, free_slots=1)
    waker.start()
    try:
        wait_for(lambda: calls >= 3)  # it kept trying after READONLY answers
        assert waker._threads[0].is_alive()
    finally:
        stop.set()
        waker.wake_up()
        waker._threads[0].join(10)
        backend.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw1@127.0.0.1:6379/0", "redis://u:****@127.0.0.1:6379/0"),
        ("redis://:pw1@h/0", "redis://:****@h/0"),
        ("redis://h:1/0", "redis://h:1/0"),
        (
            "redis+sentinel://u:pw1@a:1,b:2/svc/3?sentinel_password=pw2&socket_timeout=1",
            "redis+sentinel://u:****@a:1,b:2/svc/3?sentinel_password=****&socket_timeout=1",
        ),
        (
            "rediss://h:1/0?ssl_ca_certs=/etc/ca.pem&ssl_keyfile=/k/pw3.key&password=pw4",
            "rediss://h:1/0?ssl_ca_certs=/etc/ca.pem&ssl_keyfile=****&password=****",
        ),
    ],
)
def test_mask_url_hides_passwords_and_the_key_path(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_secrets_never_reach_logs_errors_or_reprs(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A URL full of secrets that cannot connect: the error, every log line (redis-py's too)
    and the reprs name host and port, never the passwords or the key path."""
    caplog.set_level(logging.DEBUG)
    key = tmp_path / "key-path-secret.key"
    cert = tmp_path / "cert.pem"
    key.write_text("not a key")
    cert.write_text("not a cert")
    port = free_port()
    urls = [
        f"redis://user:pw-secret-1@127.0.0.1:{port}/0",
        f"rediss://user:pw-secret-1@127.0.0.1:{port}/0?ssl_certfile={cert}&ssl_keyfile={key}",
        f"redis+sentinel://user:pw-secret-1@127.0.0.1:{port}/svc?sentinel_password=pw-secret-2",
        f"redis://127.0.0.1:{port}/0?password=pw-secret-1&bogus=1",
    ]
    secrets = ("pw-secret", "key-path-secret")
    for url in urls:
        with pytest.raises(BackendUnavailable) as info:
            workshaper.Producer(url, "t")
        for text in (str(info.value), repr(info.value), caplog.text):
            assert not any(s in text for s in secrets), text
        backend = connect(url, check=False) if "bogus" not in url else None
        if backend is not None:
            assert not any(s in repr(backend) for s in secrets), repr(backend)
            backend.close()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://h:1/0", "the scheme must be one of"),
        ("redis+sentinel://h:1", "the path must be /service_name or /service_name/db"),
        ("redis+sentinel://h:1/svc/x", "the database 'x' is not a number"),
        ("redis+sentinel://h:x/svc", "sentinel address 'h:x' is not host:port"),
        ("redis://h:1/0?sentinel_password=x", "unknown query parameter 'sentinel_password'"),
        ("redis://h:1/0?socket_timeout=soon", "socket_timeout='soon' is not valid"),
    ],
)
def test_bad_urls_are_named(url: str, fragment: str) -> None:
    with pytest.raises(BackendUnavailable, match="bad Redis URL") as info:
        connect(url)
    assert fragment in str(info.value)


def test_sentinel_url_builds_a_master_client() -> None:
    backend = connect(
        "rediss+sentinel://u:pw@a:1,b/svc/2?sentinel_password=spw&ssl_cert_reqs=none",
        check=False,
    )
    pool = backend.client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "svc"
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("u", "pw", 2)
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    sentinel_kwargs = pool.sentinel_manager.sentinel_kwargs
    assert sentinel_kwargs["password"] == "spw" and sentinel_kwargs["ssl"] is True
    assert backend.where == "sentinel service 'svc' via a:1,b:26379 (TLS)"
    backend.close()


def test_producer_on_a_demoted_primary_raises_backend_unavailable(
    replica: RedisServer,
) -> None:
    """A failover in progress is "enqueue again later" for the caller, on every path of an
    enqueue (the partition index write included), never a raw redis-py error."""
    with (
        workshaper.Producer(replica.url, "t") as producer,
        pytest.raises(BackendUnavailable, match="enqueue it again"),
    ):
        producer.enqueue("k", "m", 0, 0)


def test_metrics_never_show_the_password(namespace: str) -> None:
    """The worker's metrics and the exporter's name namespaces, partitions and workers: never
    the Redis URL or its password."""
    from prometheus_client import CollectorRegistry, generate_latest

    from workshaper.ops.exporter import exporter_registry
    from workshaper.ops.metrics import WorkerMetrics

    _need_redis_server()
    with RedisServer(password="metrics-pw-secret") as server:
        url = f"redis://default:metrics-pw-secret@127.0.0.1:{server.port}/0"
        with workshaper.Producer(url, namespace) as producer:
            producer.enqueue("k", "m", 0, 0)
        worker = workshaper.Worker(url, namespace, work=lambda m, p, o: None)
        registry = CollectorRegistry()
        WorkerMetrics(worker).register(registry)
        texts = [generate_latest(registry), generate_latest(exporter_registry(url, [namespace]))]
        assert all(b"workshaper_" in t and b"metrics-pw-secret" not in t for t in texts)
        assert namespace.encode() in texts[1]
