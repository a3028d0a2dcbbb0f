"""Helpers for tests, the chaos harness and benchmarks: private redis-server processes.

Tests that stop, pause or reconfigure Redis must never touch a shared server; they start their
own here, in a temp dir on a free port, and stop it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

# Ports handed out lie below the kernel's ephemeral range: a client reconnecting to a server
# that is down can be given the server's own port as its local port (TCP self-connect) when
# that port is ephemeral, and a restart on that port then fails to bind.
LOW_PORT = 20000
_ports = random.Random()  # unseeded on purpose: parallel test processes must not collide


def ephemeral_ports() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(low, high + 1)


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range where possible."""
    ephemeral = ephemeral_ports()
    top = min(ephemeral.start, 65536)
    for _ in range(200):
        port = _ports.randrange(LOW_PORT, top) if top > LOW_PORT else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port below the ephemeral range")


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """A redis-server child process with its own port and data dir."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        appendfsync: str = "always",
        password: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="workshaper-redis-"))
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.extra = extra or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start and wait until ready; a port held for a moment by someone else (see LOW_PORT)
        is waited for, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(
                self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                self.wait_ready(max(0.1, deadline - time.monotonic()))
                return self
            except RuntimeError:
                if not self._port_was_taken() or time.monotonic() >= deadline:
                    self.kill()  # not ready in time: leave no server running behind
                    raise
            time.sleep(0.1)

    def _port_was_taken(self) -> bool:
        if self.process is None or self.process.poll() is None:
            return False
        log = self.data_dir / "redis.log"
        try:
            return "Address already in use" in log.read_text(errors="replace")[-2000:]
        except OSError:
            return False

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            **kwargs,  # type: ignore[arg-type]
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with self.client(socket_timeout=1) as c:
                    if c.ping():
                        c.execute_command("SCRIPT", "EXISTS", "0" * 40)  # refuses while LOADING
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                last = exc
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready: {last}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (AOF always has fsynced each write)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self, timeout: float = 20.0) -> None:
        """Kill and start again on the same port and data dir."""
        self.kill()
        self.start(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
