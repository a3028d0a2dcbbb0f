"""The ``cluster`` fault kind: a fleet on a Redis Cluster of 3 masters + 3 replicas.

One run starts the cluster (``testing.redis_cluster.RedisCluster``, node timeout 2 s), the
chaos producer process and ``workers`` ``workshaper-worker`` processes running the journaling
handler, all on a ``redis+cluster://`` URL. Faults alternate:

    migrate   move the slot of an active partition to another master live (IMPORTING,
              MIGRATING, MIGRATE a key at a time: clients meet ASK and TRYAGAIN)
    kill      SIGKILL a master; wait until its replica is promoted; start the killed node
              again on its data dir, so it rejoins as the new master's replica (later kills
              still find a replica)

Then it stops the producer, waits until every accepted item is acked, and audits the journal,
the acks and Redis with the checker (lost, order, watermark). Replication is asynchronous: a
kill can lose acknowledged writes, as the ``failover`` kind shows, so items lost on partitions
whose master was killed are counted apart from those lost anywhere else; only the latter (and
order or watermark violations after migrations alone) break the guarantees.

    ./scripts/chaos --faults cluster --fault-count 20 --seed 1
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from workshaper.admin import Admin
from workshaper.cli.common import worker_command
from workshaper.keys import NamespaceKeys
from workshaper_tools.chaos.plan import (
    PlanSpec,
    append_line,
    namespace_idle,
    plan_items,
    read_acks,
    read_progress,
)
from workshaper_tools.testing.checker import PlannedItem, Report, check
from workshaper_tools.testing.journal import read_journal
from workshaper_tools.testing.redis_cluster import RedisCluster

log = logging.getLogger(__name__)

CLUSTER_FAULTS = ("migrate", "kill")


@dataclass
class ClusterChaosConfig:
    fault_count: int = 20
    seed: int = 1
    partitions: int = 6
    sub_keys: int = 40
    rate: float = 200.0  # items per second offered by the producer
    max_in_queue: int = 200
    workers: int = 3
    concurrency: int = 4
    lease: float = 2.0
    work_delay: float = 0.01
    gap: tuple[float, float] = (0.5, 2.0)  # seconds between faults
    drain_timeout: float = 240.0
    lanes: int | None = None  # the producer's lanes (docs/lanes.md); None: today's mode


@dataclass
class ClusterChaosResult:
    config: ClusterChaosConfig
    faults: Counter[str] = field(default_factory=Counter)
    report: Report = field(default_factory=Report)
    lost_after_kill: int = 0  # lost on partitions whose master was killed (async replication)
    lost_elsewhere: int = 0
    # Order and watermark violations on partitions whose master was killed (a lost predecessor
    # leaves its successor "started before its predecessor ended"), and on the others.
    order_after_kill: int = 0
    order_elsewhere: int = 0
    watermark_after_kill: int = 0
    watermark_elsewhere: int = 0
    drain_stuck: bool = False  # the producer waited for offsets the cluster no longer had
    keys_moved: int = 0
    promotions: list[float] = field(default_factory=list)  # seconds from kill to new master
    issues: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run_dir: str = ""

    @property
    def violations(self) -> int:
        """What breaks the guarantees: losses, order and watermark violations on partitions
        whose master was never killed (migrations only), and harness issues. Those on killed
        masters' partitions are what asynchronous replication costs: reported apart."""
        return (
            self.lost_elsewhere
            + self.order_elsewhere
            + self.watermark_elsewhere
            + len(self.report.sub_key_violations)
            + len(self.issues)
        )

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def summary(self) -> str:
        r = self.report
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        promo = (
            f"replica promoted {min(self.promotions):.1f}-{max(self.promotions):.1f}s after a kill"
            if self.promotions
            else "no kill"
        )
        lines = [
            f"cluster chaos seed {self.config.seed}: {sum(self.faults.values())} faults"
            f" ({faults}); {self.keys_moved} keys migrated; {promo}",
            f"items      accepted {r.accepted}, finished {r.finished} (dead-lettered"
            f" {r.dead_lettered}), lost {len(r.lost)}: {self.lost_after_kill} on partitions"
            f" of killed masters (asynchronous replication, outside the guarantees),"
            f" {self.lost_elsewhere} elsewhere",
            f"order      violations {len(r.order_violations)}: {self.order_after_kill} on"
            f" partitions of killed masters, {self.order_elsewhere} elsewhere",
            f"watermark  violations {len(r.watermark_violations)}: {self.watermark_after_kill}"
            f" on partitions of killed masters, {self.watermark_elsewhere} elsewhere"
            f" (re-acks {r.reacks})",
            f"sub key    violations {len(r.sub_key_violations)} (a handler saw a"
            " current_job().sub_key other than its item's own)",
            f"re-runs    {r.reruns} of {r.starts} starts",
        ]
        if self.drain_stuck:
            lines.append(
                "drain      ended early: the cluster had nothing left to run while the producer"
                " waited for acks of offsets a master kill took away"
            )
        lines += [f"issue      {issue}" for issue in self.issues]
        lines.append(
            f"{self.seconds:.0f} s -> {'PASS' if self.ok else 'FAIL'}"
            + ("" if self.ok else f" (run dir kept: {self.run_dir})")
        )
        return "\n".join(lines)


def partition_slot(namespace: str, partition: int) -> int:
    return key_slot(NamespaceKeys(namespace).partition(partition).meta)


def _partition(violation: str) -> int | None:
    """The partition a checker violation names ("partition 3 ...")."""
    match = re.match(r"partition (\d+)", violation)
    return int(match.group(1)) if match else None


class _Run:
    def __init__(self, config: ClusterChaosConfig, run_dir: Path) -> None:
        self.config = config
        self.dir = run_dir
        self.rng = random.Random(f"cluster:{config.seed}")
        self.namespace = f"cc{config.seed}"
        self.journal = run_dir / "journal"
        self.journal.mkdir(exist_ok=True)
        self.cluster = RedisCluster(masters=3, replicas=1)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.producer: subprocess.Popen[bytes] | None = None
        self.producer_done = False
        self.drain_stuck = False
        self.killed_partitions: set[int] = set()
        self.issues: list[str] = []
        self._logs: list[Any] = []

    def _popen(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Any:
        out = (self.dir / f"{name}.log").open("ab")
        self._logs.append(out)
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        c = self.config
        env = dict(os.environ)
        env.update(WS_JOURNAL_DIR=str(self.journal), WS_WORK_DELAY_MAX=str(c.work_delay))
        for name in ("WS_POISON", "WS_FAIL", "WS_SLOW"):
            env.pop(name, None)
        argv = [
            *worker_command(),
            "workshaper_tools.testing.journal:work",
            *("--redis", self.cluster.url, "--namespace", self.namespace),
            *("--concurrency", str(c.concurrency), "--lease", str(c.lease)),
            *("--log-level", "WARNING"),
        ]
        process: subprocess.Popen[bytes] = self._popen(argv, f"worker-{index}", env)
        return process

    def start_producer(self) -> None:
        c = self.config
        argv = [
            *(sys.executable, "-m", "workshaper_tools.chaos", "producer"),
            *("--redis", self.cluster.url, "--namespace", self.namespace),
            *("--run-dir", str(self.dir), "--seed", str(c.seed)),
            *("--partitions", str(c.partitions), "--sub-keys", str(c.sub_keys)),
            *("--rate", str(c.rate), "--max-in-queue", str(c.max_in_queue)),
        ]
        if c.lanes is not None:
            argv += ["--lanes", str(c.lanes)]
        self.producer = self._popen(argv, "producer")

    def supervise(self) -> None:
        """Restart a worker that died (a fault can end one: Redis unreachable at its start);
        the producer retries what Redis refuses, so its exit ends the run's producing."""
        for i, worker in enumerate(self.workers):
            if worker.poll() is not None:
                log.info("worker %d exited with %s: restarting it", i, worker.returncode)
                self.workers[i] = self.start_worker(i)
        producer = self.producer
        if producer is not None and producer.poll() is not None:
            self.producer = None
            if producer.returncode == 0 and read_progress(self.dir / "producer.progress")[1]:
                self.producer_done = True
            else:
                self.issues.append(f"producer exited with status {producer.returncode}")
                self.start_producer()

    def wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervise()
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # --- faults ---------------------------------------------------------------------------

    def migrate(self) -> tuple[str, int]:
        partition = self.rng.randrange(self.config.partitions)
        slot = partition_slot(self.namespace, partition)
        source = self.cluster.master_of_slot(slot)
        targets = [s for s in self.cluster.primaries() if s.port != source.port]
        target = self.rng.choice(targets)
        moved = self.cluster.migrate_slot(slot, target, keys_per_step=1, pause=0.02)
        return f"p{partition} slot {slot} {source.port}->{target.port}", moved

    def kill(self) -> tuple[str, float]:
        partition = self.rng.randrange(self.config.partitions)
        slot = partition_slot(self.namespace, partition)
        victim = self.cluster.master_of_slot(slot)
        # Every partition whose slot this master holds may lose what was not yet replicated.
        owned = {
            p
            for p in range(self.config.partitions)
            if self.cluster.master_of_slot(partition_slot(self.namespace, p)).port == victim.port
        }
        victim.kill()
        killed_at = time.monotonic()
        self.killed_partitions |= owned
        deadline = killed_at + 60
        while True:
            self.wait(0.1)
            try:
                if self.cluster.master_of_slot(slot).port != victim.port:
                    break
            except Exception:  # a node mid-failover may not answer
                log.debug("slot owner not readable yet", exc_info=True)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica promoted within 60 s of killing {victim.port}")
        promoted = time.monotonic() - killed_at
        # Start it again on its data dir: nodes.conf makes it rejoin as the new master's replica.
        victim.start()
        deadline = time.monotonic() + 60
        while not self.cluster._state_ok():
            self.wait(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok 60 s after {victim.port} came back")
        with victim.client(decode_responses=True) as c:
            role = c.info("replication")["role"]
        if role != "slave":  # else later kills would find masters without a replica
            self.issues.append(f"killed master {victim.port} came back as {role}, not a replica")
        return f"p{partition} master {victim.port} (partitions {sorted(owned)})", promoted

    # --- the end --------------------------------------------------------------------------

    def idle(self) -> bool:
        return namespace_idle(self.cluster.url, self.namespace)

    def drain(self) -> None:
        append_line(self.dir / "stop-producer", "stop\n")
        deadline = time.monotonic() + self.config.drain_timeout
        idle_since: float | None = None
        while not self.producer_done and time.monotonic() < deadline:
            self.wait(0.5)
            # Nothing left to run, yet the producer waits: the offsets it waits for are gone
            # from Redis (acknowledged writes lost by a master kill).
            if self.idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5.0:
                    log.warning("drain: Redis idle, the producer waits for lost offsets")
                    self.drain_stuck = True
                    return
            else:
                idle_since = None
        if not self.producer_done:
            self.issues.append(f"drain timed out after {self.config.drain_timeout:g}s")

    def dead_letters(self) -> dict[tuple[int, int], float]:
        out: dict[tuple[int, int], float] = {}
        admin = Admin(self.cluster.url, self.namespace)
        try:
            for status in admin.status():
                for record in admin.dead_letters(status.partition):
                    if record.offset is not None:
                        out[(status.partition, record.offset)] = record.at_ms / 1000  # wall
        finally:
            admin.close()
        return out

    def stop_all(self) -> None:
        processes = [*self.workers, *([self.producer] if self.producer else [])]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.cluster.stop()
        for out in self._logs:
            out.close()


def run_cluster_chaos(
    config: ClusterChaosConfig, run_dir: Path | None = None
) -> ClusterChaosResult:
    directory = run_dir or Path(tempfile.mkdtemp(prefix="ws-cluster-chaos-"))
    directory.mkdir(parents=True, exist_ok=True)
    run = _Run(config, directory)
    result = ClusterChaosResult(config, run_dir=str(directory))
    started = time.monotonic()
    dead: dict[tuple[int, int], float] = {}
    try:
        run.cluster.start()
        run.workers = [run.start_worker(i) for i in range(config.workers)]
        run.start_producer()
        acks = directory / "acks.log"
        deadline = time.monotonic() + 60
        while not (acks.exists() and acks.stat().st_size > 0):  # the pipeline flows
            run.wait(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError("no ack within 60 s of the start")
        run.wait(1.0)
        for n in range(config.fault_count):
            kind = CLUSTER_FAULTS[n % 2]
            if kind == "migrate":
                target, moved = run.migrate()
                result.keys_moved += moved
                detail = f"{moved} keys"
            else:
                target, promoted = run.kill()
                result.promotions.append(promoted)
                detail = f"replica promoted after {promoted:.1f}s"
            result.faults[kind] += 1
            log.info("fault %d/%d: %s %s, %s", n + 1, config.fault_count, kind, target, detail)
            run.wait(run.rng.uniform(*config.gap))
        run.drain()
        for process in run.workers:
            process.send_signal(signal.SIGTERM)
        for process in run.workers:
            process.wait(30)
        dead = run.dead_letters()
    finally:
        run.stop_all()
    count, _ = read_progress(directory / "producer.progress")
    plan = itertools.islice(
        plan_items(PlanSpec(config.seed, config.partitions, config.sub_keys)), count
    )
    planned = [PlannedItem(sub, p, o) for sub, p, o in plan]
    result.report = check(
        planned, read_journal(run.journal), read_acks(directory / "acks.log"), dead, sub_keys=True
    )
    killed = run.killed_partitions
    report = result.report
    result.lost_after_kill = sum(1 for p, _ in report.lost if p in killed)
    result.lost_elsewhere = len(report.lost) - result.lost_after_kill
    result.order_after_kill = sum(1 for v in report.order_violations if _partition(v) in killed)
    result.order_elsewhere = len(report.order_violations) - result.order_after_kill
    result.watermark_after_kill = sum(
        1 for v in report.watermark_violations if _partition(v) in killed
    )
    result.watermark_elsewhere = len(report.watermark_violations) - result.watermark_after_kill
    result.drain_stuck = run.drain_stuck
    result.issues = run.issues
    result.seconds = time.monotonic() - started
    if result.ok and run_dir is None:  # failed runs keep their logs and journal for a look
        shutil.rmtree(directory, ignore_errors=True)
    return result
