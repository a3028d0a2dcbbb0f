"""Per-process Prometheus metrics of workers and producers (prometheus_client).

The hot path stays cheap: the worker already keeps plain int counters (``Worker.stats``), which
a collector reads at scrape time; the only per-item cost is one ``perf_counter`` pair and one
histogram observation for the handler duration, and only when metrics are on. The coordinator
reports its round trips and claim sizes (a few per second at most per turn).

Names follow Prometheus conventions: ``workshaper_worker_..._total`` counters,
``..._seconds`` histograms. Labels are ``namespace`` and ``worker`` (the worker id): bounded by
the process, never a sub key.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workshaper.worker import Worker


class MeteredProducer(Protocol):
    """What ProducerMetrics reads of a Producer (which imports this module: no import back)."""

    @property
    def namespace(self) -> str: ...
    @property
    def stats(self) -> dict[str, int]: ...
    def acked_watermarks(self) -> dict[int, int]: ...


log = logging.getLogger(__name__)

#: Handler durations: 0.5 ms to 5 min.
HANDLER_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Coordinator round trips: 0.1 ms to 2.5 s.
ROUND_TRIP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5)
#: Leases taken per claim call.
CLAIM_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)

#: (metric name without _total, help, Worker.stats key) of every worker counter.
WORKER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("workshaper_worker_items_finished", "Items that succeeded (recorded in Redis)", "finished"),
    ("workshaper_worker_items_failed", "Failed attempts of items", "failed"),
    ("workshaper_worker_items_retried", "Failed attempts that will be retried", "retried"),
    (
        "workshaper_worker_items_dead_lettered",
        "Items given up after their last attempt",
        "dead_lettered",
    ),
    (
        "workshaper_worker_items_blocked",
        "Items that blocked their sub key (on_exhausted=block)",
        "blocked",
    ),
    ("workshaper_worker_leases_claimed", "Leases taken", "claimed"),
    (
        "workshaper_worker_leases_lost",
        "Leases lost: a write was fenced (another worker owns the sub key)",
        "fenced",
    ),
    ("workshaper_worker_leases_reaped", "Expired leases of others this worker reaped", "reaped"),
    (
        "workshaper_worker_redis_errors",
        "Round trips that failed on a Redis connection error",
        "redis_errors",
    ),
)

#: (metric name without _total, help, Producer.stats key) of the producer's plain counters.
PRODUCER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "workshaper_producer_full_waits",
        "Times an enqueue waited for room in a full partition (backpressure)",
        "full_waits",
    ),
    (
        "workshaper_producer_ack_errors",
        "Calls of the ack callback that raised (offered again later)",
        "ack_errors",
    ),
)


class ThreadHistogram:
    """A histogram the executor threads observe without a lock: each thread counts into its
    own buckets, and a scrape adds them up. (prometheus_client's Histogram takes a lock and
    walks every bucket per observation: 15% of a no-op worker's throughput.)"""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = list(buckets)
        self._local = threading.local()
        self._parts: list[list[float]] = []  # per thread: bucket counts, then the sum
        self._lock = threading.Lock()  # only to add a thread's part

    def observe(self, value: float) -> None:
        try:
            part = self._local.part
        except AttributeError:
            part = self._local.part = [0.0] * (len(self.bounds) + 2)
            with self._lock:
                self._parts.append(part)
        part[bisect_left(self.bounds, value)] += 1
        part[-1] += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """(cumulative buckets with "+Inf", sum of values)."""
        with self._lock:
            parts = [list(p) for p in self._parts]
        width = len(self.bounds) + 1
        counts = [sum(p[i] for p in parts) for i in range(width)]
        total = sum(p[-1] for p in parts)
        cumulative, running = [], 0.0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative, total


class WorkerMetrics(Collector):
    """The metrics of one Worker: attach with ``WorkerMetrics(worker).register(registry)``
    before ``worker.run()``."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        labels = {"namespace": worker.namespace, "worker": worker.id}
        self._labels = labels
        names = list(labels)
        self._own = CollectorRegistry(auto_describe=False)  # the histograms, collected below
        self.handler_seconds = ThreadHistogram(HANDLER_BUCKETS)
        self.round_trip_seconds = Histogram(
            "workshaper_worker_round_trip_seconds",
            "Seconds of one coordinator round trip to Redis",
            names,
            buckets=ROUND_TRIP_BUCKETS,
            registry=self._own,
        ).labels(**labels)
        self.claim_size = Histogram(
            "workshaper_worker_claim_batch_size",
            "Leases taken by one claim call",
            names,
            buckets=CLAIM_BUCKETS,
            registry=self._own,
        ).labels(**labels)
        worker.instrument(self)

    # The worker's observer interface (workshaper.worker.state.Observer)

    def handler(self, seconds: float) -> None:
        self.handler_seconds.observe(seconds)

    def round_trip(self, seconds: float) -> None:
        self.round_trip_seconds.observe(seconds)

    def claimed(self, count: int) -> None:
        self.claim_size.observe(count)

    # The collector

    def register(self, registry: CollectorRegistry = REGISTRY) -> WorkerMetrics:
        registry.register(self)
        return self

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = dict(self._worker.stats)
        names, values = list(self._labels), list(self._labels.values())
        for name, text, key in WORKER_COUNTERS:
            family = CounterMetricFamily(name, text, labels=names)
            family.add_metric(values, stats.get(key, 0))
            yield family
        in_flight = GaugeMetricFamily(
            "workshaper_worker_in_flight_leases",
            "Leases held now: sub keys running or read ahead",
            labels=names,
        )
        in_flight.add_metric(values, self._worker.leases_held)
        yield in_flight
        concurrency = GaugeMetricFamily(
            "workshaper_worker_concurrency", "Sub keys the worker runs at once", labels=names
        )
        concurrency.add_metric(values, self._worker.concurrency)
        yield concurrency
        buckets, total = self.handler_seconds.snapshot()
        handler = HistogramMetricFamily(
            "workshaper_worker_handler_duration_seconds",
            "Seconds a handler call took (success or failure)",
            labels=names,
        )
        handler.add_metric(values, buckets, total)
        yield handler
        yield from self._own.collect()


class ProducerMetrics(Collector):
    """The metrics of one Producer: register on the user's registry with
    ``registry.register(producer.metrics_collector())``."""

    def __init__(self, producer: MeteredProducer) -> None:
        self._producer = producer

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        producer = self._producer
        ns = producer.namespace
        stats = producer.stats
        items = CounterMetricFamily(
            "workshaper_producer_items",
            "Items enqueued, by outcome (accepted, duplicate, already_acked)",
            labels=["namespace", "status"],
        )
        for status in ("accepted", "duplicate", "already_acked"):
            items.add_metric([ns, status], stats.get(status, 0))
        yield items
        for name, text, key in PRODUCER_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["namespace"])
            family.add_metric([ns], stats.get(key, 0))
            yield family
        acked = GaugeMetricFamily(
            "workshaper_producer_acked_watermark",
            "The last watermark this producer's ack callback returned for, per partition",
            labels=["namespace", "partition"],
        )
        for partition, offset in sorted(producer.acked_watermarks().items()):
            acked.add_metric([ns, str(partition)], offset)
        yield acked


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)


class MeteredBridge(Protocol):
    """What BridgeMetrics reads of a KafkaBridge: its counters."""

    stats: dict[str, int]


#: (metric name without _total, help, KafkaBridge.stats key) of every bridge counter.
BRIDGE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("workshaper_bridge_records", "Kafka records consumed", "records"),
    ("workshaper_bridge_commits", "Offset commits to Kafka", "commits"),
    ("workshaper_bridge_skipped_commits", "Commits skipped (nothing new)", "skipped_commits"),
    ("workshaper_bridge_commit_failures", "Offset commits that failed", "commit_failures"),
    ("workshaper_bridge_pauses", "Partitions paused because they were full", "pauses"),
    ("workshaper_bridge_resumes", "Paused partitions resumed", "resumes"),
    ("workshaper_bridge_rewinds", "Partitions rewound to re-read records", "rewinds"),
)


class BridgeMetrics(Collector):
    """The counters of a Kafka bridge (``workshaper kafka-bridge --metrics-port N``), read at
    scrape time from ``KafkaBridge.stats``: nothing is added to the bridge's hot path."""

    def __init__(self, bridge: MeteredBridge, group: str) -> None:
        self._bridge = bridge
        self._group = group

    def register(self, registry: CollectorRegistry = REGISTRY) -> BridgeMetrics:
        registry.register(self)
        return self

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = dict(self._bridge.stats)
        for name, text, key in BRIDGE_COUNTERS:
            family = CounterMetricFamily(name, text, labels=["group"])
            family.add_metric([self._group], stats.get(key, 0))
            yield family
        items = CounterMetricFamily(
            "workshaper_bridge_items",
            "Records enqueued, by outcome (accepted, duplicate, already_acked)",
            labels=["group", "status"],
        )
        for status in ("accepted", "duplicate", "already_acked"):
            items.add_metric([self._group, status], stats.get(status, 0))
        yield items
