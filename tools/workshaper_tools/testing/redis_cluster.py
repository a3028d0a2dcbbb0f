"""A private Redis Cluster for tests: ``redis-server --cluster-enabled yes`` processes on free
loopback ports in one temp dir, joined by ``redis-cli --cluster create``; stopped and removed
by ``stop``, whatever happened."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from workshaper_tools.testing.redis_server import RedisServer


def redis_cli_binary() -> str | None:
    return shutil.which("redis-cli")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too; cluster nodes need a port
    <= 55535, below most systems' ephemeral range, so it is drawn at random, not from the OS."""
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 30000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            taken.add(port)
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """``masters`` primaries, each with ``replicas`` replicas. Node timeout 2 s: a replica is
    promoted about 2-3 s after its master died; shorter and a busy 2-core machine sees failures
    nobody caused."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        self.cli = cli
        self.dir = Path(tempfile.mkdtemp(prefix="workshaper-cluster-"))
        self.masters = masters
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        taken: set[int] = set()
        for _ in range(masters * (1 + replicas)):
            port = free_cluster_port(taken)
            data = self.dir / str(port)
            data.mkdir()
            self.servers.append(
                RedisServer(
                    port=port,
                    data_dir=data,
                    extra=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(data / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                    ],
                )
            )

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers[: self.masters])
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 60.0) -> RedisCluster:
        try:
            for server in self.servers:
                server.start()
            if len(self.servers) == 1:  # redis-cli creates clusters of 3 masters or more
                with self.servers[0].client() as c:
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
                self.wait_ok(timeout)
                return self
            self.cli_run(
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            )
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def cli_run(self, *args: str, timeout: float = 120.0) -> str:
        """Run redis-cli with ``args``; its output, or an error with that output."""
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def _state_ok(self) -> bool:
        """Every live node says cluster_state:ok and knows the same slot owners, and every
        replica is in sync with its master."""
        views = set()
        for server in self.alive():
            try:
                with server.client(socket_timeout=2, decode_responses=True) as c:
                    if "cluster_state:ok" not in str(c.execute_command("CLUSTER", "INFO")):
                        return False
                    slots = c.execute_command("CLUSTER", "SLOTS")
                    replication = c.info("replication")
                    # A replica that never synced cannot take over (its data has no age).
                    if replication["role"] == "slave" and (
                        replication.get("master_link_status") != "up"
                    ):
                        return False
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                return False
            views.add(tuple(sorted((s[0], s[1], s[2][1]) for s in slots)))
        return len(views) == 1

    def wait_ok(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._state_ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster in {self.dir} not ok after {timeout}s")

    def node_id(self, server: RedisServer) -> str:
        with server.client(decode_responses=True) as c:
            return str(c.execute_command("CLUSTER", "MYID"))

    def master_of_slot(self, slot: int) -> RedisServer:
        """The live server that owns ``slot`` now."""
        for server in self.alive():
            with server.client(decode_responses=True) as c:
                for start, end, owner, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(owner[1])
                        return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no node owns slot {slot}")

    def migrate_slot(
        self, slot: int, target: RedisServer, keys_per_step: int = 2, pause: float = 0.01
    ) -> int:
        """Move ``slot`` to ``target`` live, as ``redis-cli --cluster reshard`` does (IMPORTING
        on the target, MIGRATING on the source, MIGRATE of its keys, then SETSLOT NODE
        everywhere), but a few keys per step with a pause, so clients meet the slot half moved
        (ASK and TRYAGAIN) for a while. Returns how many keys moved."""
        source = self.master_of_slot(slot)
        if source.port == target.port:
            return 0
        source_id, target_id = self.node_id(source), self.node_id(target)
        moved = 0
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step)
                if not keys:
                    break
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
                time.sleep(pause)
            # The target first, then the source (as redis-cli does), then the other primaries
            # (replicas refuse SETSLOT; they learn it from their primaries).
            others = [s for s in self.primaries() if s.port not in (source.port, target.port)]
            for server in (target, source, *others):
                with server.client() as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def reshard(self, source: RedisServer, target: RedisServer, slots: int) -> str:
        """``redis-cli --cluster reshard``: move ``slots`` slots (the source's lowest) with
        their keys."""
        return self.cli_run(
            "--cluster",
            "reshard",
            f"127.0.0.1:{source.port}",
            "--cluster-from",
            self.node_id(source),
            "--cluster-to",
            self.node_id(target),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            "--cluster-pipeline",
            "2",
        )

    def primaries(self) -> list[RedisServer]:
        out = []
        for server in self.alive():
            with server.client(decode_responses=True) as c:
                if c.info("replication")["role"] == "master":
                    out.append(server)
        return out

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
