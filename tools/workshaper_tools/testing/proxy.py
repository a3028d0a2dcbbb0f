"""A TCP proxy between clients and Redis that can cut, stall and slow the connections.

The chaos harness points every client at the proxy instead of at Redis, then switches modes:

- ``pass``: bytes flow both ways unchanged.
- ``drop``: every open connection is reset at once (RST), and new connections are reset right
  after they are accepted, until the mode changes: what clients see when a link or a load
  balancer dies.
- ``stall``: connections stay open but no byte moves either way (new connections are accepted
  and held): what clients see in a network partition. Bytes read meanwhile are delivered, in
  order, when the stall ends.
- ``slow``: each chunk is delivered ``delay`` seconds after it was read, in order.

The proxy runs an asyncio event loop on a daemon thread; the control methods are thread safe
and return once the mode is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

#: Bytes read from one side per chunk.
CHUNK = 65536
MODES = ("pass", "drop", "stall", "slow")


@dataclass
class ProxyStats:
    accepted: int = 0  # client connections accepted
    refused: int = 0  # connections reset because of drop mode or an unreachable upstream
    reset: int = 0  # open connections reset by drop()
    bytes_up: int = 0  # client -> upstream, delivered
    bytes_down: int = 0  # upstream -> client, delivered
    read_up: int = 0  # client -> upstream, read from clients (held while stalled)


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ChaosProxy:
    """Forwards ``listen_hosts``:``port`` to ``upstream_host``:``upstream_port``."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_hosts: Sequence[str] = ("127.0.0.1",),
        port: int = 0,
    ) -> None:
        if not listen_hosts:
            raise ValueError("listen_hosts must name at least one address")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_hosts = list(listen_hosts)
        self.port = port
        self.stats = ProxyStats()
        self._mode = "pass"
        self._delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None  # set unless stalled

    # --- control (any thread) ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def url(self, host: str | None = None, db: int = 0) -> str:
        """A Redis URL that reaches the upstream through this proxy."""
        return f"redis://{host or self.listen_hosts[0]}:{self.port}/{db}"

    def start(self) -> ChaosProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy was started already")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, name="chaos-proxy", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and the listeners; stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._loop = None
        self._thread = None

    def set_pass(self) -> None:
        """Forward normally (ends drop, stall and slow)."""
        self._call(self._set_mode("pass", 0.0))

    def drop(self) -> None:
        """Reset every open connection, and reset new ones until the mode changes."""
        self._call(self._set_mode("drop", 0.0))

    def stall(self) -> None:
        """Hold every byte, both ways, until the mode changes."""
        self._call(self._set_mode("stall", 0.0))

    def slow(self, delay: float) -> None:
        """Deliver every chunk ``delay`` seconds after it was read."""
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self._call(self._set_mode("slow", delay))

    def set_upstream(self, host: str, port: int) -> None:
        """Send new connections to another server (open ones stay where they are)."""
        self._call(self._set_upstream(host, port))

    def connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> ChaosProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the event loop thread ---------------------------------------------------------------

    def _serve(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        for host in self.listen_hosts:
            server = await asyncio.start_server(self._accept, host, self.port, reuse_address=True)
            self._servers.append(server)
            if self.port == 0:
                self.port = int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [t for link in list(self._links) for t in link.tasks]
        for link in list(self._links):
            self._close(link, reset=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._flowing is not None:
            self._flowing.set()

    async def _set_upstream(self, host: str, port: int) -> None:
        self.upstream_host, self.upstream_port = host, port

    async def _set_mode(self, mode: str, delay: float) -> None:
        assert self._flowing is not None
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self._mode, self._delay = mode, delay
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "drop":
            for link in list(self._links):
                self.stats.reset += 1
                self._close(link, reset=True)

    def _close(self, link: _Link, *, reset: bool) -> None:
        for writer in (link.client, link.upstream):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._mode == "drop":
            self.stats.refused += 1
            _reset(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            self.stats.refused += 1
            self._close(link, reset=True)
            return
        if link not in self._links:  # dropped while connecting
            _reset(up_writer)
            return
        link.upstream = up_writer
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, up=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, up=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                read_at = time.monotonic()
                if up:
                    self.stats.read_up += len(data)
                await self._flowing.wait()
                if self._mode == "slow":
                    wait = read_at + self._delay - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._flowing.wait()  # a stall may have begun meanwhile
                if link not in self._links:
                    return
                writer.write(data)
                await writer.drain()
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return
        if link in self._links:
            self._close(link, reset=False)
