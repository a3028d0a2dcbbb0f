"""Prometheus metrics scraped over HTTP from real processes: the namespace exporter (and, below,
the worker's own endpoint), checked against a known state."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import workshaper
from workshaper_tools.testing import RedisServer, free_port

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


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


@pytest.fixture
def process_log(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


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
    port = free_port()
    log = open(tmp_path / "exporter.log", "wb")  # noqa: SIM115
    process_log.append(
        subprocess.Popen(
            [
                str(BIN / "workshaper"),
                "exporter",
                "--redis",
                redis_server.url,
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
    log.close()
    samples = wait_for(lambda: try_scrape(port), timeout=30, interval=0.1)

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
