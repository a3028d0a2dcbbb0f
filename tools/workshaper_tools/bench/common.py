"""Shared pieces of the scenarios: plans, worker processes, Redis counters, statistics."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from workshaper_tools.bench.handlers import Record, read_dumps
from workshaper_tools.bench.verify import Plan
from workshaper_tools.testing.redis_server import RedisServer

#: Seed of every plan: the same items, keys and sleeps in every run.
SEED = 20240404
#: Bytes of a no-op item's message (S1: "about 100 bytes").
MESSAGE_BYTES = 100


#: Starts ``workshaper-worker`` of whichever workshaper is first on the path: ``--compare``
#: runs trees from before the command line became a package (``workshaper/cli.py``) too.
WORKER_MAIN = (
    "import sys\n"
    "try:\n"
    "    from workshaper.cli.worker import worker_main\n"
    "except ModuleNotFoundError as exc:\n"
    "    if exc.name != 'workshaper.cli.worker':\n"
    "        raise\n"
    "    from workshaper.cli import worker_main\n"
    "worker_main(sys.argv[1:])\n"
)


def output_in_tree(tree: Path, module: str, argv: list[str]) -> str:
    """Stdout of ``python -m module *argv`` with ``tree``'s workshaper and this clone's bench,
    in a fresh process: one side of a before / after run. Its cwd is ``tree``, as ``-m`` puts
    the cwd ahead of PYTHONPATH (run from another clone, it would import that one's)."""
    tools = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(tools)]))
    done = subprocess.run(
        [sys.executable, "-m", module, *argv],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def worker_command() -> list[str]:
    """argv that starts ``workshaper-worker`` with this interpreter (no PATH lookup)."""
    return [sys.executable, "-c", WORKER_MAIN]


class BenchFailure(Exception):
    """A run broke an invariant, lost items, or could not finish: the bench exits non-zero."""


# --- plans ------------------------------------------------------------------------------------


@dataclass
class Items:
    """A plan and the tuples ``Producer.enqueue_many`` takes."""

    plan: Plan
    tuples: list[tuple[Any, Any, int, int]]

    def __len__(self) -> int:
        return len(self.tuples)


def message_pool(count: int = 64, size: int = MESSAGE_BYTES, seed: int = SEED) -> list[bytes]:
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    return [bytes(rng.choice(alphabet) for _ in range(size)) for _ in range(count)]


def plan_noop(
    items: int, partitions: int, sub_keys: int, seed: int = SEED, *, random_partition: bool = False
) -> Items:
    """``items`` no-op items: sub key k uniform in [0, sub_keys), partition = k % partitions
    (like Kafka's key -> partition), about 100-byte messages, offsets with gaps per partition.
    ``sub_keys`` 0: one sub key per item (item i has key i: every lease holds one item).
    ``random_partition``: the partition is drawn per item too, so a key lands in every
    partition (about partitions x sub_keys (partition, sub key) pairs)."""
    rng = random.Random(seed)
    pool = message_pool()
    next_offset = [0] * partitions
    subs: list[Any] = []
    parts: list[int] = []
    offs: list[int] = []
    tuples: list[tuple[Any, Any, int, int]] = []
    for i in range(items):
        k = rng.randrange(sub_keys) if sub_keys else i
        p = rng.randrange(partitions) if random_partition else k % partitions
        next_offset[p] += 1 if i % 7 else 2  # a gap now and then, like a compacted topic
        sub = f"k{k}"
        subs.append(sub)
        parts.append(p)
        offs.append(next_offset[p])
        tuples.append((sub, pool[i % len(pool)], p, next_offset[p]))
    return Items(Plan(subs, parts, offs), tuples)


# --- processes --------------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis(extra: list[str] | None = None) -> Iterator[RedisServer]:
    """A redis-server of the bench alone (never the shared one): free port, temp dir."""
    server = RedisServer(extra=extra).start()
    try:
        yield server
    finally:
        server.stop()


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(extra)
    return env


class WorkerFleet:
    """``workshaper-worker`` processes running a bench handler; records land in ``dump_dir``."""

    def __init__(
        self,
        url: str,
        namespace: str,
        handler: str,
        *,
        processes: int,
        concurrency: int | None,
        batch_size: int | None = None,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self._env = env or {}
        self.namespace = namespace
        self.dump_dir = Path(tempfile.mkdtemp(prefix="ws-bench-records-", dir=log_dir))
        self._log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        argv = [
            *worker_command(),
            handler,
            "--redis",
            url,
            "--namespace",
            namespace,
            "--log-level",
            "WARNING",
        ]
        if concurrency is not None:  # None: the worker's default
            argv += ["--concurrency", str(concurrency)]
        if batch_size is not None:
            argv += ["--batch-size", str(batch_size)]
        self._argv = argv
        self._processes = processes
        self.peak_rss_kib: list[int] = []

    def start(self, timeout: float = 60.0) -> WorkerFleet:
        env = bench_env(WS_BENCH_DIR=str(self.dump_dir), **self._env)
        for i in range(self._processes):
            log = self._log_dir / f"worker-{self.namespace}-{i}.log"
            self._logs.append(log)
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(self._argv, stdout=out, stderr=subprocess.STDOUT, env=env)
                )
        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + timeout
            key = f"ws:{{{self.namespace}}}:workers"
            while client.hlen(key) < self._processes:
                if any(p.poll() is not None for p in self.procs):
                    raise BenchFailure(f"a worker exited at start:\n{self.logs_tail()}")
                if time.monotonic() > deadline:
                    raise BenchFailure(f"workers not registered in {timeout}s:\n{self.logs_tail()}")
                time.sleep(0.02)
        finally:
            client.close()
        return self

    def exited(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, timeout: float = 60.0) -> list[Record]:
        """SIGTERM (graceful drain), wait, then read every worker's records."""
        for p in self.procs:
            if p.poll() is None:
                self.peak_rss_kib.append(peak_rss_kib(p.pid))
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
                raise BenchFailure(f"a worker did not stop in {timeout}s") from None
        return read_dumps(self.dump_dir)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def logs_tail(self, lines: int = 20) -> str:
        out = []
        for log in self._logs:
            with contextlib.suppress(OSError):
                out.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-lines:]))
        return "\n".join(out)


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB; 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (0.0 when gone)."""
    return _stat_cpu(f"/proc/{pid}/stat")


def thread_cpu_seconds(native_id: int) -> float:
    """utime + stime of a live thread of this process (0.0 when gone). /proc/<tid>/stat
    would count the whole process: a thread's own is under task/."""
    return _stat_cpu(f"/proc/self/task/{native_id}/stat")


def _stat_cpu(path: str) -> float:
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_command() -> list[str]:
    return [sys.executable]


# --- Redis counters ---------------------------------------------------------------------------


@dataclass
class RedisSnapshot:
    """``INFO`` counters at one moment: commands by name, CPU seconds, reads, memory."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu: float  # used_cpu_user + used_cpu_sys, seconds
    reads: int  # total_reads_processed: socket reads, about one per round trip
    commands: int  # total_commands_processed (top-level, scripts count once)
    used_memory: int
    net_in: int

    @classmethod
    def take(cls, client: redis.Redis) -> RedisSnapshot:
        stats: dict[str, Any] = client.info("commandstats")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for name, value in stats.items():
            command = name.removeprefix("cmdstat_")
            calls[command] = int(value["calls"])
            usec[command] = int(value["usec"])
        info: dict[str, Any] = client.info("all")
        return cls(
            calls,
            usec,
            float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            int(info.get("total_reads_processed", 0)),
            int(info["total_commands_processed"]),
            int(info["used_memory"]),
            int(info["total_net_input_bytes"]),
        )


@dataclass
class RedisCost:
    """What Redis did between two snapshots (the INFO calls themselves subtracted)."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu_seconds: float
    reads: int
    commands: int
    net_in: int

    @classmethod
    def between(cls, before: RedisSnapshot, after: RedisSnapshot) -> RedisCost:
        calls = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()}
        usec = {k: v - before.usec.get(k, 0) for k, v in after.usec.items()}
        calls["info"] = calls.get("info", 0) - 2  # the two INFO calls of `take`
        calls = {k: v for k, v in calls.items() if v > 0}
        return cls(
            calls,
            {k: usec.get(k, 0) for k in calls},
            after.cpu - before.cpu,
            after.reads - before.reads - 2,
            after.commands - before.commands - 2,
            after.net_in - before.net_in,
        )

    @property
    def all_calls(self) -> int:
        """Commands run, counting each command a Lua script ran (commandstats does)."""
        return sum(self.calls.values())


# --- statistics -------------------------------------------------------------------------------


def redis_cpu_seconds(client: redis.Redis) -> float:
    """The server's CPU seconds so far (user + system), from ``INFO cpu``."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def paced(
    positions: list[int], t0: float, rate: float, lag: list[float], called: list[float]
) -> Iterator[int]:
    """S3's fixed schedule: yields each index of ``positions`` once its item is due (position
    p at ``t0 + p / rate``, CLOCK_MONOTONIC), sleeping until then; a producer behind schedule
    sends at once. Appends how late each item was to ``lag`` and when its call began to
    ``called``."""
    monotonic, sleep = time.monotonic, time.sleep
    for index, position in enumerate(positions):
        due = t0 + position / rate
        now = monotonic()
        if due > now:
            sleep(due - now)
            now = monotonic()
        lag.append(now - due)
        called.append(now)
        yield index


def joined(proc: Any, deadline: float) -> bool:
    """Wait for the multiprocessing process ``proc`` until ``deadline`` (CLOCK_MONOTONIC);
    did it exit with 0?"""
    proc.join(max(0.1, deadline - time.monotonic()))
    return not proc.is_alive() and proc.exitcode == 0


def kill_all(procs: Sequence[Any]) -> None:
    """Kill every multiprocessing process of ``procs`` still alive, and reap it."""
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_stats(values: Sequence[float]) -> dict[str, float]:
    """S3's summary of one latency distribution (seconds): p50 to max, and the count."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "p99.9": percentile(values, 99.9),
        "max": max(values) if values else float("nan"),
        "count": len(values),
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class Timer:
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def say(text: str) -> None:
    print(text, flush=True)
