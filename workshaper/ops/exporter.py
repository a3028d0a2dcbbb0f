"""``workshaper exporter``: per-partition Prometheus metrics of one or more namespaces.

Each scrape reads every partition with one read-only script call, all in one round trip per
namespace (``Inspector.partition_views``), plus the partition index and the worker registry:
a few commands, never a scan. Labels are ``namespace`` and ``partition`` only: a sub key is
never a label, so cardinality stays bounded by the partition count.

``workshaper_runnable_sub_keys`` is the autoscaling number: sub keys that have items and no
lease, so an extra worker could start them right now (see docs/metrics.md for a KEDA
ScaledObject on it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from workshaper import codec
from workshaper.connection import mask_url
from workshaper.ops.inspection import Inspector, PartitionView
from workshaper.signals import install_stop_handlers

log = logging.getLogger(__name__)

#: (metric name, help, the PartitionView field) of every per-partition gauge.
PARTITION_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("workshaper_partition_acked_watermark", "Acked watermark (last offset acked)", "acked"),
    ("workshaper_partition_highest_offset", "Highest accepted offset", "highest"),
    (
        "workshaper_partition_lag",
        "Highest accepted offset minus the acked watermark (offsets, gaps included)",
        "lag",
    ),
    (
        "workshaper_partition_unacked_items",
        "Accepted items not acked yet, finished or not (what backpressure counts)",
        "unacked_items",
    ),
    (
        "workshaper_partition_pending_sub_keys",
        "Sub keys with unfinished items",
        "pending_sub_keys",
    ),
    (
        "workshaper_partition_runnable_sub_keys",
        "Sub keys with items and no lease: work an extra worker could start now",
        "runnable_sub_keys",
    ),
    ("workshaper_partition_leased_sub_keys", "Sub keys held by a worker", "leased_sub_keys"),
    (
        "workshaper_partition_expired_leases",
        "Leases past their deadline (holder gone; a reaper will requeue them)",
        "expired_leases",
    ),
    (
        "workshaper_partition_blocked_sub_keys",
        "Sub keys blocked for an operator (on_exhausted=block)",
        "blocked_sub_keys",
    ),
    ("workshaper_partition_dead_letters", "Dead letters kept", "dead_letters"),
    (
        "workshaper_partition_oldest_unfinished_age_seconds",
        "Seconds since the lowest unfinished offset was accepted (0 when none)",
        "oldest_unfinished_age",
    ),
)


class NamespaceCollector(Collector):
    """Collects the per-partition gauges of some namespaces at scrape time."""

    def __init__(self, redis: Any, namespaces: Sequence[str]) -> None:
        if not namespaces:
            raise ValueError("the exporter needs at least one namespace")
        self._inspectors = [Inspector(redis, codec.check_namespace(ns)) for ns in namespaces]
        self._lock = threading.Lock()  # scrapes may overlap; one reader per connection set

    def close(self) -> None:
        for inspector in self._inspectors:
            inspector.close()

    def describe(self) -> Iterable[Metric]:
        return []  # collected live; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        gauges = {
            name: GaugeMetricFamily(name, text, labels=["namespace", "partition"])
            for name, text, _ in PARTITION_GAUGES
        }
        runnable = GaugeMetricFamily(
            "workshaper_runnable_sub_keys",
            "Runnable sub keys of the namespace: the autoscaling (KEDA) number",
            labels=["namespace"],
        )
        partitions = GaugeMetricFamily(
            "workshaper_partitions", "Partitions that had items", labels=["namespace"]
        )
        workers = GaugeMetricFamily(
            "workshaper_workers", "Workers in the registry", labels=["namespace"]
        )
        up = GaugeMetricFamily(
            "workshaper_exporter_up",
            "1 if the last read of the namespace worked",
            labels=["namespace"],
        )
        with self._lock:
            for inspector in self._inspectors:
                ns = inspector.namespace
                try:
                    views = inspector.partition_views()
                    worker_count = len(inspector.workers())
                except Exception as exc:  # a scrape reports the failure, never raises
                    log.warning("exporter: reading namespace %s failed: %s", ns, exc)
                    up.add_metric([ns], 0)
                    continue
                up.add_metric([ns], 1)
                self._add(gauges, ns, views)
                runnable.add_metric([ns], sum(v.runnable_sub_keys for v in views))
                partitions.add_metric([ns], len(views))
                workers.add_metric([ns], worker_count)
        yield from gauges.values()
        yield from (runnable, partitions, workers, up)
        yield GaugeMetricFamily(
            "workshaper_exporter_scrape_duration_seconds",
            "Seconds the last scrape took to read Redis",
            value=time.monotonic() - started,
        )

    @staticmethod
    def _add(gauges: dict[str, GaugeMetricFamily], ns: str, views: list[PartitionView]) -> None:
        for view in views:
            labels = [ns, str(view.partition)]
            for name, _, attr in PARTITION_GAUGES:
                value = getattr(view, attr)
                if value is None:
                    if attr != "oldest_unfinished_age":
                        continue  # no watermark yet: no sample rather than a fake one
                    value = 0.0
                gauges[name].add_metric(labels, float(value))


def exporter_registry(redis: Any, namespaces: Sequence[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NamespaceCollector(redis, namespaces))
    return registry


def serve_exporter(redis: Any, namespaces: Sequence[str], host: str, port: int) -> None:
    """Serve /metrics until SIGTERM or SIGINT."""
    registry = exporter_registry(redis, namespaces)
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info(
        "exporter on http://%s:%d/metrics for %s (redis %s)",
        host,
        port,
        ", ".join(namespaces),
        mask_url(redis) if isinstance(redis, str) else "client",
    )
    print(f"workshaper exporter: http://{host}:{port}/metrics", flush=True)
    stop = threading.Event()
    install_stop_handlers(stop.set, stop.is_set, forced_exit_note="nothing is lost")
    stop.wait()
    server.shutdown()
    thread.join(5)
