"""The process cluster a chaos run drives: a private redis-server (and a replica for failover
faults), a TCP fault proxy, network namespaces, N ``workshaper-worker`` processes running the
journaling handler, and the producer process; each restarted when it dies, all stopped at the
end (and at exit)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from workshaper.admin import Admin
from workshaper.cli.common import worker_command
from workshaper_tools.chaos.config import KNOWN_KINDS, ChaosConfig
from workshaper_tools.chaos.plan import append_line, read_progress
from workshaper_tools.testing import netns
from workshaper_tools.testing.journal import POISON_EXIT_STATUS
from workshaper_tools.testing.proxy import ChaosProxy
from workshaper_tools.testing.redis_server import RedisServer

#: Exit status of workshaper-worker when Redis is unreachable at start (workshaper.cli.common).
SETUP_ERROR_STATUS = 2
#: What it prints then: Redis did not answer its first command, or dropped the connection during
#: the checks that follow (a proxy drop or a Redis restart at that moment). A supervisor
#: restarts it either way; neither is a fault of the fleet.
_UNREACHABLE_AT_START = ("cannot reach Redis", "at startup: ")


def worker_exit_kind(code: int, expect_kill: bool, log_tail: str) -> str | None:
    """The worker_exits bucket of a worker's exit, or None when the exit is unexpected."""
    if expect_kill and code == -signal.SIGKILL:
        return "killed"
    if code == POISON_EXIT_STATUS:
        return "poison"
    if code == SETUP_ERROR_STATUS and any(m in log_tail for m in _UNREACHABLE_AT_START):
        return "unreachable at start"
    return None


_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the harness dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(
    argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, spawned from main thread
        )


class _RedisServer(RedisServer):
    """RedisServer whose process also dies with the harness."""

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.process = subprocess.Popen(
            self._args(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self.wait_ready(timeout)
        return self


@dataclass
class WorkerSlot:
    index: int
    host: int | None  # network namespace host, or None
    url: str
    log_path: Path
    incarnation: int = 0
    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    expect_kill: bool = False
    paused: bool = False
    names: list[str] = field(default_factory=list)


#: Clusters started and not yet cleaned up: stopped at exit, whatever ended the run.
_LIVE: set[Cluster] = set()


@atexit.register
def _cleanup_at_exit() -> None:
    for cluster in list(_LIVE):
        cluster.cleanup()


class Cluster:
    """The processes of one chaos run, and what the run learned about them: ``_start()``
    starts everything, ``_wait()`` sleeps while restarting what crashed, ``_stop_workers()``
    and ``_read_redis_state()`` end a run, ``cleanup()`` stops everything (idempotent)."""

    def __init__(self, config: ChaosConfig, out: TextIO | None = None) -> None:
        self.config = config
        self.out = out
        self.skipped: dict[str, str] = {}
        kinds = []
        for kind in config.faults:
            if kind not in KNOWN_KINDS:
                raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(KNOWN_KINDS)})")
            if kind == "netns":
                reason = netns.unavailable_reason()
                if reason is not None:
                    self.skipped[kind] = reason
                    continue
            kinds.append(kind)
        self.kinds = tuple(kinds)
        self.namespace = f"chaos{config.seed}"
        self._own_dir = config.run_dir is None
        self.run_dir = Path(config.run_dir or tempfile.mkdtemp(prefix="workshaper-chaos-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir = self.run_dir / "journal"
        self.logs_dir = self.run_dir / "logs"
        for d in (self.journal_dir, self.logs_dir):
            d.mkdir(exist_ok=True)
        self.redis: _RedisServer | None = None
        self.replica: _RedisServer | None = None  # for failover faults
        self.replication: ChaosProxy | None = None  # the replica's link to its master
        self.retired: list[_RedisServer] = []  # masters that failed over
        self.redis_extra: list[str] = []
        self.aof_sizes: list[tuple[float, Path, int]] = []  # for powerloss faults
        self.next_aof_sample = 0.0
        self.proxy: ChaosProxy | None = None
        self.net: netns.HostNetwork | None = None
        self.slots: list[WorkerSlot] = []
        self.producer: subprocess.Popen[bytes] | None = None
        self.producer_restart_at: float | None = None
        self.producer_expect_kill = False
        self.producer_done = False
        self.issues: list[str] = []
        self.worker_exits: dict[str, int] = defaultdict(int)
        self.restart_rng = random.Random(f"restarts:{config.seed}")
        self.stopping = False
        self.final_status: list[Any] = []
        self.dead_letters: dict[tuple[int, int], float] = {}  # -> CLOCK_MONOTONIC of dead-letter
        self.leftover_queues = 0
        self.clock_offset = time.time() - time.monotonic()

    # --- output ------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def _start(self) -> None:
        _LIVE.add(self)
        config = self.config
        netns.cleanup_stale()
        if "netns" in self.kinds:
            self.net = netns.HostNetwork(config.workers, rng=random.Random(config.seed))
            self.net.setup()
            self.redis_extra = ["--bind", "127.0.0.1", self.net.gateway, "--protected-mode", "no"]
        self.redis = self._new_redis("redis")
        self.redis.start()
        if "failover" in self.kinds:
            self.replica = self._start_replica()
        if "proxy" in self.kinds or "failover" in self.kinds:
            hosts = ["127.0.0.1"] + ([self.net.gateway] if self.net else [])
            self.proxy = ChaosProxy("127.0.0.1", self.redis.port, listen_hosts=hosts).start()
        for index in range(config.workers):
            host = index if self.net else None
            slot = WorkerSlot(index, host, self._url(host), self.logs_dir / f"w{index}.log")
            self.slots.append(slot)
            self._spawn_worker(slot)
        self._spawn_producer()
        self.say(
            f"chaos: seed {config.seed}, faults {','.join(self.kinds)}"
            + "".join(f" ({k} skipped: {r})" for k, r in self.skipped.items())
            + f", {config.workers} workers x {config.concurrency}, lease {config.lease:g}s,"
            f" redis port {self.redis.port}, run dir {self.run_dir}"
        )

    def _new_redis(self, name: str, extra: Sequence[str] = ()) -> _RedisServer:
        data_dir = self.run_dir / name
        data_dir.mkdir(exist_ok=True)
        return _RedisServer(
            appendonly=True,
            appendfsync=self.config.appendfsync,
            data_dir=data_dir,
            extra=[*self.redis_extra, *extra],
        )

    def _start_replica(self) -> _RedisServer:
        """A replica of the current master, in sync before this returns. Its link to the
        master runs through a proxy, so a fault can hold back (and then lose) the stream."""
        assert self.redis is not None
        if self.replication is not None:
            self.replication.stop()
        self.replication = ChaosProxy("127.0.0.1", self.redis.port).start()
        name = f"redis-replica{len(self.retired) + 1}"
        replica = self._new_redis(name, ["--replicaof", "127.0.0.1", str(self.replication.port)])
        replica.start()
        client = replica.client()
        try:
            deadline = time.monotonic() + 60
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync with its master within 60 s")
                self._wait(0.05)
        finally:
            client.close()
        return replica

    def _url(self, host: int | None) -> str:
        assert self.redis is not None
        address = "127.0.0.1" if host is None or self.net is None else self.net.gateway
        if self.proxy is not None:
            return self.proxy.url(address)
        return f"redis://{address}:{self.redis.port}/0"

    def _spawn_worker(self, slot: WorkerSlot) -> None:
        config = self.config
        slot.incarnation += 1
        slot.name = f"w{slot.index}.{slot.incarnation}"
        slot.names.append(slot.name)
        argv = [
            *worker_command(),
            "workshaper_tools.testing.journal:work",
            "--redis",
            slot.url,
            "--namespace",
            self.namespace,
            "--concurrency",
            str(config.concurrency),
            "--lease",
            str(config.lease),
            "--max-attempts",
            str(config.max_attempts),
            "--batch-size",
            str(config.batch_size),
            "--name",
            slot.name,
        ]
        if self.net is not None and slot.host is not None:
            argv = self.net.exec_prefix(slot.host) + argv
        env = dict(os.environ)
        env.update(
            WS_JOURNAL_DIR=str(self.journal_dir),
            WS_WORK_DELAY_MAX=str(config.work_delay),
            WS_WORKER_ID=slot.name,
        )
        for name in ("WS_POISON", "WS_FAIL", "WS_SLOW", "WORKSHAPER_LOG_LEVEL"):
            env.pop(name, None)
        append_line(slot.log_path, f"=== harness: start {slot.name} at {time.time():.3f}\n")
        slot.process = _spawn(argv, log_path=slot.log_path, env=env)
        slot.restart_at = None
        slot.expect_kill = False
        slot.paused = False

    def _spawn_producer(self) -> None:
        assert self.redis is not None
        config = self.config
        argv = [
            sys.executable,
            "-m",
            "workshaper_tools.chaos",
            "producer",
            "--redis",
            self._url(None),
            "--namespace",
            self.namespace,
            "--run-dir",
            str(self.run_dir),
            "--seed",
            str(config.seed),
            "--partitions",
            str(config.partitions),
            "--sub-keys",
            str(config.sub_keys),
            "--rate",
            str(config.rate),
            "--max-in-queue",
            str(config.max_in_queue),
            "--batch",
            str(config.producer_batch),
        ]
        if config.lanes is not None:
            argv += ["--lanes", str(config.lanes)]
        self.producer = _spawn(argv, log_path=self.logs_dir / "producer.log")
        self.producer_restart_at = None
        self.producer_expect_kill = False

    # --- supervision -------------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """Sleep, restarting crashed processes meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self._supervise()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.02, remaining))

    def _supervise(self) -> None:
        now = time.monotonic()
        if "powerloss" in self.kinds and now >= self.next_aof_sample:
            self._sample_aof(now)
        for slot in self.slots:
            process = slot.process
            if process is not None and process.poll() is not None:
                self._worker_exited(slot, process.returncode)
            if (
                slot.process is None
                and slot.restart_at is not None
                and now >= slot.restart_at
                and not self.stopping
            ):
                self._spawn_worker(slot)
        producer = self.producer
        if producer is not None and producer.poll() is not None:
            code = producer.returncode
            self.producer = None
            if code == 0 and read_progress(self.run_dir / "producer.progress")[1]:
                self.producer_done = True
            else:
                if not (self.producer_expect_kill and code == -signal.SIGKILL):
                    self.issues.append(
                        f"producer exited unexpectedly with status {code}: "
                        f"{self._tail(self.logs_dir / 'producer.log')}"
                    )
                self.producer_restart_at = now + (0.2 if code != -signal.SIGKILL else 0.0)
        if (
            self.producer is None
            and not self.producer_done
            and self.producer_restart_at is not None
            and now >= self.producer_restart_at
        ):
            self._spawn_producer()

    def _worker_exited(self, slot: WorkerSlot, code: int) -> None:
        slot.process = None
        kind = worker_exit_kind(code, slot.expect_kill, self._tail(slot.log_path))
        if kind is not None:
            self.worker_exits[kind] += 1
        elif self.stopping and code in (0, -signal.SIGTERM):
            return  # our SIGTERM (a worker that had not set up its handlers yet dies of it)
        else:
            self.worker_exits["unexpected"] += 1
            self.issues.append(
                f"worker {slot.name} exited unexpectedly with status {code}: "
                f"{self._tail(slot.log_path)}"
            )
        slot.expect_kill = False
        if not self.stopping:
            slot.restart_at = time.monotonic() + self.restart_rng.uniform(0.05, 0.5)

    @staticmethod
    def _tail(path: Path, lines: int = 3) -> str:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def _live_slot(self, preferred: int) -> WorkerSlot | None:
        """The worker to hit: the preferred slot or the next live one, preferring one with an
        item in flight (a fault on an idle worker tests little)."""
        n = len(self.slots)
        live = [
            slot
            for slot in (self.slots[(preferred + i) % n] for i in range(n))
            if slot.process is not None and slot.process.poll() is None and not slot.paused
        ]
        deadline = time.monotonic() + 1.0
        while live and time.monotonic() < deadline:
            for slot in live:
                if self._busy(slot):
                    return slot
            time.sleep(0.005)
        return live[0] if live else None

    def _busy(self, slot: WorkerSlot) -> bool:
        """Does the worker's journal end with an item started and not ended?"""
        assert slot.process is not None
        path = self.journal_dir / f"{slot.process.pid}.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 8192))
                start = f.tell()
                tail = f.read().decode(errors="replace").splitlines()[1 if start else 0 :]
        except OSError:
            return False
        flying: set[tuple[int, int]] = set()
        for line in tail:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("k") == "s":
                flying.add((e["p"], e["o"]))
            else:
                flying.discard((e["p"], e["o"]))
        return bool(flying)

    def _aof_file(self) -> Path | None:
        """The AOF file Redis appends to now (Redis 7: the last incr file of the manifest)."""
        assert self.redis is not None
        folder = self.redis.data_dir / "appendonlydir"
        manifests = list(folder.glob("*.manifest"))
        if not manifests:
            return None
        current = None
        for line in manifests[0].read_text().splitlines():
            parts = line.split()
            if "type" in parts and parts[parts.index("type") + 1] == "i":
                current = parts[parts.index("file") + 1]
        return folder / current if current else None

    def _sample_aof(self, now: float) -> None:
        self.next_aof_sample = now + 0.05
        path = self._aof_file()
        if path is None:
            return
        with contextlib.suppress(OSError):
            self.aof_sizes.append((now, path, path.stat().st_size))
        self.aof_sizes = [x for x in self.aof_sizes if x[0] > now - 5.0]

    def _stop_workers(self) -> None:
        """SIGTERM every worker (they release their leases); SIGKILL after 30 s."""
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGCONT)
                slot.process.terminate()
        deadline = time.monotonic() + 30
        for slot in self.slots:
            process = slot.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.issues.append(f"worker {slot.name} did not stop within 30 s of SIGTERM")
                process.kill()
                process.wait(10)
            if process.returncode != -signal.SIGKILL:
                self._worker_exited(slot, process.returncode)
            slot.process = None

    def _read_redis_state(self) -> None:
        assert self.redis is not None
        admin = Admin(self.redis.url, self.namespace)
        try:
            self.final_status = admin.status()
            for status in self.final_status:
                for record in admin.dead_letters(status.partition):
                    if record.offset is not None:
                        at = record.at_ms / 1000 - self.clock_offset
                        self.dead_letters[(status.partition, record.offset)] = at
            client = self.redis.client()
            try:
                self.leftover_queues = sum(
                    1 for _ in client.scan_iter(match=f"ws:{{{self.namespace}:*}}:q:*", count=1000)
                )
            finally:
                client.close()
        finally:
            admin.close()

    def cleanup(self) -> None:
        """Stop everything this run started (idempotent; also runs at exit)."""
        self.stopping = True
        for slot in self.slots:
            process = slot.process
            if process is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    process.wait(10)
                slot.process = None
        if self.producer is not None:
            with contextlib.suppress(OSError):
                if self.producer.poll() is None:
                    self.producer.kill()
                self.producer.wait(10)
            self.producer = None
        for proxy in (self.proxy, self.replication):
            if proxy is not None:
                proxy.stop()
        self.proxy = self.replication = None
        for server in [self.redis, self.replica, *self.retired]:
            if server is not None:
                server.stop()
        self.redis = self.replica = None
        self.retired = []
        if self.net is not None:
            self.net.teardown()
            self.net = None
        _LIVE.discard(self)
