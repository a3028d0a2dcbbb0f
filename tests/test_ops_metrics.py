"""Prometheus metrics scraped over HTTP from real processes: the namespace exporter (and, below,
the worker's own endpoint), checked against a known state."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import workshaper
from workshaper_tools.testing import RedisServer, free_port, stop_processes

from .conftest import wait_for

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(samples: Samples, name: str) -> list[float]:
    return [v for (n, _), v in samples.items() if n == name]


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


@pytest.fixture
def process_log(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    stop_processes(procs)


def start_exporter(
    url: str, namespace: str, tmp_path: Path, process_log: list[subprocess.Popen[bytes]]
) -> int:
    """Start ``workshaper exporter`` on a free port (logging to exporter.log); the port."""
    port = free_port()
    with (tmp_path / "exporter.log").open("wb") as log:
        process_log.append(
            subprocess.Popen(
                [
                    str(BIN / "workshaper"),
                    "exporter",
                    "--redis",
                    url,
                    "--namespace",
                    namespace,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
    return port


def test_exporter_reports_a_known_state(
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    process_log: list[subprocess.Popen[bytes]],
) -> None:
    producer = workshaper.Producer(redis_server.url, namespace)
    producer.enqueue_many(
        [("a", "m", 0, 10), ("a", "m", 0, 11), ("b", "m", 0, 12), ("c", "m", 4, 7)]
    )
    port = start_exporter(redis_server.url, namespace, tmp_path, process_log)
    samples: Samples = wait_for(lambda: try_scrape(port), timeout=30, interval=0.1)

    def value(name: str, partition: int | None = None) -> float:
        labels = [("namespace", namespace)]
        if partition is not None:
            labels.append(("partition", str(partition)))
        return samples[(name, tuple(sorted(labels)))]

    assert value("workshaper_partition_highest_offset", 0) == 12
    assert value("workshaper_partition_lag", 0) == 3  # offsets 10..12, none acked
    assert value("workshaper_partition_unacked_items", 0) == 3
    assert value("workshaper_partition_pending_sub_keys", 0) == 2
    assert value("workshaper_partition_runnable_sub_keys", 0) == 2
    assert value("workshaper_partition_leased_sub_keys", 0) == 0
    assert value("workshaper_partition_dead_letters", 0) == 0
    assert value("workshaper_partition_oldest_unfinished_age_seconds", 0) >= 0
    assert value("workshaper_partition_runnable_sub_keys", 4) == 1
    assert value("workshaper_runnable_sub_keys") == 3
    assert value("workshaper_partitions") == 2
    assert value("workshaper_workers") == 0
    assert value("workshaper_exporter_up") == 1
    # No watermark acked yet: no sample rather than a made-up one.
    assert not [k for k in samples if k[0] == "workshaper_partition_acked_watermark"]
    # A sub key is never a label.
    assert all(
        set(dict(labels)) <= {"namespace", "partition"}
        for name, labels in samples
        if name.startswith("workshaper_")
    )

    # Work it off: the numbers follow.
    worker = workshaper.Worker(redis_server.url, namespace, work=lambda m, p, o: None).start()
    try:
        assert producer.flush(timeout=30)
        samples = wait_for(
            lambda: (
                (s := scrape(port))
                and s[("workshaper_workers", (("namespace", namespace),))] == 1
                and s
            )
        )
        assert value("workshaper_partition_acked_watermark", 0) == 12
        assert value("workshaper_partition_lag", 0) == 0
        assert value("workshaper_runnable_sub_keys") == 0
    finally:
        worker.stop(10)
        producer.close()


def test_worker_metrics_endpoint_reports_a_known_state(
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    process_log: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        producer.enqueue_many(
            [(f"k{i}", {"do": "ok"}, 0, i) for i in range(5)]
            + [("poison", {"do": "fail"}, 0, 5), ("slow", {"do": "hang"}, 1, 0)]
        )
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        process_log.append(
            subprocess.Popen(
                [
                    str(BIN / "workshaper-worker"),
                    "tests.ops_handlers:work",
                    "--redis",
                    redis_server.url,
                    "--namespace",
                    namespace,
                    "--max-attempts",
                    "2",
                    "--retry-backoff",
                    "0.01",
                ],
                env={
                    **os.environ,
                    "WS_OPS_DIR": str(tmp_path),
                    "WORKSHAPER_METRICS_PORT": str(port),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        )
        log.close()
        labels = None

        def ready() -> Samples | None:
            samples = try_scrape(port)
            if not samples:
                return None
            done = [
                v for (n, _), v in samples.items() if n == "workshaper_worker_items_finished_total"
            ]
            dead = [
                v
                for (n, _), v in samples.items()
                if n == "workshaper_worker_items_dead_lettered_total"
            ]
            return samples if done == [5.0] and dead == [1.0] else None

        samples: Samples = wait_for(ready, timeout=60, interval=0.1)
        [labels] = {lb for (n, lb) in samples if n == "workshaper_worker_items_finished_total"}
        assert dict(labels)["namespace"] == namespace and dict(labels)["worker"]

        def value(name: str, extra: tuple[tuple[str, str], ...] = ()) -> float:
            return samples[(name, tuple(sorted((*labels, *extra))))]

        assert value("workshaper_worker_items_failed_total") == 2
        assert value("workshaper_worker_items_retried_total") == 1
        assert value("workshaper_worker_items_dead_lettered_total") == 1
        assert value("workshaper_worker_leases_claimed_total") >= 7  # one per sub key
        assert value("workshaper_worker_leases_lost_total") == 0
        assert value("workshaper_worker_redis_errors_total") == 0
        assert value("workshaper_worker_in_flight_leases") >= 1  # "slow" hangs
        assert value("workshaper_worker_handler_duration_seconds_count") == 7  # 5 ok, 2 failed
        assert value("workshaper_worker_round_trip_seconds_count") > 0
        assert value("workshaper_worker_claim_batch_size_count") > 0
        assert value("workshaper_worker_handler_duration_seconds_bucket", (("le", "+Inf"),)) == 7
        # Conventions: counters end in _total, durations in _seconds; no sub key in a label.
        for name, sample_labels in samples:
            if name.startswith("workshaper_worker_"):
                assert set(dict(sample_labels)) <= {"namespace", "worker", "le"}

        (tmp_path / "release").touch()
        assert producer.flush(timeout=30)
        samples = wait_for(
            lambda: (
                (s := scrape(port))
                and s[("workshaper_worker_items_finished_total", labels)] == 6
                and s
            )
        )
    finally:
        producer.close()


def test_producer_collector_on_the_users_registry(
    redis_server: RedisServer, namespace: str
) -> None:
    registry = CollectorRegistry()
    worker = workshaper.Worker(redis_server.url, namespace, work=lambda m, p, o: None).start()
    producer = workshaper.Producer(redis_server.url, namespace)
    try:
        registry.register(producer.metrics_collector())
        assert producer.enqueue_many([("a", "m", 2, 0), ("a", "m", 2, 1)])
        assert producer.flush(timeout=30)
        assert producer.enqueue("a", "m", 2, 1) == workshaper.Enqueued.ALREADY_ACKED
        samples: Samples = {}
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        ns = ("namespace", namespace)
        assert samples[("workshaper_producer_items_total", (ns, ("status", "accepted")))] == 2
        assert samples[("workshaper_producer_items_total", (ns, ("status", "already_acked")))] == 1
        assert samples[("workshaper_producer_items_total", (ns, ("status", "duplicate")))] == 0
        assert samples[("workshaper_producer_acked_watermark", (ns, ("partition", "2")))] == 1
        assert samples[("workshaper_producer_ack_errors_total", (ns,))] == 0
    finally:
        producer.close()
        worker.stop(10)


def test_exporter_reports_redis_down_and_recovers(
    fresh_redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
    process_log: list[subprocess.Popen[bytes]],
) -> None:
    server = fresh_redis_server
    with workshaper.Producer(server.url, namespace) as producer:
        producer.enqueue("a", "m", 0, 0)
    port = start_exporter(server.url, namespace, tmp_path, process_log)
    up = ("workshaper_exporter_up", (("namespace", namespace),))
    assert wait_for(lambda: try_scrape(port), interval=0.1)[up] == 1
    server.kill()
    samples = wait_for(lambda: (s := scrape(port)) and s[up] == 0 and s, interval=0.2)
    assert not by_name(samples, "workshaper_partition_lag")  # no stale numbers while down
    server.restart()
    samples = wait_for(lambda: (s := scrape(port)) and s[up] == 1 and s, interval=0.2)
    assert by_name(samples, "workshaper_partition_unacked_items") == [1.0]


def test_worker_metrics_port_in_use_is_one_clear_line(redis_server: RedisServer) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "workshaper-worker"),
                "tests.ops_handlers:work",
                "--redis",
                redis_server.url,
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=ROOT,
        )
    assert result.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


def test_a_scrape_costs_a_few_commands_per_partition_whatever_the_sub_keys(
    fresh_redis_server: RedisServer, namespace: str
) -> None:
    """8 partitions with 4,000 sub keys: one exporter scrape (and one status snapshot) reads no
    sub key's list; Redis's own command counts (scripts' inner calls included) say so."""
    from workshaper.ops.exporter import exporter_registry
    from workshaper.ops.inspection import Inspector

    server = fresh_redis_server
    with workshaper.Producer(server.url, namespace, max_in_queue=10_000) as producer:
        producer.enqueue_many([(f"k{i}", "m", i % 8, i) for i in range(4000)])
    registry = exporter_registry(server.url, [namespace])
    inspector = Inspector(server.url, namespace)
    try:
        with server.client() as client:
            for read in (lambda: generate_latest(registry), lambda: inspector.snapshot(60.0)):
                client.config_resetstat()
                read()
                stats = client.info("commandstats")
                calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
                calls.pop("config|resetstat", None)
                assert sum(calls.values()) <= 8 * 20, calls
                assert calls.get("llen", 0) <= 8 * 2, calls  # accepted and ready, per partition
    finally:
        inspector.close()
