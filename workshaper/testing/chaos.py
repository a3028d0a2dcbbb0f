"""The chaos harness: real kills, pauses, Redis restarts and cut networks, then an audit.

One run starts its own ``redis-server`` (temp dir, free port, AOF ``appendfsync always``), a
producer process (``python -m workshaper.testing.chaos producer``), and N ``workshaper-worker``
processes running the journaling handler (``workshaper.testing.journal:work``), then injects
faults on a seeded random schedule:

    kill      SIGKILL a random worker, start it again
    stop      SIGSTOP a worker for longer than the lease, then SIGCONT (it must be fenced off)
    redis     SIGKILL redis-server, start it again on the same data dir and port
    proxy     cut (drop), stall or slow every client connection through a TCP proxy
    netns     take one worker host's link down, then up (workers in network namespaces;
              needs root and ``ip``, skipped with the reason otherwise)
    poison    make the next item poison: it kills its worker every time (it must end
              dead-lettered, after at most max_attempts + 1 crashes, not loop)
    producer  SIGKILL the producer, start it again (it re-enqueues from the acked watermark)

Two more kinds are outside the guarantees and never part of ``all``; they show what a setup
without them loses (expect violations):

    failover  SIGKILL the master while its replica lags 0.2-1 s (its link stalled), promote
              the replica and point every client at it
    powerloss SIGKILL redis-server and cut the last 0.2-1 s off its AOF, as a host crash does
              to the writes ``appendfsync everysec`` had not fsynced yet

Afterwards it drains (every accepted item must be acked), stops the workers, reads the
journal, the producer's ack log and Redis, and reports: items accepted and finished, lost,
order and watermark violations, fencing rejections, re-runs against the items in flight at the
faults, and the time to recover after each fault (p50/p99). Any violation makes the run fail.

``./scripts/chaos --help`` lists the options; ``./scripts/chaos --soak`` runs every kind alone
and all together, over 1,000 faults, and prints the table of docs/reliability.md.

Every child process is started from the main thread with PR_SET_PDEATHSIG, in its own session,
and stopped in a ``finally`` (and at exit), as are the proxy and the network namespaces.
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import contextlib
import ctypes
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import redis

from workshaper.admin import Admin
from workshaper.cli import worker_command
from workshaper.testing import netns
from workshaper.testing.checker import Ack, PlannedItem, Report, check
from workshaper.testing.journal import POISON_EXIT_STATUS, Event, read_journal
from workshaper.testing.proxy import ChaosProxy
from workshaper.testing.redis_server import RedisServer

log = logging.getLogger("workshaper.chaos")

#: Every fault kind the guarantees cover, in the order of the tables ("all").
FAULT_KINDS = ("kill", "stop", "redis", "proxy", "netns", "poison", "producer")
#: Faults outside the guarantees, to show what they cost (never part of "all"): a failover to
#: an asynchronous replica that lags, and a Redis host crash that loses the AOF tail not yet
#: fsynced (what ``appendfsync everysec`` risks).
LOSSY_KINDS = ("failover", "powerloss")
KNOWN_KINDS = FAULT_KINDS + LOSSY_KINDS
#: Kinds whose in-flight items are those of one worker (the others touch every client).
WORKER_FAULTS = ("kill", "stop", "netns")
#: Proxy modes a proxy fault picks from.
PROXY_MODES = ("drop", "stall", "slow")
#: redis-py's default socket timeout: a stall longer than this makes clients time out and retry.
CLIENT_SOCKET_TIMEOUT = 5.0
#: Exit status of workshaper-worker when Redis is unreachable at start (cli.EXIT_SETUP_ERROR).
SETUP_ERROR_STATUS = 2

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


# --- the plan: a deterministic, endless stream of items ---------------------------------------


@dataclass(frozen=True)
class PlanSpec:
    seed: int
    partitions: int
    sub_keys: int
    none_share: float = 0.05  # items with sub_key None (no order)


def plan_items(spec: PlanSpec) -> Iterator[tuple[str | None, int, int]]:
    """(sub_key, partition, offset), forever; offsets grow per partition with gaps."""
    rng = random.Random(f"plan:{spec.seed}:{spec.partitions}:{spec.sub_keys}")
    offsets = [-1] * spec.partitions
    while True:
        partition = rng.randrange(spec.partitions)
        offsets[partition] += rng.choice((1, 1, 1, 2))
        sub = None if rng.random() < spec.none_share else f"k{rng.randrange(spec.sub_keys)}"
        yield sub, partition, offsets[partition]


# --- the producer process ------------------------------------------------------------------------


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_progress(path: Path) -> tuple[int, bool]:
    """(items enqueued, finished) from a producer progress file."""
    count, final = 0, False
    if path.exists():
        for line in path.read_text().splitlines():
            word, _, number = line.partition(" ")
            if word in ("enqueued", "final") and number.isdigit():
                count = max(count, int(number))
                final = final or word == "final"
    return count, final


def producer_main(argv: Sequence[str]) -> int:
    """``python -m workshaper.testing.chaos producer ...``: enqueue the plan at a steady rate
    until the stop file appears, record every ack, then flush and exit 0."""
    import workshaper  # noqa: PLC0415 - keep the harness import light
    from workshaper.errors import BackendUnavailable  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="chaos producer")
    p.add_argument("--redis", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--sub-keys", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--max-in-queue", type=int, required=True)
    p.add_argument("--batch", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    )
    run_dir: Path = args.run_dir
    progress_path, stop_path = run_dir / "producer.progress", run_dir / "stop-producer"
    poison_path, acks_path = run_dir / "poison.log", run_dir / "acks.log"
    requests_path = run_dir / "poison-requests"
    spec = PlanSpec(args.seed, args.partitions, args.sub_keys)
    ack_fd = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    source = str(os.getpid())

    def ack(partition: int, offset: int) -> None:
        line = f"{partition} {offset} {time.monotonic():.6f} {source}\n"
        os.write(ack_fd, line.encode())

    transient = (redis.ConnectionError, redis.TimeoutError, OSError, BackendUnavailable)

    def retrying(what: str, call: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return call()
            except transient as exc:
                log.warning("%s: %s (retrying)", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    producer = retrying(
        "connect",
        lambda: workshaper.Producer(
            args.redis, args.namespace, max_in_queue=args.max_in_queue, ack=ack
        ),
    )
    plan = plan_items(spec)
    done, _ = read_progress(progress_path)
    if done:  # a restart: re-enqueue everything above the acked watermark (dedupe does the rest)
        earlier = [next(plan) for _ in range(done)]
        marks = {
            partition: retrying("watermark", partial(producer.watermark, partition))
            for partition in range(spec.partitions)
        }
        redo = [
            (sub, {"i": i}, part, offset)
            for i, (sub, part, offset) in enumerate(earlier)
            if offset > (-1 if marks[part] is None else marks[part])
        ]
        log.info("restarted after %d items: re-enqueueing %d above the watermark", done, len(redo))
        for start in range(0, len(redo), 200):
            chunk = redo[start : start + 200]
            retrying("re-enqueue", partial(producer.enqueue_many, chunk))
    started, base = time.monotonic(), done
    while not stop_path.exists():
        # The harness asks for poison items by appending a line to poison-requests.
        poison_wanted = _line_count(requests_path) - _line_count(poison_path)
        batch: list[tuple[str | None, dict[str, int], int, int]] = []
        for i in range(done, done + args.batch):
            sub, part, offset = next(plan)
            message = {"i": i}
            if poison_wanted > 0 and sub is not None:
                poison_wanted -= 1
                message["poison"] = 1
                _append(poison_path, f"{part} {offset} {sub}\n")
            batch.append((sub, message, part, offset))
        retrying("enqueue", partial(producer.enqueue_many, batch))
        done += len(batch)
        _append(progress_path, f"enqueued {done}\n")
        pause = started + (done - base) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    log.info("stop requested after %d items: flushing", done)
    while not retrying("flush", lambda: producer.flush(timeout=1.0)):
        pass
    _append(progress_path, f"final {done}\n")
    producer.close()
    os.close(ack_fd)
    return 0


# --- configuration -------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    faults: tuple[str, ...] = FAULT_KINDS
    fault_count: int = 20  # faults to inject
    max_seconds: float = 3600.0  # stop injecting after this long, even if fewer were injected
    seed: int = 1
    workers: int = 3
    concurrency: int = 4
    lease: float = 2.0
    max_attempts: int = 3
    batch_size: int = 20
    partitions: int = 4
    sub_keys: int = 40
    rate: float = 200.0  # items per second offered by the producer
    max_in_queue: int = 200
    work_delay: float = 0.01  # each item sleeps uniform(0, work_delay)
    gap: tuple[float, float] = (0.5, 2.0)  # seconds between faults
    appendfsync: str = "always"
    drain_timeout: float = 240.0
    warmup: float = 1.0
    run_dir: Path | None = None
    keep: bool = False  # keep the run dir (always kept when the run fails)
    label: str = ""  # the soak table's row ("" : the fault kinds)

    def command(self) -> str:
        """The ./scripts/chaos command line that repeats this run."""
        default = ChaosConfig()
        parts = ["./scripts/chaos", "--faults", ",".join(self.faults)]
        flags = {
            "fault_count": "--fault-count",
            "seed": "--seed",
            "workers": "--workers",
            "concurrency": "--concurrency",
            "lease": "--lease",
            "max_attempts": "--max-attempts",
            "batch_size": "--batch-size",
            "partitions": "--partitions",
            "sub_keys": "--sub-keys",
            "rate": "--rate",
            "max_in_queue": "--max-in-queue",
            "work_delay": "--work-delay",
            "appendfsync": "--appendfsync",
        }
        for name, flag in flags.items():
            value = getattr(self, name)
            if value != getattr(default, name) or name in ("fault_count", "seed"):
                parts += [flag, _fmt_number(value)]
        if self.gap != default.gap:
            parts += ["--gap", _fmt_number(self.gap[0]), _fmt_number(self.gap[1])]
        return " ".join(parts)


def _fmt_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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


# --- the run ---------------------------------------------------------------------------------


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


@dataclass
class ChaosResult:
    config: ChaosConfig
    kinds: tuple[str, ...]
    skipped: dict[str, str]
    elapsed: float
    faults: list[FaultRecord]
    report: Report
    issues: list[str]
    fences: dict[str, int]
    reaps: int
    stale_starts: int
    worker_exits: dict[str, int]
    poison: dict[str, int]
    dead_not_poison: int
    run_dir: str
    namespace: str

    @property
    def violations(self) -> int:
        r = self.report
        return (
            len(r.lost) + len(r.order_violations) + len(r.watermark_violations) + len(self.issues)
        )

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "command": self.config.command(),
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()
            },
            "kinds": list(self.kinds),
            "skipped": self.skipped,
            "elapsed": self.elapsed,
            "ok": self.ok,
            "accepted": r.accepted,
            "finished": r.finished,
            "dead_lettered": r.dead_lettered,
            "lost": [list(x) for x in r.lost],
            "order_violations": r.order_violations,
            "watermark_violations": r.watermark_violations,
            "starts": r.starts,
            "reruns": r.reruns,
            "reacks": r.reacks,
            "issues": self.issues,
            "fences": self.fences,
            "reaps": self.reaps,
            "stale_starts": self.stale_starts,
            "worker_exits": self.worker_exits,
            "poison": self.poison,
            "dead_not_poison": self.dead_not_poison,
            "faults": [asdict(f) for f in self.faults],
            "run_dir": self.run_dir,
        }


_LIVE: set[Harness] = set()


@atexit.register
def _cleanup_at_exit() -> None:
    for harness in list(_LIVE):
        harness.cleanup()


class Harness:
    """One chaos run. ``run()`` starts everything, injects the schedule, drains, audits."""

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
        self.faults: list[FaultRecord] = []
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

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        started = time.monotonic()
        if not self.kinds:
            if self._own_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise SkipRun("; ".join(f"{k}: {r}" for k, r in self.skipped.items()) or "no faults")
        _LIVE.add(self)
        try:
            self._start()
            self._warm_up()
            self._inject_schedule()
            self._drain()
            self._stop_workers()
            self._read_redis_state()
        finally:
            self.cleanup()
        result = self._analyze(time.monotonic() - started)
        # Kept for a look: failed runs, and runs that dead-lettered an item that was not poison.
        if result.ok and not result.dead_not_poison and self._own_dir and not self.config.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return result

    def _start(self) -> None:
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
            "workshaper.testing.journal:work",
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
        _append(slot.log_path, f"=== harness: start {slot.name} at {time.time():.3f}\n")
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
            "workshaper.testing.chaos",
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
        ]
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
        if slot.expect_kill and code == -signal.SIGKILL:
            self.worker_exits["killed"] += 1
        elif code == POISON_EXIT_STATUS:
            self.worker_exits["poison"] += 1
        elif code == SETUP_ERROR_STATUS and "cannot reach Redis" in self._tail(slot.log_path):
            self.worker_exits["unreachable at start"] += 1
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

    # --- the schedule --------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Wait until the pipeline flows (a first ack), so faults hit a busy system."""
        deadline = time.monotonic() + 60
        acks = self.run_dir / "acks.log"
        while time.monotonic() < deadline:
            self._wait(0.1)
            if acks.exists() and acks.stat().st_size > 0:
                break
        else:
            self.issues.append("no ack within 60 s of the start: the pipeline never flowed")
        self._wait(self.config.warmup)

    def _inject_schedule(self) -> None:
        schedule = fault_schedule(self.config, self.kinds)
        deadline = time.monotonic() + self.config.max_seconds
        for planned in schedule:
            if time.monotonic() > deadline:
                self.say(f"chaos: --max-seconds reached after {len(self.faults)} faults")
                break
            self._wait(planned.gap)
            record = self._inject(planned)
            if record is not None:
                self.faults.append(record)
                self.say(
                    f"  fault {len(self.faults):4d} {record.kind:8s} {record.target:10s}"
                    f" {record.detail}"
                )

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
        poisoned = _line_count(self.run_dir / "poison.log")
        record = self._record("poison", "next item")
        _append(self.run_dir / "poison-requests", "poison\n")
        deadline = time.monotonic() + 30
        while _line_count(self.run_dir / "poison.log") == poisoned:
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

    # --- the end of a run --------------------------------------------------------------------

    def _drain(self) -> None:
        """Stop producing; wait until every accepted item is acked."""
        _append(self.run_dir / "stop-producer", "stop\n")
        deadline = time.monotonic() + self.config.drain_timeout
        idle_since: float | None = None
        while not self.producer_done and time.monotonic() < deadline:
            self._wait(0.5)
            # Redis has nothing left to run, yet the producer still waits: the offsets it waits
            # for are gone from Redis (only possible when Redis lost acknowledged writes).
            if self._redis_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5.0:
                    self.issues.append(
                        "drain stuck: Redis has nothing pending, queued or leased, but the"
                        " producer still waits for offsets Redis no longer knows"
                    )
                    return
            else:
                idle_since = None
        if not self.producer_done:
            self.issues.append(
                f"drain timed out after {self.config.drain_timeout:g}s: accepted items were not"
                f" all acked ({self._status_line()})"
            )

    def _redis_idle(self) -> bool:
        try:
            assert self.redis is not None
            admin = Admin(self.redis.url, self.namespace)
            try:
                status = admin.status()
            finally:
                admin.close()
        except Exception:
            return False
        return bool(status) and not any(
            s.pending or s.ready_sub_keys or s.leased_sub_keys for s in status
        )

    def _status_line(self) -> str:
        try:
            assert self.redis is not None
            admin = Admin(self.redis.url, self.namespace)
            try:
                return "; ".join(
                    f"p{s.partition}: acked {s.acked} pending {s.pending} ready"
                    f" {s.ready_sub_keys} leased {s.leased_sub_keys} blocked {s.blocked_sub_keys}"
                    for s in admin.status()
                )
            finally:
                admin.close()
        except Exception as exc:
            return f"status unavailable: {exc}"

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

    # --- the audit -----------------------------------------------------------------------------

    def _analyze(self, elapsed: float) -> ChaosResult:
        config = self.config
        count, _ = read_progress(self.run_dir / "producer.progress")
        plan = list(itertools.islice(plan_items(self._spec()), count))
        planned = [PlannedItem(sub, p, o) for sub, p, o in plan]
        events = read_journal(self.journal_dir)
        acks = read_acks(self.run_dir / "acks.log")
        poison_items = read_poison(self.run_dir / "poison.log")
        report = check(planned, events, acks, self.dead_letters)
        issues = list(self.issues)

        # Redis after the drain: nothing pending, leased, queued or blocked; acked at the top.
        top: dict[int, int] = {}
        for _, p, o in plan:
            top[p] = max(top.get(p, -1), o)
        for s in self.final_status:
            if s.pending or s.ready_sub_keys or s.leased_sub_keys or s.blocked_sub_keys:
                issues.append(
                    f"partition {s.partition} not clean after the drain: pending {s.pending},"
                    f" ready {s.ready_sub_keys}, leased {s.leased_sub_keys},"
                    f" blocked {s.blocked_sub_keys}"
                )
            if s.partition in top and s.acked != top[s.partition]:
                issues.append(
                    f"partition {s.partition}: acked watermark {s.acked} after the drain,"
                    f" expected {top[s.partition]}"
                )
        if self.leftover_queues:
            issues.append(f"{self.leftover_queues} sub-key queue(s) left in Redis after the drain")

        # Poison: dead-lettered, after at most max_attempts + 1 starts.
        starts: dict[tuple[int, int], list[float]] = defaultdict(list)
        ends: dict[tuple[int, int], list[float]] = defaultdict(list)
        for e in events:
            if e.kind == "s":
                starts[(e.partition, e.offset)].append(e.at)
            elif e.kind == "e":
                ends[(e.partition, e.offset)].append(e.at)
        poison = {"items": len(poison_items), "dead_lettered": 0, "crashes": 0, "max_starts": 0}
        for key in poison_items:
            n = len(starts.get(key, []))
            poison["crashes"] += n
            poison["max_starts"] = max(poison["max_starts"], n)
            if key in self.dead_letters:
                poison["dead_lettered"] += 1
            elif key in ends:
                issues.append(f"poison item {key} ended successfully: it was not poison")
            else:
                issues.append(f"poison item {key} was not dead-lettered")
            if n > config.max_attempts + 1:
                issues.append(
                    f"poison item {key} started {n} times (at most max_attempts + 1 ="
                    f" {config.max_attempts + 1} allowed)"
                )
        dead_not_poison = len(set(self.dead_letters) - set(poison_items))
        if dead_not_poison and not ({"kill", "stop", "netns", "redis", "proxy"} & set(self.kinds)):
            issues.append(
                f"{dead_not_poison} item(s) dead-lettered that were not poison, without any"
                " fault that expires leases"
            )

        self._measure_recovery(events, acks, poison_items, starts)
        fences, reaps = self._fencing_from_logs()
        return ChaosResult(
            config=config,
            kinds=self.kinds,
            skipped=self.skipped,
            elapsed=elapsed,
            faults=self.faults,
            report=report,
            issues=issues,
            fences=fences,
            reaps=reaps,
            stale_starts=stale_token_starts(events),
            worker_exits=dict(self.worker_exits),
            poison=poison,
            dead_not_poison=dead_not_poison,
            run_dir=str(self.run_dir),
            namespace=self.namespace,
        )

    def _spec(self) -> PlanSpec:
        return PlanSpec(self.config.seed, self.config.partitions, self.config.sub_keys)

    def _measure_recovery(
        self,
        events: list[Event],
        acks: list[Ack],
        poison_items: list[tuple[int, int]],
        starts: dict[tuple[int, int], list[float]],
    ) -> None:
        """Recovery time of each fault, from its injection:

        - kill, stop, netns: until every item in flight on the hit worker at the injection has
          ended where it can be recorded: run again by another worker, or ended by the hit
          worker once the fault was lifted (a cut host runs on but cannot report);
        - redis, proxy: until the first ack after the fault was lifted (the whole pipeline
          moves again: workers record, the ack loop offers and commits);
        - poison: until the poison item was dead-lettered;
        - producer: until the first ack by the restarted producer.
        """
        ended_by: dict[tuple[int, int], list[tuple[float, str]]] = defaultdict(list)
        for e in events:
            if e.kind == "e":
                ended_by[(e.partition, e.offset)].append((e.at, e.worker))
        queries: dict[str, list[float]] = defaultdict(list)
        for f in self.faults:
            for worker in f.workers:
                queries[worker].append(f.start)
            if f.kind in ("redis", "proxy", *LOSSY_KINDS):
                for worker in f.alive:
                    queries[worker].append(f.start)
        snapshots = in_flight_at(events, queries)
        ack_times = sorted(a.at for a in acks)
        poison_iter = iter(poison_items)
        for f in self.faults:
            if f.kind in WORKER_FAULTS:
                flying: set[tuple[int, int]] = set()
                for w in f.workers:
                    flying |= snapshots[(w, f.start)]
                f.in_flight = len(flying)
                done_at = []
                for key in flying:
                    # An end on the hit worker counts once it could be recorded: after the
                    # fault was lifted (a cut host runs its items but cannot report them).
                    candidates = [
                        max(at, f.end) if worker in f.workers else at
                        for at, worker in ended_by.get(key, [])
                        if at > f.start
                    ]
                    if key in self.dead_letters:
                        candidates.append(self.dead_letters[key])
                    if candidates:
                        done_at.append(min(candidates))
                if flying and len(done_at) == len(flying):
                    f.recovery = max(done_at) - f.start
            elif f.kind in ("redis", "proxy", *LOSSY_KINDS):
                f.in_flight = sum(len(snapshots[(w, f.start)]) for w in f.alive)
                i = bisect.bisect_right(ack_times, f.end)
                if i < len(ack_times):
                    f.recovery = ack_times[i] - f.start
            elif f.kind == "poison":
                item = next(poison_iter, None)
                if item is not None:
                    f.target = f"p{item[0]} o{item[1]}"
                    f.in_flight = 1
                    first = starts.get(item)
                    if item in self.dead_letters and first:
                        f.recovery = self.dead_letters[item] - min(first)
            else:  # producer
                later = [a.at for a in acks if a.at > f.start]
                if later:
                    f.recovery = min(later) - f.start
        self._stop_fencing()

    def _stop_fencing(self) -> None:
        """For stop faults: did the paused worker log a refused write after SIGCONT?"""
        lines_by_worker: dict[str, list[float]] = defaultdict(list)
        for slot in self.slots:
            for when, worker in _lease_lost_lines(slot.log_path, slot.names):
                lines_by_worker[worker].append(when)
        for f in self.faults:
            if f.kind != "stop" or not f.workers:
                continue
            wall_end = f.end + self.clock_offset
            f.fenced = any(t >= wall_end - 0.01 for t in lines_by_worker.get(f.workers[0], []))

    def _fencing_from_logs(self) -> tuple[dict[str, int], int]:
        fences = {"completion": 0, "failure record": 0, "lease renewal": 0}
        reaps = 0
        for slot in self.slots:
            try:
                text = slot.log_path.read_text(errors="replace")
            except OSError:
                continue
            for match in _FENCED.finditer(text):
                fences[match.group(1)] = fences.get(match.group(1), 0) + 1
            reaps += text.count("reclaimed an expired lease")
        return fences, reaps


class SkipRun(Exception):
    """Nothing to run here (e.g. only netns faults were asked for, without root)."""


_FENCED = re.compile(r"lease lost: (completion|failure record|lease renewal) rejected")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _lease_lost_lines(path: Path, names: list[str]) -> Iterator[tuple[float, str]]:
    """(wall time, worker id) of each 'lease lost' line of a slot's log."""
    current = ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("=== harness: start "):
            current = line.split()[3]
            continue
        if "lease lost:" not in line:
            continue
        match = _LOG_TIME.match(line)
        if match and current in names:
            moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            yield moment.timestamp() + int(match.group(2)) / 1000, current


def in_flight_at(
    events: list[Event], queries: dict[str, list[float]]
) -> dict[tuple[str, float], set[tuple[int, int]]]:
    """For each (worker, time): the items that worker had started and not ended by then."""
    by_worker: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_worker[e.worker].append(e)
    out: dict[tuple[str, float], set[tuple[int, int]]] = {}
    for worker, times in queries.items():
        flying: set[tuple[int, int]] = set()
        worker_events = by_worker.get(worker, [])
        i = 0
        for t in sorted(times):
            while i < len(worker_events) and worker_events[i].at <= t:
                e = worker_events[i]
                key = (e.partition, e.offset)
                if e.kind == "s":
                    flying.add(key)
                else:
                    flying.discard(key)
                i += 1
            out[(worker, t)] = set(flying)
    return out


def stale_token_starts(events: list[Event]) -> int:
    """Starts by a worker whose lease had already been given to another (a smaller token than
    an earlier start of the same sub key): work that fencing keeps from being recorded."""
    highest: dict[tuple[int, Any], int] = {}
    stale = 0
    for e in events:
        if e.kind != "s" or e.sub_key is None:
            continue
        key = (e.partition, e.sub_key)
        if e.token < highest.get(key, -1):
            stale += 1
        else:
            highest[key] = e.token
    return stale


def read_acks(path: Path) -> list[Ack]:
    acks: list[Ack] = []
    if not path.exists():
        return acks
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            acks.append(Ack(int(parts[0]), int(parts[1]), float(parts[2]), parts[3]))
    return acks


def read_poison(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out.append((int(parts[0]), int(parts[1])))
    return out


# --- tables --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@dataclass
class KindRow:
    kind: str
    runs: int = 0
    faults: int = 0
    in_flight: int = 0
    recoveries: list[float] = field(default_factory=list)
    unmeasured: int = 0

    def add(self, f: FaultRecord) -> None:
        self.faults += 1
        self.in_flight += f.in_flight
        if f.recovery is None:
            self.unmeasured += 1
        else:
            self.recoveries.append(f.recovery)


def kind_rows(faults: Sequence[FaultRecord]) -> list[KindRow]:
    rows: dict[str, KindRow] = {}
    for f in faults:
        rows.setdefault(f.kind, KindRow(f.kind)).add(f)
    return [rows[k] for k in KNOWN_KINDS if k in rows]


def summary_table(result: ChaosResult) -> str:
    r = result.report
    lines = [
        f"{'fault':9} {'injected':>8} {'in flight':>9} {'recovery p50':>12} {'p99':>7}"
        f" {'max':>7} {'unmeasured':>10}"
    ]
    rows = kind_rows(result.faults)
    everything = KindRow("all")
    for f in result.faults:
        everything.add(f)
    for row in [*rows, everything]:
        lines.append(
            f"{row.kind:9} {row.faults:>8} {row.in_flight:>9}"
            f" {_secs(percentile(row.recoveries, 50)):>12}"
            f" {_secs(percentile(row.recoveries, 99)):>7}"
            f" {_secs(max(row.recoveries) if row.recoveries else None):>7} {row.unmeasured:>10}"
        )
    stops = [f for f in result.faults if f.kind == "stop"]
    fenced = sum(1 for f in stops if f.fenced)
    exits = ", ".join(f"{k} {v}" for k, v in sorted(result.worker_exits.items())) or "none"
    lines += [
        "",
        f"items      accepted {r.accepted}, finished {r.finished} (dead-lettered"
        f" {r.dead_lettered}: poison {result.poison['dead_lettered']}, other"
        f" {result.dead_not_poison}), lost {len(r.lost)}",
        f"order      violations {len(r.order_violations)}",
        f"watermark  violations {len(r.watermark_violations)} (re-acks by a restarted producer"
        f" {r.reacks})",
        f"re-runs    {r.reruns} of {r.starts} starts; items in flight at faults"
        f" {everything.in_flight}; starts by a worker that had lost its lease"
        f" {result.stale_starts}",
        f"fencing    rejected: completions {result.fences.get('completion', 0)}, failure records"
        f" {result.fences.get('failure record', 0)}, renewals"
        f" {result.fences.get('lease renewal', 0)}; leases reaped {result.reaps}"
        + (f"; paused workers fenced after SIGCONT {fenced}/{len(stops)}" if stops else ""),
        f"poison     {result.poison['items']} items, {result.poison['crashes']} crashes, at most"
        f" {result.poison['max_starts']} starts per item",
        f"workers    exits: {exits}",
    ]
    for name, items in (
        ("lost", [str(x) for x in r.lost]),
        ("order", r.order_violations),
        ("watermark", r.watermark_violations),
        ("issue", result.issues),
    ):
        for text in items[:5]:
            lines.append(f"  {name}: {text}")
        if len(items) > 5:
            lines.append(f"  ... {len(items) - 5} more {name} entries")
    verdict = "PASS" if result.ok else f"FAIL ({result.violations} violations)"
    lines.append(
        f"RESULT     {verdict} in {result.elapsed:.0f}s; repeat: {result.config.command()}"
    )
    if not result.ok or result.dead_not_poison:
        lines.append(f"           run dir kept: {result.run_dir}")
    return "\n".join(lines)


# --- the soak ------------------------------------------------------------------------------------


def soak_configs(base_seed: int, scale: float, kinds: Sequence[str]) -> list[ChaosConfig]:
    """Each kind alone (two runs), then all kinds together (two runs): over 1,000 faults."""
    per_kind = {"kill": 80, "stop": 75, "redis": 80, "proxy": 75, "netns": 75, "poison": 40}
    per_kind["producer"] = 40
    configs = []
    seed = base_seed
    for kind in kinds:
        for _ in range(2):
            count = max(1, round(per_kind.get(kind, 40) * scale))
            configs.append(ChaosConfig(faults=(kind,), fault_count=count, seed=seed))
            seed += 1
        if kind == "poison":  # and with no other item sharing the crashing process
            count = max(1, round(per_kind[kind] * scale))
            configs.append(
                ChaosConfig(
                    faults=(kind,),
                    fault_count=count,
                    seed=seed,
                    concurrency=1,
                    label="poison, concurrency 1",
                )
            )
            seed += 1
    for _ in range(2):
        configs.append(
            ChaosConfig(
                faults=tuple(kinds),
                fault_count=max(1, round(150 * scale)),
                seed=seed,
                label="all kinds together",
            )
        )
        seed += 1
    return configs


def soak_table(results: Sequence[ChaosResult]) -> str:
    """The markdown table of docs/reliability.md: one row per kind, and all kinds together."""
    groups: dict[str, list[ChaosResult]] = defaultdict(list)
    for result in results:
        label = result.config.label or ",".join(result.kinds)
        groups[label].append(result)
    header = (
        "| faults | runs | injected | items | lost | order violations | watermark violations |"
        " re-runs (in flight at faults) | dead-lettered, not poison | other violations |"
        " recovery p50 | recovery p99 | reproduce |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [header]
    total = KindRow("total")
    totals: dict[str, int] = defaultdict(int)
    for label, group in groups.items():
        row = KindRow(label)
        for result in group:
            for f in result.faults:
                row.add(f)
                total.add(f)
        items = sum(r.report.accepted for r in group)
        lost = sum(len(r.report.lost) for r in group)
        order = sum(len(r.report.order_violations) for r in group)
        water = sum(len(r.report.watermark_violations) for r in group)
        reruns = sum(r.report.reruns for r in group)
        innocent = sum(r.dead_not_poison for r in group)
        other = sum(len(r.issues) for r in group)
        for name, value in (
            ("runs", len(group)),
            ("items", items),
            ("lost", lost),
            ("order", order),
            ("water", water),
            ("reruns", reruns),
            ("innocent", innocent),
            ("other", other),
        ):
            totals[name] += value
        commands = "<br>".join(f"`{r.config.command()}`" for r in group)
        lines.append(
            f"| {label} | {len(group)} | {row.faults} | {items} | {lost} | {order} | {water} |"
            f" {reruns} ({row.in_flight}) | {innocent} | {other} |"
            f" {_secs(percentile(row.recoveries, 50))} |"
            f" {_secs(percentile(row.recoveries, 99))} | {commands} |"
        )
    lines.append(
        f"| **total** | {totals['runs']} | {total.faults} | {totals['items']} |"
        f" {totals['lost']} | {totals['order']} | {totals['water']} | {totals['reruns']}"
        f" ({total.in_flight}) | {totals['innocent']} | {totals['other']} |"
        f" {_secs(percentile(total.recoveries, 50))} |"
        f" {_secs(percentile(total.recoveries, 99))} | `./scripts/chaos --soak` |"
    )
    findings = [(r, issue) for r in results for issue in r.issues]
    if findings:
        lines += ["", "Other violations:", ""]
        for r, issue in findings[:40]:
            lines.append(f"- seed {r.config.seed} ({','.join(r.kinds)}): {issue}")
        if len(findings) > 40:
            lines.append(f"- ... {len(findings) - 40} more")
    by_kind = kind_rows([f for r in results for f in r.faults])
    lines += [
        "",
        "Recovery by fault kind over every run (from the injection):",
        "",
        "| fault kind | injected | recovery p50 | recovery p99 | max | not measurable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kr in by_kind:
        lines.append(
            f"| {kr.kind} | {kr.faults} | {_secs(percentile(kr.recoveries, 50))} |"
            f" {_secs(percentile(kr.recoveries, 99))} |"
            f" {_secs(max(kr.recoveries) if kr.recoveries else None)} | {kr.unmeasured} |"
        )
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------


def parse_kinds(text: str) -> tuple[str, ...]:
    if text == "all":
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in KNOWN_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown fault kind {kind!r}; choose from {', '.join(KNOWN_KINDS)} or all"
            )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    d = ChaosConfig()
    p = argparse.ArgumentParser(
        prog="scripts/chaos",
        description="Inject real faults into a WorkShaper fleet and audit the invariants.",
        epilog=f"fault kinds: {', '.join(FAULT_KINDS)} (all), and outside the guarantees"
        f" {', '.join(LOSSY_KINDS)}. Exit status 1 on any violation.",
    )
    p.add_argument("--faults", type=parse_kinds, default=d.faults, help="kinds, comma separated")
    p.add_argument("--fault-count", type=int, default=d.fault_count, help="faults to inject")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--lease", type=float, default=d.lease)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--sub-keys", type=int, default=d.sub_keys)
    p.add_argument("--rate", type=float, default=d.rate, help="items per second offered")
    p.add_argument("--max-in-queue", type=int, default=d.max_in_queue)
    p.add_argument("--work-delay", type=float, default=d.work_delay, help="max seconds per item")
    p.add_argument("--gap", type=float, nargs=2, default=d.gap, metavar=("MIN", "MAX"))
    p.add_argument("--appendfsync", choices=["always", "everysec"], default=d.appendfsync)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    p.add_argument("--run-dir", type=Path, default=None, help="keep the run's files here")
    p.add_argument("--keep", action="store_true", help="keep the run dir even when it passes")
    p.add_argument("--json", type=Path, default=None, help="write the result(s) as JSON")
    p.add_argument("--quiet", action="store_true", help="only the final table")
    p.add_argument(
        "--soak",
        action="store_true",
        help="every kind alone and all together, over 1,000 faults (about an hour)",
    )
    p.add_argument("--soak-scale", type=float, default=1.0, help="multiply the soak's faults")
    p.add_argument("--markdown", type=Path, default=None, help="--soak: write the table here")
    return p


def _config_from(args: argparse.Namespace) -> ChaosConfig:
    return ChaosConfig(
        faults=args.faults,
        fault_count=args.fault_count,
        max_seconds=args.max_seconds,
        seed=args.seed,
        workers=args.workers,
        concurrency=args.concurrency,
        lease=args.lease,
        max_attempts=args.max_attempts,
        batch_size=args.batch_size,
        partitions=args.partitions,
        sub_keys=args.sub_keys,
        rate=args.rate,
        max_in_queue=args.max_in_queue,
        work_delay=args.work_delay,
        gap=(args.gap[0], args.gap[1]),
        appendfsync=args.appendfsync,
        drain_timeout=args.drain_timeout,
        run_dir=args.run_dir,
        keep=args.keep,
    )


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_once(config: ChaosConfig, out: TextIO | None) -> ChaosResult | None:
    harness = Harness(config, out)
    try:
        return harness.run()
    except SkipRun as skip:
        if out is not None:
            print(f"chaos: skipped: {skip}", file=out)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["producer"]:
        return producer_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_on_signal)
    progress = None if args.quiet else sys.stdout
    results: list[ChaosResult] = []
    if args.soak:
        configs = soak_configs(args.seed, args.soak_scale, args.faults)
        print(
            f"chaos soak: {len(configs)} runs, {sum(c.fault_count for c in configs)} faults",
            flush=True,
        )
        crashed = 0
        for config in configs:
            try:
                result = run_once(config, progress)
            except Exception:  # a harness failure must not cost the runs done so far
                crashed += 1
                print(f"chaos: run {config.command()} crashed:", flush=True)
                traceback.print_exc()
                continue
            if result is None:
                continue
            results.append(result)
            print(summary_table(result), flush=True)
            table = soak_table(results)
            if args.markdown is not None:
                args.markdown.write_text(table + "\n")
            if args.json is not None:
                args.json.write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
        print(soak_table(results))
        if crashed:
            print(f"chaos: {crashed} run(s) crashed")
            return 1
    else:
        result = run_once(_config_from(args), progress)
        if result is not None:
            results.append(result)
            print(summary_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("chaos: interrupted; everything it started was stopped", file=sys.stderr)
        sys.exit(130)
