"""The fault kinds: the seeded schedule drawn before a run, and how each kind is injected into
the cluster and lifted again (``Faults``)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from workshaper_tools.chaos.cluster import Cluster, WorkerSlot
from workshaper_tools.chaos.config import LOSSY_KINDS, ChaosConfig
from workshaper_tools.chaos.plan import append_line, line_count

#: Proxy modes a proxy fault picks from.
PROXY_MODES = ("drop", "stall", "slow")
#: redis-py's default socket timeout: a stall longer than this makes clients time out and retry.
CLIENT_SOCKET_TIMEOUT = 5.0


@dataclass(frozen=True)
class PlannedFault:
    """One entry of the seeded schedule, drawn before the run starts."""

    gap: float  # wait before injecting
    kind: str
    slot: int  # target worker slot (kill, stop, netns)
    duration: float  # how long the fault lasts (stop, redis down time, proxy, netns)
    mode: str = ""  # proxy: drop / stall / slow
    delay: float = 0.0  # proxy slow: per-chunk delay; kill/producer: restart delay


def fault_schedule(config: ChaosConfig, kinds: Sequence[str]) -> list[PlannedFault]:
    rng = random.Random(f"schedule:{config.seed}")
    lease = config.lease
    out: list[PlannedFault] = []
    for _ in range(config.fault_count):
        gap = rng.uniform(*config.gap)
        kind = rng.choice(list(kinds))
        slot = rng.randrange(config.workers)
        if kind == "stop":  # longer than the lease plus a reaper pass, so others take over
            out.append(PlannedFault(gap, kind, slot, rng.uniform(lease + 1.0, lease + 2.5)))
        elif kind == "redis":
            out.append(PlannedFault(gap, kind, slot, rng.uniform(0.0, 1.0)))
        elif kind == "proxy":
            mode = rng.choice(PROXY_MODES)
            if mode == "drop":
                out.append(PlannedFault(gap, kind, slot, rng.uniform(0.1, 2.0), mode))
            elif mode == "stall":
                # one in four outlasts the clients' socket timeout (they time out and retry)
                if rng.random() < 0.25:
                    duration = rng.uniform(CLIENT_SOCKET_TIMEOUT + 0.5, CLIENT_SOCKET_TIMEOUT + 2)
                else:
                    duration = rng.uniform(0.3, lease * 1.5 + 1.0)
                out.append(PlannedFault(gap, kind, slot, duration, mode))
            else:
                out.append(
                    PlannedFault(
                        gap, kind, slot, rng.uniform(0.5, 3.0), mode, rng.uniform(0.002, 0.1)
                    )
                )
        elif kind in LOSSY_KINDS:  # how far behind the replica / the fsynced AOF is
            out.append(PlannedFault(gap, kind, slot, rng.uniform(0.2, 1.0)))
        elif kind == "netns":  # sometimes shorter than the lease, sometimes much longer
            out.append(PlannedFault(gap, kind, slot, rng.uniform(0.3, lease + 2.5)))
        else:  # kill, producer: instant; poison: the next item
            out.append(PlannedFault(gap, kind, slot, 0.0, delay=rng.uniform(0.05, 1.0)))
    return out


@dataclass
class FaultRecord:
    kind: str
    start: float  # CLOCK_MONOTONIC when injected
    end: float  # when restored (== start for instant faults)
    wall: float  # time.time() at injection
    target: str = ""
    detail: str = ""
    workers: list[str] = field(default_factory=list)  # worker ids hit (worker faults)
    alive: list[str] = field(default_factory=list)  # worker ids running at the injection
    in_flight: int = 0  # items in flight on the hit workers (all workers: redis, proxy)
    recovery: float | None = None  # seconds from injection to recovery, None: not measurable
    fenced: bool | None = None  # stop: the paused worker was refused a write after SIGCONT


class Faults(Cluster):
    """Injects each kind of fault into the cluster, and lifts it (``_inject``)."""

    def _inject(self, planned: PlannedFault) -> FaultRecord | None:
        kind = planned.kind
        if kind in ("kill", "stop", "netns"):
            slot = self._live_slot(planned.slot)
            # Every worker is down (poison), or the chosen one just died: wait, choose again.
            while slot is None or slot.process is None or slot.process.poll() is not None:
                self._wait(0.05)
                slot = self._live_slot(planned.slot)
            if kind == "kill":
                return self._kill_worker(slot, planned)
            if kind == "stop":
                return self._stop_worker(slot, planned)
            return self._cut_host(slot, planned)
        if kind == "redis":
            return self._restart_redis(planned)
        if kind == "failover":
            return self._failover(planned)
        if kind == "powerloss":
            return self._power_loss(planned)
        if kind == "proxy":
            return self._proxy_fault(planned)
        if kind == "poison":
            return self._poison(planned)
        return self._kill_producer(planned)

    def _record(self, kind: str, target: str, detail: str = "") -> FaultRecord:
        now = time.monotonic()
        record = FaultRecord(kind, now, now, now + self.clock_offset, target, detail)
        record.alive = [
            slot.name
            for slot in self.slots
            if slot.process is not None and slot.process.poll() is None
        ]
        return record

    def _kill_worker(self, slot: WorkerSlot, planned: PlannedFault) -> FaultRecord:
        assert slot.process is not None
        record = self._record("kill", slot.name, f"restart after {planned.delay:.2f}s")
        record.workers = [slot.name]
        slot.expect_kill = True
        slot.process.kill()
        slot.process.wait(10)
        self._worker_exited(slot, slot.process.returncode)
        slot.restart_at = time.monotonic() + planned.delay
        return record

    def _stop_worker(self, slot: WorkerSlot, planned: PlannedFault) -> FaultRecord:
        assert slot.process is not None
        record = self._record("stop", slot.name, f"paused {planned.duration:.2f}s")
        record.workers = [slot.name]
        process = slot.process
        process.send_signal(signal.SIGSTOP)  # a no-op if it died meanwhile
        slot.paused = True
        try:
            self._wait(planned.duration)
        finally:
            record.end = time.monotonic()
            process.send_signal(signal.SIGCONT)
            slot.paused = False
        return record

    def _cut_host(self, slot: WorkerSlot, planned: PlannedFault) -> FaultRecord:
        assert self.net is not None and slot.host is not None
        record = self._record("netns", slot.name, f"link down {planned.duration:.2f}s")
        record.workers = [slot.name]
        self.net.cut(slot.host)
        try:
            self._wait(planned.duration)
        finally:
            self.net.restore(slot.host)
        record.end = time.monotonic()
        return record

    def _restart_redis(self, planned: PlannedFault) -> FaultRecord:
        assert self.redis is not None
        record = self._record("redis", "redis", f"down {planned.duration:.2f}s")
        self.redis.kill()
        self._wait(planned.duration)
        self.redis.start()
        record.end = time.monotonic()
        record.detail += f", back after {record.end - record.start:.2f}s"
        return record

    def _failover(self, planned: PlannedFault) -> FaultRecord:
        """The replica falls ``duration`` s behind (its link stalls), the master dies with
        what it had not sent, the replica takes over."""
        assert self.redis is not None and self.replica is not None and self.proxy is not None
        assert self.replication is not None
        record = self._record("failover", "redis", f"replica {planned.duration:.2f}s behind")
        self.replication.stall()
        self._wait(planned.duration)
        self.redis.kill()
        self.replication.drop()  # the stream it held back is gone with the master
        promoted = self.replica
        client = promoted.client()
        try:
            client.replicaof("NO", "ONE")
        finally:
            client.close()
        self.retired.append(self.redis)
        self.redis = promoted
        self.replica = None
        self.proxy.set_upstream("127.0.0.1", promoted.port)
        self.proxy.drop()  # connections to the dead master
        self.proxy.set_pass()
        record.end = time.monotonic()
        self.replica = self._start_replica()
        return record

    def _power_loss(self, planned: PlannedFault) -> FaultRecord:
        """SIGKILL redis-server, then drop what it appended in the last ``duration`` seconds,
        as a host crash drops the page cache that ``appendfsync everysec`` had not fsynced."""
        assert self.redis is not None
        record = self._record("powerloss", "redis", f"last {planned.duration:.2f}s of AOF lost")
        path = self._aof_file()
        self.redis.kill()
        cutoff = record.start - planned.duration
        sizes = [(t, size) for t, p, size in self.aof_sizes if p == path]
        # The size `duration` ago, or (restarted more recently) the size right after the start.
        keep = [size for t, size in sizes if t <= cutoff] or [size for _, size in sizes[:1]]
        if path is not None and keep and path.stat().st_size > keep[-1]:
            lost = path.stat().st_size - keep[-1]
            os.truncate(path, keep[-1])
            record.detail += f" ({lost} bytes)"
        else:
            record.detail += " (nothing to cut)"
        self.aof_sizes = []
        self.redis.start()
        record.end = time.monotonic()
        self._sample_aof(record.end)
        return record

    def _proxy_fault(self, planned: PlannedFault) -> FaultRecord:
        assert self.proxy is not None
        mode = planned.mode
        detail = f"{planned.duration:.2f}s"
        if mode == "slow":
            detail += f", +{planned.delay * 1000:.0f} ms per chunk"
        record = self._record("proxy", mode, detail)
        if mode == "drop":
            self.proxy.drop()
        elif mode == "stall":
            self.proxy.stall()
        else:
            self.proxy.slow(planned.delay)
        try:
            self._wait(planned.duration)
        finally:
            self.proxy.set_pass()
        record.end = time.monotonic()
        return record

    def _poison(self, planned: PlannedFault) -> FaultRecord:
        poisoned = line_count(self.run_dir / "poison.log")
        record = self._record("poison", "next item")
        append_line(self.run_dir / "poison-requests", "poison\n")
        deadline = time.monotonic() + 30
        while line_count(self.run_dir / "poison.log") == poisoned:
            if time.monotonic() > deadline:
                self.issues.append("the producer did not make a poison item within 30 s")
                break
            self._wait(0.01)
        return record

    def _kill_producer(self, planned: PlannedFault) -> FaultRecord:
        while self.producer is None:
            self._wait(0.05)
        record = self._record("producer", "producer", f"restart after {planned.delay:.2f}s")
        self.producer_expect_kill = True
        self.producer.kill()
        self.producer.wait(10)
        self._supervise()
        self.producer_restart_at = time.monotonic() + planned.delay
        return record
