"""Worker "hosts" in their own network namespaces, so the chaos harness can cut one off the net.

Layout (root only, needs the ``ip`` command)::

    root namespace: bridge wc<pid>x<n>b  10.213.K.1/24  <- Redis (or the proxy) listens here too
      |-- veth wc<pid>x<n>h0  ==  wc<pid>x<n>p0  10.213.K.10/24 in namespace wc<pid>x<n>n0
      |-- veth wc<pid>x<n>h1  ==  wc<pid>x<n>p1  10.213.K.11/24 in namespace wc<pid>x<n>n1
      ...

A process started with ``exec_prefix(i)`` lives on host ``i`` and reaches Redis at
``gateway``. ``cut(i)`` takes the host's link down (packets are dropped; TCP connections stay
open and retransmit, exactly as when a cable or a switch port dies), ``restore(i)`` brings it
back. Names carry the creating process id, so ``cleanup_stale()`` can remove what a killed
harness left behind without touching the namespaces of a harness still running.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import shutil
import subprocess

#: Third octet range for the 10.213.K.0/24 subnets of harnesses.
_SUBNET_OCTETS = range(1, 255)
_NAME = re.compile(r"^wc([0-9a-f]+)x")
_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"wc{os.getpid():x}xprobe"
    try:
        _ip("netns", "add", probe)
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    with contextlib.suppress(NetnsError, OSError, subprocess.SubprocessError):
        _ip("netns", "del", probe)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1), 16) if match else None


def cleanup_stale() -> list[str]:
    """Delete namespaces and links left by harness processes that no longer run."""
    removed: list[str] = []
    if unavailable_reason() is not None:
        return removed
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner_pid(name)
        if pid is not None and not _alive(pid):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        pid = _owner_pid(name)
        if pid is not None and not _alive(pid):
            _ip("link", "del", name, check=False)
            removed.append(name)
    return removed


def _used_octets() -> set[int]:
    used = set()
    for match in re.finditer(
        r"inet 10\.213\.(\d+)\.", _ip("-4", "-o", "addr", "show", check=False)
    ):
        used.add(int(match.group(1)))
    return used


class HostNetwork:
    """``hosts`` network namespaces bridged to the root namespace (see the module doc)."""

    def __init__(self, hosts: int, *, rng: random.Random | None = None) -> None:
        if not 1 <= hosts <= 99:
            raise ValueError(f"hosts must be between 1 and 99, got {hosts}")
        self.hosts = hosts
        self.tag = f"wc{os.getpid():x}x{next(_counter) % 36:x}"
        self.bridge = f"{self.tag}b"
        self._rng = rng or random.Random()
        self.octet = 0
        self.gateway = ""
        self._made_bridge = False
        self._made: list[int] = []
        self._down: set[int] = set()

    def namespace(self, host: int) -> str:
        return f"{self.tag}n{host}"

    def _host_link(self, host: int) -> str:
        return f"{self.tag}h{host}"

    def _peer_link(self, host: int) -> str:
        return f"{self.tag}p{host}"

    def address(self, host: int) -> str:
        return f"10.213.{self.octet}.{10 + host}"

    def exec_prefix(self, host: int) -> list[str]:
        """argv prefix that runs a command on ``host`` (``ip netns exec`` keeps the pid)."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def setup(self) -> HostNetwork:
        free = sorted(set(_SUBNET_OCTETS) - _used_octets())
        if not free:
            raise NetnsError("no free 10.213.K.0/24 subnet")
        self.octet = self._rng.choice(free)
        self.gateway = f"10.213.{self.octet}.1"
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for host in range(self.hosts):
                self._add_host(host)
        except BaseException:
            self.teardown()
            raise
        return self

    def _add_host(self, host: int) -> None:
        ns, outer, inner = self.namespace(host), self._host_link(host), self._peer_link(host)
        _ip("netns", "add", ns)
        self._made.append(host)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")

    def cut(self, host: int) -> None:
        """Take the host's link down: its packets are dropped until restore()."""
        _ip("link", "set", self._host_link(host), "down")
        self._down.add(host)

    def restore(self, host: int) -> None:
        _ip("link", "set", self._host_link(host), "up")
        self._down.discard(host)

    def is_cut(self, host: int) -> bool:
        return host in self._down

    def teardown(self) -> None:
        """Remove every namespace and link made (stop the processes inside first)."""
        for host in self._made:
            _ip("netns", "del", self.namespace(host), check=False)
            _ip("link", "del", self._host_link(host), check=False)
        self._made = []
        self._down = set()
        if self._made_bridge:
            _ip("link", "del", self.bridge, check=False)
            self._made_bridge = False

    def __enter__(self) -> HostNetwork:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()
