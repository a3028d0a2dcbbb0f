"""One-round-trip batches: many commands and scripts written on one connection, then every
reply read.

Scripts run with EVALSHA inside plain pipelines (no MULTI), so a batch of many scripts costs
one round trip. redis-py's ``Script`` objects would add a ``SCRIPT EXISTS`` round trip to every
pipeline; instead, on NOSCRIPT (a restarted or flushed server) the batch loads every script and
re-runs the commands that failed. Every script is idempotent, which also makes a re-sent batch
safe after a broken connection.

On a Redis Cluster a batch is split by the node that owns each command's slot (redis-py's
slot map): every node's share is written on its own connection, then every reply is read, so
the batch still costs one round trip. A command answered MOVED, ASK or TRYAGAIN (a slot moved
or moving: resharding, a failover) was not run; it is sent again through redis-py's cluster
client, which follows the redirection, waits out TRYAGAIN and updates the slot map. Every
script keeps all its keys in one slot (keys.py), so no command ever spans nodes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import hiredis
import redis

from workshaper.connection import Backend, is_transient
from workshaper.errors import ScriptError
from workshaper.lua_scripts import load_script, register_scripts

T = TypeVar("T")


class Reply(Generic[T]):
    """The answer of one command of a Batch, available after ``Batch.execute``."""

    __slots__ = ("_error", "_parse", "_ready", "_value")

    def __init__(self, parse: Callable[[Any], T]) -> None:
        self._parse = parse
        self._ready = False
        self._error: Exception | None = None
        self._value: Any = None

    def _set(self, raw: Any) -> None:
        self._ready = True
        if isinstance(raw, Exception):
            self._error = raw
        else:
            self._value = raw

    @property
    def error(self) -> Exception | None:
        """The error reply this command got, if any (None before the batch was executed)."""
        return self._error

    def get(self) -> T:
        if not self._ready:
            raise RuntimeError("Reply.get() before the batch was executed")
        if self._error is not None:
            raise ScriptError(str(self._error)) from self._error
        return self._parse(self._value)


def _identity(raw: Any) -> Any:
    return raw


class Link:
    """One connection kept by one thread for its batches (the coordinator, an ack loop, a
    producer): taking a pooled connection per round trip costs more than the round trip's own
    Python work in redis-py 8. Reconnects by itself after an error."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._conn: Any = None

    def connection(self) -> Any:
        if self.backend.cluster:
            raise RuntimeError("a cluster batch takes one connection per node, not a Link's")
        if self._conn is None:
            self._conn = self.backend.client.connection_pool.get_connection()
        return self._conn

    def broken(self) -> None:
        """The connection failed: drop it; the next batch opens a new one."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
                self.backend.client.connection_pool.release(self._conn)
            self._conn = None

    def batch(self) -> Batch:
        return Batch(self.backend, self)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self.backend.client.connection_pool.release(self._conn)
            self._conn = None


class Batch:
    """Commands sent together in one round trip (a non-transactional pipeline)."""

    def __init__(self, backend: Backend, link: Link | None = None) -> None:
        self._backend = backend
        self._link = link
        self._commands: list[tuple[tuple[Any, ...], Reply[Any]]] = []
        #: Embedded backend: the first key of each script here that may move a watermark.
        self._finishing: list[bytes] = []

    def __len__(self) -> int:
        return len(self._commands)

    def command(self, *args: Any, parse: Callable[[Any], T] = _identity) -> Reply[T]:
        reply: Reply[T] = Reply(parse)
        self._commands.append((args, reply))
        return reply

    def script(
        self,
        name: str,
        keys: Sequence[bytes],
        args: Iterable[Any],
        parse: Callable[[Any], T] = _identity,
        *,
        read_only: bool = False,
    ) -> Reply[T]:
        """``read_only``: EVALSHA_RO, which a read-only ACL user (``%R~`` keys) may run; the
        script must not write. (Embedded backends get EVALSHA: fakeredis has none; no ACLs.)"""
        command = "EVALSHA_RO" if read_only and not self._backend.embedded else "EVALSHA"
        if name in FINISHING_SCRIPTS and self._backend.server is not None:
            self._finishing.append(keys[0])
        sha = load_script(name).for_backend(self._backend)[1]
        return self.command(command, sha, len(keys), *keys, *args, parse=parse)

    def execute(self) -> None:
        """Send everything; every Reply gets its raw answer (or its own error).

        A transient server state (loading its data after a restart, busy, failing over) raises
        for the whole batch, before any Reply is set: the caller sends it all again later, which
        is safe because every script is idempotent.
        """
        if not self._commands:
            return
        results = self._send([args for args, _ in self._commands])
        _raise_if_transient(results)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if missing:
            register_scripts(self._backend)
            retried = self._send([self._commands[i][0] for i in missing])
            _raise_if_transient(retried)
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        for (_, reply), result in zip(self._commands, results, strict=True):
            reply._set(result)
        self._commands = []
        if self._finishing and self._backend.server is not None:
            finishing, self._finishing = self._finishing, []
            self._backend.server.ring(finishing)

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write every command on one connection, then read every reply: raw replies, an error
        reply as its exception. Commands are packed by hiredis in C (redis-py's own packing
        inspects each argument in Python, a quarter of a worker's CPU at high throughput). A
        broken connection is replaced and the whole batch sent again, which every script
        allows (idempotent)."""
        server = self._backend.server
        if server is not None:  # embedded: run in this process, no packing, no redis-py
            return server.execute_many(commands)
        packed = [hiredis.pack_command(args) for args in commands]
        if self._backend.cluster:
            return _send_cluster(self._backend, commands, packed)
        link = self._link or Link(self._backend)
        try:
            for attempt in range(SEND_ATTEMPTS):
                conn = link.connection()
                try:
                    # One write for the whole batch: given a list, redis-py makes a sendall
                    # (a syscall) per command.
                    conn.send_packed_command([b"".join(packed)])
                    return [_read_reply(conn) for _ in commands]
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    link.broken()
                    if attempt + 1 == SEND_ATTEMPTS:
                        raise
                    time.sleep(SEND_RETRY_PAUSE * (attempt + 1))
            raise AssertionError("unreachable")
        finally:
            if self._link is None:
                link.close()


#: Scripts that may finish items, and so move a partition's watermark. On the embedded backend
#: a batch that ran one rings the server's bell (EmbeddedServer.ring) with the partition's first
#: key, so an ack loop in this process offers the new watermark at once instead of at its next
#: interval (a Redis server has no such in-process listener: there the ack loop polls).
FINISHING_SCRIPTS = frozenset({"complete_items", "fail_item", "expire_lease", "unblock_sub_key"})

#: How often a batch is sent before a connection error is raised to the caller, and the pause
#: between sends (grows linearly).
SEND_ATTEMPTS, SEND_RETRY_PAUSE = 3, 0.05


#: Replies meaning "this slot is not (all) here now": the command did not run.
_REDIRECTS = (
    redis.exceptions.MovedError,  # a subclass of AskError, listed for the reader
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
)


def _first_key(args: tuple[Any, ...]) -> Any:
    """The key that routes a command: a script's first key, or the key every command this
    module is given has as its first argument (ZADD, SADD, PTTL, LLEN, LRANGE, ...)."""
    if args[0] in ("EVALSHA", "EVALSHA_RO", "EVAL"):
        if int(args[2]) < 1:
            raise ValueError(f"{args[0]} without keys cannot be routed on a cluster")
        return args[3]
    return args[1]


def _send_cluster(
    backend: Backend, commands: list[tuple[Any, ...]], packed: list[bytes]
) -> list[Any]:
    """``_send`` on a cluster: each node's commands on one connection of that node, all nodes
    written before any reply is read; redirected commands again, one by one, through the
    cluster client. A broken connection refreshes the slot map (a failover) and raises for the
    whole batch, as on one server: the caller sends it again."""
    client: Any = backend.client
    results: list[Any] = [None] * len(commands)
    for attempt in range(SEND_ATTEMPTS):
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, args in enumerate(commands):
            node = client.get_node_from_key(_first_key(args))
            groups.setdefault(node.name, (node, []))[1].append(i)
        taken: list[tuple[Any, Any, list[int]]] = []
        try:
            for node, indexes in groups.values():
                pool = client.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                taken.append((pool, conn, indexes))
                conn.send_packed_command([packed[i] for i in indexes])
            for _, conn, indexes in taken:
                for i in indexes:
                    results[i] = _read_reply(conn)
            break
        except (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
            redis.exceptions.RedisClusterException,  # e.g. a slot no node owns right now
        ) as exc:
            for _, conn, _ in taken:
                conn.disconnect()  # replies may be unread: never reuse it
            with contextlib.suppress(Exception):
                client.nodes_manager.initialize()  # the node may be gone: a new slot map
            if attempt + 1 == SEND_ATTEMPTS:
                if isinstance(exc, redis.exceptions.RedisClusterException):
                    raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
                raise
            time.sleep(SEND_RETRY_PAUSE * (attempt + 1))
        finally:
            for pool, conn, _ in taken:
                pool.release(conn)
    _resend_redirected(client, commands, results)
    return results


#: How long a batch waits for slots that are half moved (TRYAGAIN: a script's keys are split
#: between the two nodes of a live migration) before it raises as for a lost connection. A slot
#: of ours moves in milliseconds under redis-cli; the wait covers slower migrations too.
REDIRECT_WAIT, REDIRECT_PAUSE_MAX = 10.0, 0.2


def _resend_redirected(client: Any, commands: list[tuple[Any, ...]], results: list[Any]) -> None:
    """Send the commands answered MOVED, ASK or TRYAGAIN again, one by one, through the
    cluster client (it follows MOVED and ASK and updates its slot map); wait out TRYAGAIN."""
    pending = [i for i, r in enumerate(results) if isinstance(r, _REDIRECTS)]
    deadline = time.monotonic() + REDIRECT_WAIT
    pause = 0.01
    while pending:
        waiting = []
        for i in pending:
            try:
                results[i] = client.execute_command(*commands[i])
            except (redis.exceptions.TryAgainError, redis.exceptions.ClusterError):
                waiting.append(i)  # still half moved (ClusterError: redis-py's TTL ran out)
            except redis.ResponseError as exc:
                results[i] = exc
            except redis.exceptions.RedisClusterException as exc:
                raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc
        pending = waiting
        if pending:
            if time.monotonic() > deadline:
                raise redis.ConnectionError(
                    f"Redis Cluster: {len(pending)} command(s) met slots still moving after "
                    f"{REDIRECT_WAIT:.0f}s"
                )
            time.sleep(pause)
            pause = min(pause * 2, REDIRECT_PAUSE_MAX)


def _read_reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:  # an error reply answers this command only
        return exc


def _raise_if_transient(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, redis.ConnectionError | redis.TimeoutError):
            raise result
        if isinstance(result, redis.ResponseError) and is_transient(result):
            code = getattr(result, "status_code", None)
            raise redis.ConnectionError(f"Redis is not ready: {code + ' ' if code else ''}{result}")


def run_one(backend: Backend, build: Callable[[Batch], Reply[T]]) -> T:
    """Build one command in a fresh batch, send it, return its parsed answer."""
    batch = Batch(backend)
    reply = build(batch)
    batch.execute()
    return reply.get()
