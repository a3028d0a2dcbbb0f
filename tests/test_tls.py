"""TLS: rediss:// against a redis-server with a TLS port, a CA and certificates made here by
openssl (server-only TLS, mutual TLS, and a client that trusts the wrong CA)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import workshaper
from workshaper.connection import TLSFiles, connect, with_tls
from workshaper.errors import BackendUnavailable
from workshaper_tools.testing import RedisServer, free_port

from .certs import Certs, make_certs
from .conftest import _need_redis_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_certs(tmp_path_factory.mktemp("tls"))


def _tls_server(certs: Certs, *, mutual: bool) -> RedisServer:
    """A redis-server with a TLS port (its plain port stays, for the readiness check)."""
    _need_redis_server()
    server = RedisServer(
        extra=[
            "--tls-port", str(free_port()),
            "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes" if mutual else "no",
        ]
    )  # fmt: skip
    server.tls_port = int(server.extra[1])  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[RedisServer]:
    with _tls_server(certs, mutual=False) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[RedisServer]:
    with _tls_server(certs, mutual=True) as server:
        yield server


def _url(server: RedisServer, **query: Path | str) -> str:
    url = f"rediss://127.0.0.1:{server.tls_port}/0"  # type: ignore[attr-defined]
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


def test_rediss_with_a_ca_runs_producer_and_worker(
    tls_server: RedisServer, certs: Certs, namespace: str
) -> None:
    url = _url(tls_server, ssl_ca_certs=certs.ca)
    backend = connect(url)
    assert backend.where.endswith("(TLS)")
    backend.close()
    done: list[int] = []
    with workshaper.Producer(url, namespace) as producer:
        producer.enqueue_many([("k", f"m{o}", 0, o) for o in range(20)])
        worker = workshaper.Worker(url, namespace, work=lambda m, p, o: done.append(o))
        worker.start()
        try:
            assert producer.flush(timeout=60)
        finally:
            worker.stop()
    assert sorted(done) == list(range(20))


def test_mutual_tls_needs_the_client_certificate(mtls_server: RedisServer, certs: Certs) -> None:
    url = _url(
        mtls_server,
        ssl_ca_certs=certs.ca,
        ssl_certfile=certs.client_cert,
        ssl_keyfile=certs.client_key,
    )
    backend = connect(url)
    assert backend.client.ping()
    backend.close()
    with pytest.raises(BackendUnavailable, match="cannot reach Redis"):
        connect(_url(mtls_server, ssl_ca_certs=certs.ca))  # no client certificate


def test_tls_files_from_options_as_the_cli_gives_them(
    mtls_server: RedisServer, certs: Certs
) -> None:
    tls = TLSFiles(str(certs.ca), str(certs.client_cert), str(certs.client_key))
    assert str(certs.client_key) not in repr(tls)
    url = with_tls(_url(mtls_server), tls)
    connect(url).close()
    with pytest.raises(BackendUnavailable, match="ssl_ca_certs is given twice"):
        with_tls(_url(mtls_server, ssl_ca_certs=certs.other_ca), tls)


def test_a_server_signed_by_another_ca_is_a_clear_error(
    tls_server: RedisServer, certs: Certs
) -> None:
    url = _url(tls_server, ssl_ca_certs=certs.other_ca)
    with pytest.raises(BackendUnavailable) as info:
        connect(url)
    message = str(info.value)
    assert f"cannot reach Redis at 127.0.0.1:{tls_server.tls_port} (TLS)" in message  # type: ignore[attr-defined]
    assert "certificate verify failed" in message


def test_bad_tls_settings_are_named(tls_server: RedisServer, certs: Certs, tmp_path: Path) -> None:
    plain = f"redis://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={certs.ca}"
    with pytest.raises(BackendUnavailable, match="ssl_ca_certs needs TLS: use a rediss://"):
        connect(plain)
    with pytest.raises(BackendUnavailable, match=r"ssl_ca_certs file .*missing.pem. does not"):
        connect(_url(tls_server, ssl_ca_certs=tmp_path / "missing.pem"))
    secret = tmp_path / "secret-key-name.key"
    with pytest.raises(BackendUnavailable, match=r"ssl_keyfile .TLS key. file does not") as info:
        connect(_url(tls_server, ssl_certfile=certs.client_cert, ssl_keyfile=secret))
    assert "secret-key-name" not in str(info.value)
    with pytest.raises(BackendUnavailable, match="ssl_cert_reqs must be one of"):
        connect(_url(tls_server, ssl_cert_reqs="maybe"))
    with pytest.raises(BackendUnavailable, match="unknown query parameter 'ssl_ca_cert'"):
        connect(_url(tls_server, ssl_ca_cert=certs.ca))
    with pytest.raises(BackendUnavailable, match="ssl_keyfile needs ssl_certfile"):
        connect(_url(tls_server, ssl_keyfile=certs.client_key))


BIN = Path(sys.executable).parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_tls_flags_and_environment(
    mtls_server: RedisServer, certs: Certs, namespace: str, tmp_path: Path
) -> None:
    url = _url(mtls_server)
    files = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert)]
    files += ["--tls-key", str(certs.client_key)]
    status = _run(str(BIN / "workshaper"), "status", "--redis", url, *files)
    assert status.returncode == 0 and "namespace default" in status.stdout, status.stderr
    env = {
        "WORKSHAPER_TLS_CA": str(certs.ca),
        "WORKSHAPER_TLS_CERT": str(certs.client_cert),
        "WORKSHAPER_TLS_KEY": str(certs.client_key),
        "WORKSHAPER_REDIS_URL": url,
    }
    assert _run(str(BIN / "workshaper"), "status", env=env).returncode == 0
    # A worker process with the flags runs items.
    proc = subprocess.Popen(
        [str(BIN / "workshaper-worker"), "workshaper_tools.testing.journal:work", "--redis", url,
         "--namespace", namespace, *files],
        env={**os.environ, "WS_JOURNAL_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        tls = TLSFiles(str(certs.ca), str(certs.client_cert), str(certs.client_key))
        with workshaper.Producer(with_tls(url, tls), namespace) as producer:
            producer.enqueue_many([("k", "m", 0, o) for o in range(5)])
            assert producer.flush(timeout=60)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_cli_wrong_ca_exits_2_with_one_line_without_the_key_path(
    mtls_server: RedisServer, certs: Certs
) -> None:
    result = _run(
        str(BIN / "workshaper-worker"), "workshaper_tools.testing.journal:work",
        "--redis", _url(mtls_server), "--tls-ca", str(certs.other_ca),
        "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "certificate verify failed" in result.stderr
    assert str(certs.client_key) not in result.stderr
    plain = _run(str(BIN / "workshaper"), "status", "--redis", mtls_server.url, "--tls-ca", "x")
    assert plain.returncode == 2 and "ssl_ca_certs needs TLS: use a rediss://" in plain.stderr


def test_kafka_bridge_takes_the_tls_flags(certs: Certs) -> None:
    from workshaper.cli.common import redis_url
    from workshaper.kafka.cli import parser

    args = parser().parse_args(
        ["--bootstrap", "k:9092", "--group", "g", "--topic", "t", "--redis", "rediss://h:6380/0",
         "--tls-ca", str(certs.ca), "--tls-verify", "required"]
    )  # fmt: skip
    assert redis_url(args) == (
        f"rediss://h:6380/0?ssl_ca_certs={str(certs.ca).replace('/', '%2F')}&ssl_cert_reqs=required"
    )
