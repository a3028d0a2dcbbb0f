"""The embedded server, and the redis-py client surface on it.

``EmbeddedServer`` runs commands and scripts on one ``Store`` under its lock (one command or
script at a time, as Redis's single thread). WorkShaper's hot path (``batch.Batch``) hands it
argument tuples directly (``execute_many``); everything else talks to it through an ordinary
``redis.Redis`` whose connections call the server instead of a socket (``client()``), so the
replies pass through redis-py's own RESP3 response callbacks, as from a real server.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from workshaper.embedded.commands import COMMANDS, OK, Pairs, Status, to_float, wrong_args, zpopmin
from workshaper.embedded.lua_runtime import LuaScripts
from workshaper.embedded.store import CommandError, Store


def encode_arg(value: Any) -> bytes:
    """A command argument as the bytes a client would send."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if type(value) is int:  # the common case, before the checks a bool needs
        return b"%d" % value
    if isinstance(value, bool):
        raise redis.DataError(f"Invalid input of type: 'bool' ({value!r})")
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise redis.DataError(f"Invalid input of type: '{type(value).__name__}'")


def _batch_script_call(args: Sequence[Any]) -> bool:
    """Is this ``("EVALSHA", sha, numkeys, *keys, *args)`` as Batch.script makes it (numkeys an
    int that fits)? Anything else, a malformed call included, takes the general path and gets
    its error reply there."""
    return (
        len(args) >= 3
        and args[0] == "EVALSHA"
        and type(args[2]) is int
        and 0 <= args[2] <= len(args) - 3
    )


def error_reply(exc: CommandError) -> ResponseError:
    """The exception redis-py raises for this error reply."""
    message = str(exc)
    if message.startswith("NOSCRIPT "):
        return NoScriptError(message[len("NOSCRIPT ") :])
    if message.startswith("ERR "):
        message = message[len("ERR ") :]
    return ResponseError(message)


class EmbeddedServer:
    """One in-process Redis: a store, the Lua runtime, and the command dispatch."""

    def __init__(
        self, clock: Callable[[], float] = time.time, *, native_scripts: bool = True
    ) -> None:
        """``native_scripts``: run the hot scripts' Python transcriptions (embedded.native);
        False runs every script through Lua."""
        self.store = Store(clock)
        self.scripts = LuaScripts(self.store, native=native_scripts)
        self._lock = self.store.lock
        self._listeners: list[Callable[[list[bytes]], None]] = []

    # --- in-process notifications -------------------------------------------------------

    def listen(self, callback: Callable[[list[bytes]], None]) -> None:
        """Call ``callback(first_keys)`` after scripts that may have finished items ran (see
        batch.FINISHING_SCRIPTS): an ack loop of this process is woken instead of polling."""
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[list[bytes]], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def ring(self, first_keys: list[bytes]) -> None:
        for callback in list(self._listeners):
            callback(first_keys)

    # --- running commands ----------------------------------------------------------------

    def execute(self, args: Sequence[Any]) -> Any:
        """One command; raises CommandError for an error reply."""
        encoded = [encode_arg(a) for a in args]
        name = encoded[0].upper()
        if name == b"BZPOPMIN":
            return self._bzpopmin(encoded[1:])
        with self._lock:
            return self._dispatch(name, encoded[1:])

    def bzpopmin(self, key: bytes, timeout: float) -> list[Any] | None:
        """BZPOPMIN of one key, called directly (no redis-py client around it): what a waker on
        this server blocks in. An error reply raises its redis-py exception, as from a client."""
        try:
            return self._bzpopmin([key, encode_arg(timeout)])
        except CommandError as exc:
            raise error_reply(exc) from None

    def execute_many(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Many commands, as a pipeline: each reply, or for an error reply its redis-py
        exception (not raised). The lock is taken per command, so a long batch never holds
        other threads off for its whole length (a real server interleaves pipelines too)."""
        results: list[Any] = []
        dispatch = self._dispatch
        lock = self._lock
        for args in commands:
            try:
                if _batch_script_call(args):
                    results.append(self._run_script(args))
                    continue
                encoded = [
                    a if type(a) is bytes else a.encode() if type(a) is str else encode_arg(a)
                    for a in args
                ]
                with lock:
                    results.append(dispatch(encoded[0].upper(), encoded[1:]))
            except CommandError as exc:
                results.append(error_reply(exc))
        return results

    def _run_script(self, args: Sequence[Any]) -> Any:
        """``("EVALSHA", sha, numkeys, *keys, *args)`` with its keys and arguments kept apart:
        no numkeys to parse, no flat list to split (LuaScripts.evalsha_apart). The common
        argument types are encoded inline: a call per argument cost a fifth of this loop."""
        start = 3 + args[2]
        keys = [k if type(k) is bytes else encode_arg(k) for k in args[3:start]]
        argv = [
            a
            if type(a) is bytes
            else b"%d" % a
            if type(a) is int
            else a.encode()
            if type(a) is str
            else encode_arg(a)
            for a in args[start:]
        ]
        sha = encode_arg(args[1])
        with self._lock:
            return self.scripts.evalsha_apart(sha, keys, argv)

    def _dispatch(self, name: bytes, args: list[bytes]) -> Any:
        if name in (b"EVALSHA", b"EVALSHA_RO"):
            if not args:
                raise wrong_args("evalsha")
            return self.scripts.evalsha(args[0], args[1:], ro=name == b"EVALSHA_RO")
        if name in (b"EVAL", b"EVAL_RO"):
            if not args:
                raise wrong_args("eval")
            return self.scripts.eval(args[0], args[1:], ro=name == b"EVAL_RO")
        if name == b"SCRIPT":
            return self._script(args)
        if name == b"BZPOPMIN":  # inside a pipeline: never blocks (as inside MULTI)
            return self._pop_any(args[:-1])
        command = COMMANDS.get(name)
        if command is None:
            shown = name.decode(errors="replace").lower()
            raise CommandError(f"ERR unknown command '{shown}', with args beginning with: ")
        return command(self.store, args)

    def _script(self, args: list[bytes]) -> Any:
        if not args:
            raise wrong_args("script")
        sub = args[0].upper()
        if sub == b"LOAD" and len(args) == 2:
            return self.scripts.load(args[1])
        if sub == b"EXISTS" and len(args) >= 2:
            return self.scripts.exists(args[1:])
        if sub == b"FLUSH":
            self.scripts.flush()
            return OK
        raise CommandError(f"ERR unknown subcommand '{args[0].decode(errors='replace')}'")

    def _pop_any(self, keys: list[bytes]) -> list[Any] | None:
        for key in keys:
            popped = zpopmin(self.store, key, 1)
            if popped:
                return [key, popped[0][1], popped[0][0]]
        return None

    def _bzpopmin(self, args: list[bytes]) -> list[Any] | None:
        """BZPOPMIN key [key ...] timeout: waits on the store's condition, which ZADD
        notifies, so a worker wakes as soon as a bell rings (no polling)."""
        if len(args) < 2:
            raise wrong_args("bzpopmin")
        timeout = to_float(args[-1], "ERR timeout is not a float or out of range")
        if timeout < 0:
            raise CommandError("ERR timeout is negative")
        keys = args[:-1]
        deadline = None if timeout == 0 else time.monotonic() + timeout
        store = self.store
        with self._lock:
            while True:
                popped = self._pop_any(keys)
                if popped is not None:
                    return popped
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                for key in keys:
                    store.waiters[key] = store.waiters.get(key, 0) + 1
                try:
                    store.changed.wait(remaining)
                finally:
                    for key in keys:
                        left = store.waiters[key] - 1
                        if left:
                            store.waiters[key] = left
                        else:
                            del store.waiters[key]

    # --- redis-py -----------------------------------------------------------------------

    def client(self) -> redis.Redis:
        """A redis-py client on this server, with bytes replies. Like a client built from a URL,
        it leaves the protocol unset: the connection answers in RESP3 shapes (redis-py 8's
        default wire protocol) and redis-py's legacy callbacks shape the results."""
        pool = redis.ConnectionPool(connection_class=EmbeddedConnection, server=self)
        return redis.Redis(connection_pool=pool)


class EmbeddedConnection(redis.Connection):
    """A redis-py connection that runs each command on an EmbeddedServer instead of a socket.

    Commands are "packed" as argument tuples; replies wait in a deque for ``read_response``.
    """

    def __init__(self, server: EmbeddedServer, **kwargs: Any) -> None:
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        super().__init__(host="embedded", port=0, **kwargs)  # type: ignore[no-untyped-call]
        self._server = server
        self._replies: collections.deque[Any] = collections.deque()
        self._open = False

    def repr_pieces(self) -> list[tuple[str, Any]]:
        return [("host", "embedded")]

    def connect(self) -> None:
        self._open = True

    def on_connect(self) -> None:
        return None

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._open = False
        self._replies.clear()

    def check_health(self) -> None:
        return None

    def can_read(self, timeout: float | None = 0) -> bool:
        return bool(self._replies)

    def pack_command(self, *args: Any) -> list[tuple[Any, ...]]:
        return [_split_name(args)]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        return [_split_name(tuple(c)) for c in commands]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._open:
            self.connect()
        for args in command:
            name = encode_arg(args[0]).upper()
            if name == b"BZPOPMIN":
                try:
                    self._replies.append(self._server.execute(args))
                except CommandError as exc:
                    self._replies.append(error_reply(exc))
            else:
                self._replies.extend(self._server.execute_many([args]))

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.send_packed_command([args])

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        if not self._replies:
            raise redis.ConnectionError("no reply waiting on the embedded connection")
        reply = self._replies.popleft()
        if isinstance(reply, ResponseError):
            raise reply
        if not disable_decoding and self.encoder.decode_responses:
            return _decode(reply, self.encoder)
        return _plain(reply)


def _split_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """redis-py names some commands with a space ("SCRIPT LOAD"); its packer splits them."""
    if isinstance(args[0], str) and " " in args[0]:
        return (*args[0].split(), *args[1:])
    return args


def _plain(reply: Any) -> Any:
    """Status replies reach redis-py as bytes, as from its RESP3 parser."""
    kind = type(reply)
    if kind is Status:
        return bytes(reply)
    if kind is Pairs:
        return list(reply)
    return reply


def _decode(reply: Any, encoder: Any) -> Any:
    if isinstance(reply, bytes):
        return encoder.decode(bytes(reply))
    if isinstance(reply, list):
        return [_decode(x, encoder) for x in reply]
    if isinstance(reply, dict):
        return {_decode(k, encoder): _decode(v, encoder) for k, v in reply.items()}
    return reply
