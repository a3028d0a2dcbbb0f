"""Sentinel: a primary, a replica and three sentinels on loopback, owned by the test; the
primary is SIGKILLed mid-run and the fleet goes on with the promoted replica."""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.sentinel

import workshaper
from workshaper.admin import Admin
from workshaper_tools.testing import RedisServer, free_port, stop_processes
from workshaper_tools.testing.checker import Ack, PlannedItem, check
from workshaper_tools.testing.journal import read_journal

from .certs import Certs, make_certs
from .conftest import _need_redis_server, enqueue_retrying, wait_for
from .fleet import fleet

SERVICE = "wsprimary"


class SentinelSet:
    """A primary, one replica and three sentinels (quorum 2) in one temp dir. The primary is
    down for the sentinels after 2 s without an answer: shorter, and a busy 2-core machine
    sees failovers nobody asked for.

    With ``certs``, every server and sentinel also listens with TLS, replication and the
    sentinels' own connections use it, and ``url`` names the TLS ports; the plain ports stay
    for this class's readiness checks. ``password`` protects the data servers (the sentinels
    know it), ``sentinel_password`` the sentinels.
    """

    def __init__(
        self,
        down_after_ms: int = 2000,
        *,
        certs: Certs | None = None,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="workshaper-sentinel-"))
        self.certs = certs
        self.password = password
        self.sentinel_password = sentinel_password
        tls = self._tls_args()
        self.primary = RedisServer(data_dir=self.dir / "primary", password=password)
        self.primary_tls_port = free_port()
        self.primary.extra = [*tls, "--tls-port", str(self.primary_tls_port)] if certs else []
        self.replica = RedisServer(data_dir=self.dir / "replica", password=password)
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self._data_port(self.primary))]
        if certs:
            self.replica.extra += [*tls, "--tls-port", str(free_port())]
        if password:
            self.replica.extra += ["--masterauth", password]
        self.down_after_ms = down_after_ms
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_tls_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _tls_args(self) -> list[str]:
        if self.certs is None:
            return []
        return [
            "--tls-cert-file", str(self.certs.server_cert),
            "--tls-key-file", str(self.certs.server_key),
            "--tls-ca-cert-file", str(self.certs.ca),
            "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip

    def _data_port(self, server: RedisServer) -> int:
        """The port replicas, sentinels and clients use: the TLS one with certs."""
        if self.certs is None:
            return server.port
        return int(server.extra[server.extra.index("--tls-port") + 1])

    @property
    def url(self) -> str:
        scheme = "rediss+sentinel" if self.certs else "redis+sentinel"
        ports = self.sentinel_tls_ports if self.certs else self.sentinel_ports
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        auth = f":{self.password}@" if self.password else ""
        query = []
        if self.sentinel_password:
            query.append(f"sentinel_password={self.sentinel_password}")
        if self.certs:
            query.append(f"ssl_ca_certs={self.certs.ca}")
        return f"{scheme}://{auth}{hosts}/{SERVICE}/0" + ("?" + "&".join(query) if query else "")

    def start(self) -> SentinelSet:
        for server in (self.primary, self.replica):
            server.data_dir.mkdir()
            server.start()
        for i, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{i}.conf"  # sentinel rewrites it: one file each
            text = (
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {self.dir}/sentinel-{i}.log\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self._data_port(self.primary)} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            if self.password:
                text += f"sentinel auth-pass {SERVICE} {self.password}\n"
            if self.sentinel_password:
                text += f"requirepass {self.sentinel_password}\n"
                text += f"sentinel sentinel-pass {self.sentinel_password}\n"
            if self.certs:
                args = self._tls_args()
                text += f"tls-port {self.sentinel_tls_ports[i]}\n"
                text += "".join(
                    f"{k[2:]} {v}\n" for k, v in zip(args[::2], args[1::2], strict=True)
                )
            conf.write_text(text)
            self.sentinels.append(
                subprocess.Popen(
                    [self.primary.binary, str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for(self._ready, timeout=60, interval=0.1)
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, socket_timeout=2, decode_responses=True, password=self.sentinel_password
        )

    def _ready(self) -> bool:
        """Every sentinel sees the primary, the replica and the two other sentinels."""
        for port in self.sentinel_ports:
            try:
                with self._sentinel(port) as s:
                    state = s.sentinel_master(SERVICE)
            except (redis.ConnectionError, redis.ResponseError):
                return False
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        with self.replica.client(decode_responses=True) as c:
            return bool(c.info("replication")["master_link_status"] == "up")

    def primary_port(self) -> int:
        with self._sentinel(self.sentinel_ports[0]) as s:
            _host, port = s.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self) -> None:
        stop_processes(self.sentinels, timeout=10)
        self.primary.stop()
        self.replica.stop()
        for path in sorted(self.dir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        self.dir.rmdir()


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    _need_redis_server()
    s = SentinelSet()
    try:
        yield s.start()
    finally:
        s.stop()


def test_sentinel_url_reaches_the_primary(sentinel_set: SentinelSet, namespace: str) -> None:
    done: list[int] = []
    with workshaper.Producer(sentinel_set.url, namespace) as producer:
        assert "sentinel service" in producer.backend.where
        producer.enqueue_many([("k", "m", 0, o) for o in range(10)])
        worker = workshaper.Worker(sentinel_set.url, namespace, work=lambda m, p, o: done.append(o))
        worker.start()
        try:
            assert producer.flush(timeout=60)
        finally:
            worker.stop()
    assert done == list(range(10))  # one sub key: in order
    # A user's Sentinel master client works too (and keeps returning str to its owner).
    sentinel = redis.sentinel.Sentinel([("127.0.0.1", sentinel_set.sentinel_ports[0])])
    client = sentinel.master_for(SERVICE, decode_responses=True)
    assert Admin(client, namespace).status()[0].acked == 9
    client.close()
    sentinel.close()


def test_fleet_survives_a_primary_sigkill(
    sentinel_set: SentinelSet, namespace: str, tmp_path: Path
) -> None:
    """A producer and 3 worker processes; the primary is SIGKILLed mid-run; sentinel promotes
    the replica; producer and workers go on there. Async replication can lose the writes of the
    last moments, so (as after any failover) the producer's partitions are then replayed from
    the start: dedupe skips what Redis still has, and every item runs."""
    rng = random.Random(10)
    partitions = 4
    next_offset = [0] * partitions
    items: list[tuple[Any, ...]] = []
    for i in range(6000):
        p = rng.randrange(partitions)
        next_offset[p] += 1
        items.append((f"k{rng.randrange(100)}", {"i": i}, p, next_offset[p]))
    acks: list[Ack] = []
    lock = threading.Lock()

    def ack(source: str) -> Any:
        def record(p: int, o: int) -> None:
            with lock:
                acks.append(Ack(p, o, time.monotonic(), source))

        return record

    old_primary = sentinel_set.primary_port()
    producer_admin = Admin(sentinel_set.url, namespace)
    failed_enqueues = 0
    killed_at = 0.0
    lost_writes_seen = False
    with fleet(sentinel_set.url, namespace, tmp_path, WS_WORK_DELAY_MAX="0.002") as f:
        for _ in range(3):
            f.start(lease=2.0, concurrency=4)
        with workshaper.Producer(
            sentinel_set.url, namespace, max_in_queue=100_000, ack=ack("first")
        ) as producer:
            for start in range(0, len(items), 200):
                try:
                    failed_enqueues += enqueue_retrying(
                        producer, items[start : start + 200], max_failures=200, what="Redis"
                    )
                except workshaper.RedisLostWrites:
                    # The promoted replica lacks writes the old primary acknowledged: this
                    # producer stops; the replay below re-enqueues from the start.
                    lost_writes_seen = True
                    break
                if start == 2000:
                    # Let every worker be up (one starting now would fail fast: exit 2) and
                    # items be in flight, then kill the primary.
                    wait_for(lambda: len(producer_admin.workers()) == 3, timeout=60)
                    wait_for(lambda: len(read_journal(tmp_path)) > 500, timeout=60)
                    # No failover yet (a busy machine can make sentinels see a slow primary
                    # as down): the kill below is the only one.
                    assert sentinel_set.primary_port() == old_primary
                    sentinel_set.primary.kill()
                    killed_at = time.monotonic()
                time.sleep(0.02)
            wait_for(lambda: sentinel_set.primary_port() != old_primary, timeout=60)
            first_flushed = not lost_writes_seen and producer.flush(timeout=30)
        # A restarted consumer replays its partitions (from offset 0 here; in Kafka, from the
        # committed offset before the failover): only what the failover lost is accepted.
        with workshaper.Producer(
            sentinel_set.url, namespace, max_in_queue=100_000, ack=ack("replay")
        ) as producer:
            statuses = producer.enqueue_many(items, timeout=60)
            assert producer.flush(timeout=120)
        assert all(p.poll() is None for p in f.procs), f.logs()[-3000:]
    producer_admin.close()
    events = read_journal(tmp_path)
    report = check([PlannedItem(s, p, o) for s, _, p, o in items], events, acks)
    # Acks need Redis: the first one after the kill is the first write on the new primary.
    recovered = min(a.at for a in acks if a.at > killed_at) - killed_at
    reaccepted = sum(s is workshaper.Enqueued.ACCEPTED for s in statuses)
    print(
        f"sentinel failover: {report.summary()}; first ack {recovered:.2f}s after the kill;"
        f" enqueue calls failed during the failover "
        f"{failed_enqueues}; first producer flushed: {first_flushed}; items accepted again "
        f"on replay (lost by the failover) {reaccepted}; lost writes detected by the producer "
        f"{lost_writes_seen}; watermark violations "
        f"{len(report.watermark_violations)}"
    )
    assert not report.lost, report.lost[:5]
    assert report.finished == len(items)
    assert sentinel_set.primary_port() != old_primary


def test_sentinel_with_tls_and_passwords(tmp_path: Path, namespace: str) -> None:
    """rediss+sentinel://: TLS to the sentinels and to the primary they name, the primary's
    password from the URL, the sentinels' own from sentinel_password; none of them shown."""
    _need_redis_server()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    s = SentinelSet(
        certs=make_certs(tmp_path), password="data-pw-1", sentinel_password="sentinel-pw-2"
    )
    try:
        s.start()
        done: list[int] = []
        with workshaper.Producer(s.url, namespace) as producer:
            where = producer.backend.where
            assert where.endswith("(TLS)") and str(s.sentinel_tls_ports[0]) in where
            assert "pw-" not in where + repr(producer.backend)
            producer.enqueue_many([("k", "m", 0, o) for o in range(10)])
            worker = workshaper.Worker(s.url, namespace, work=lambda m, p, o: done.append(o))
            worker.start()
            try:
                assert producer.flush(timeout=60)
            finally:
                worker.stop()
        assert done == list(range(10))
        # Without the sentinels' password no primary is found: a clear error, no secret.
        wrong = s.url.replace("sentinel-pw-2", "nope")
        with pytest.raises(workshaper.BackendUnavailable, match="cannot reach Redis") as info:
            workshaper.Producer(wrong, namespace)
        assert "pw-" not in str(info.value) and "nope" not in str(info.value)
    finally:
        s.stop()
