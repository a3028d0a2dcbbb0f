"""Our ``.lua`` scripts, run unchanged by Lua 5.1 (Redis's Lua) in this process.

One ``LuaRuntime`` per embedded server. A script is compiled once, when loaded, and kept by its
SHA1 (EVALSHA then only calls it). ``redis.call`` / ``redis.pcall`` run the command table of
``commands.py`` directly on the store, with the conversions Redis makes for scripts (RESP2):

- to Lua: integer -> number, bulk -> string, nil -> false, array -> table, status -> {ok=...},
  double -> its string (%.17g), map -> flat key, value table;
- from Lua: number -> integer (truncated), string -> bulk, table -> array (up to the first nil),
  {ok=...} -> status, {err=...} -> error, false -> nil, true -> 1.

The caller holds the store's lock for the whole script, so a script is atomic, as in Redis.
A ``#!lua`` shebang is parsed and checked as Redis 7 does; ``flags=no-writes`` (and EVAL_RO)
refuse writes. The other flags concern maxmemory, slots and replicas, which this has not.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from collections.abc import Sequence
from typing import Any

import lupa

from workshaper.embedded.commands import (
    COMMANDS,
    NOT_IN_SCRIPTS,
    WRITE_COMMANDS,
    Pairs,
    Status,
    format_double,
)
from workshaper.embedded.native import NativeScript, native_for
from workshaper.embedded.store import CommandError, Store

with lupa.allow_lua_module_loading():
    lua51: Any = importlib.import_module("lupa.lua51")

_SETUP = """
function(py_call, py_pcall, py_cjson_encode, py_cjson_decode)
  -- An array reply comes back from Python as the values (true, item, ...), unpacked by lupa:
  -- packing them here is cheaper than building the table from Python (see _call).
  local function reply(first, ...)
    if first == true then return {...} end
    return first
  end
  redis = {}
  redis.call = function(...) return reply(py_call(...)) end
  redis.pcall = function(...) return reply(py_pcall(...)) end
  redis.status_reply = function(s) return {ok = s} end
  redis.error_reply = function(s) return {err = s} end
  redis.log = function() end
  redis.setresp = function(v)
    if v ~= 2 then error('the embedded backend runs scripts in RESP2 only') end
  end
  redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
  cjson = {encode = py_cjson_encode, decode = py_cjson_decode}
  local loadstring, setglobal = loadstring, rawset
  local function compile(source)
    local f, err = loadstring(source, '@user_script')
    if not f then return err end
    return f
  end
  local function run(f, keys, argv)
    setglobal(_G, 'KEYS', keys)
    setglobal(_G, 'ARGV', argv)
    return f()
  end
  -- A call with few arguments passes them as values, not two tables made in Python.
  local function run_values(f, nkeys, ...)
    local all, keys, argv = {...}, {}, {}
    for i = 1, nkeys do keys[i] = all[i] end
    for i = nkeys + 1, select('#', ...) do argv[i - nkeys] = all[i] end
    return run(f, keys, argv)
  end
  return compile, run, run_values
end
"""

INT64_MIN = -(2**63)
#: Up to this many script arguments (or items of an array reply to redis.call) pass to Lua as
#: values, cheaper than a table built from Python; more go as tables: the values of a call must
#: fit Lua's C stack (8,000 slots).
MAX_VALUE_ARGS = 200


def _lua_arg(value: Any) -> bytes:
    """A redis.call argument as Redis turns it into a string."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e17:
            return b"%d" % int(value)
        return repr(value).encode()
    raise CommandError("ERR Lua redis lib command arguments must be strings or integers")


#: The characters cjson writes as a two-character escape.
_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def _json_string(raw: bytes) -> str:
    """A string as Redis's cjson writes it (it also escapes '/'); bytes >= 0x80 pass through."""
    out = ['"']
    for ch in raw.decode("latin-1"):
        code = ord(ch)
        escaped = _JSON_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


#: The flags a ``#!lua`` shebang may carry (Redis 7).
_SHEBANG_FLAGS = frozenset(
    {b"no-writes", b"allow-oom", b"allow-stale", b"no-cluster", b"allow-cross-slot-keys"}
)


def _shebang(source: bytes) -> tuple[bytes, bool]:
    """A script's body and whether its shebang says ``no-writes``, checked as Redis checks
    it. The shebang line is dropped, as Redis does: the body's line 1 is the next line. The
    other flags have nothing to act on here (one process: no maxmemory, no slots, no replica)."""
    if not source.startswith(b"#!"):
        return source, False
    line, _, body = source.partition(b"\n")
    engine, *options = line[2:].split()
    if engine != b"lua":
        raise CommandError(
            f"ERR Unexpected engine in script shebang: {engine.decode(errors='replace')}"
        )
    flags: list[bytes] = []
    for option in options:
        if not option.startswith(b"flags="):
            raise CommandError(f"ERR Unknown lua shebang option: {option.decode(errors='replace')}")
        flags.extend(f for f in option.removeprefix(b"flags=").split(b",") if f)
    for flag in flags:
        if flag not in _SHEBANG_FLAGS:
            raise CommandError(
                f"ERR Unexpected flag in script shebang: {flag.decode(errors='replace')}"
            )
    return body, b"no-writes" in flags


class LuaScripts:
    """The Lua runtime of one embedded server and its script cache."""

    def __init__(self, store: Store, *, native: bool = True) -> None:
        self._store = store
        #: Run the transcriptions of the hot scripts (workshaper.embedded.native) instead of
        #: their Lua; False runs every script through Lua (tests compare the two).
        self._native = native
        #: SHA1 -> the transcription of a loaded script (only while it is loaded).
        self._natives: dict[bytes, NativeScript] = {}
        # unpack_returned_tuples: _call answers an array as the values (True, item, ...).
        self._lua = lua51.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
        )
        self._table = self._lua.table_from
        self._lua_type = lua51.lua_type
        setup = self._lua.eval(_SETUP)
        self._compile, self._run, self._run_values = setup(
            self._call, self._pcall, self._cjson_encode, self._cjson_decode
        )
        #: cjson.null: what JSON null decodes to (a unique Lua value, recognised by its address
        #: when encoded: lupa wraps the same Lua value in a new Python object each time).
        self._null = self._lua.eval("function() end")
        self._null_id = str(self._null)
        self._lua.globals().cjson.null = self._null
        self._scripts: dict[bytes, Any] = {}
        #: Scripts whose shebang says ``flags=no-writes``, and scripts with a shebang at all.
        self._read_only_scripts: set[bytes] = set()
        self._shebang_scripts: set[bytes] = set()
        #: True while a script that may not write runs: its writes raise as on Redis.
        self._writes_denied = False

    # --- the script cache ---------------------------------------------------------------------

    def load(self, source: bytes) -> bytes:
        """SCRIPT LOAD: compile once, keep by SHA1; the SHA1 (hex) is the reply."""
        sha = hashlib.sha1(source).hexdigest().encode()
        if sha not in self._scripts:
            body, read_only = _shebang(source)
            function = self._compile(body)  # the function, or the compiler's message
            if self._lua_type(function) != "function":
                raise CommandError(f"ERR Error compiling script (new function): {_text(function)}")
            self._scripts[sha] = function
            native = native_for(sha) if self._native else None
            if native is not None:
                self._natives[sha] = native
            if read_only:
                self._read_only_scripts.add(sha)
            if source.startswith(b"#!"):
                self._shebang_scripts.add(sha)
        return sha

    def exists(self, shas: Sequence[bytes]) -> list[int]:
        return [int(sha.lower() in self._scripts) for sha in shas]

    def flush(self) -> None:
        self._scripts.clear()
        self._natives.clear()
        self._read_only_scripts.clear()
        self._shebang_scripts.clear()

    def evalsha(self, sha: bytes, args: Sequence[bytes], *, ro: bool = False) -> Any:
        """EVALSHA, or EVALSHA_RO with ``ro``."""
        sha = sha.lower()
        function = self._scripts.get(sha)
        if function is None:
            raise CommandError("NOSCRIPT No matching script. Please use EVAL.")
        return self._invoke(sha, function, args, ro)

    def evalsha_apart(self, sha: bytes, keys: list[bytes], argv: list[bytes]) -> Any:
        """EVALSHA of ``sha`` with its keys and arguments given apart (the server's own
        batches, which hold them apart already): a transcription runs on them as they are,
        with no flat argument list built to be split again; anything else runs as EVALSHA."""
        sha = sha.lower()
        native = self._natives.get(sha)
        if native is not None and sha not in self._read_only_scripts:
            return native(self._store, keys, argv)  # what _invoke runs for it
        return self.evalsha(sha, [b"%d" % len(keys), *keys, *argv])

    def eval(self, source: bytes, args: Sequence[bytes], *, ro: bool = False) -> Any:
        """EVAL, or EVAL_RO with ``ro``."""
        sha = self.load(source)
        return self._invoke(sha, self._scripts[sha], args, ro)

    def _invoke(self, sha: bytes, function: Any, args: Sequence[bytes], ro: bool) -> Any:
        read_only = sha in self._read_only_scripts
        if ro and not read_only and sha in self._shebang_scripts:
            raise CommandError("ERR Can not run script with write flag using *_ro command.")
        self._writes_denied = ro or read_only
        try:
            native = self._natives.get(sha)
            if native is not None and not self._writes_denied:
                nkeys = _number_of_keys(args)
                return native(self._store, list(args[1 : nkeys + 1]), list(args[nkeys + 1 :]))
            return self._run_script(sha, function, args)
        finally:
            self._writes_denied = False

    def _run_script(self, sha: bytes, function: Any, args: Sequence[bytes]) -> Any:
        nkeys = _number_of_keys(args)
        try:
            if len(args) <= MAX_VALUE_ARGS:
                result = self._run_values(function, nkeys, *args[1:])
            else:
                result = self._run(
                    function, self._table(args[1 : nkeys + 1]), self._table(args[nkeys + 1 :])
                )
        except CommandError:
            raise
        except lua51.LuaError as exc:
            raise CommandError(f"ERR Error running script {sha.decode()}: {_text(exc)}") from None
        return self._from_lua(result)

    # --- redis.call / redis.pcall ------------------------------------------------------------

    def _command(self, args: tuple[Any, ...]) -> Any:
        if not args:
            raise CommandError("ERR Please specify at least one argument for this redis lib call")
        name = _lua_arg(args[0]).upper()
        command = COMMANDS.get(name)
        if command is None or name in NOT_IN_SCRIPTS:
            raise CommandError("ERR Unknown Redis command called from script")
        if self._writes_denied and name in WRITE_COMMANDS:
            raise CommandError("ERR Write commands are not allowed from read-only scripts.")
        return command(self._store, [_lua_arg(a) for a in args[1:]])

    def _call(self, *args: Any) -> Any:
        # Fast path: our scripts name commands in capitals and pass strings.
        command = COMMANDS.get(args[0]) if args and not self._writes_denied else None
        if command is None:
            reply = self._command(args)
        else:
            reply = command(self._store, [a if type(a) is bytes else _lua_arg(a) for a in args[1:]])
        if type(reply) is list and len(reply) <= MAX_VALUE_ARGS:  # packed by redis.call
            return (
                True,
                *[x if type(x) is bytes or type(x) is int else self._to_lua(x) for x in reply],
            )
        return self._to_lua(reply)

    def _pcall(self, *args: Any) -> Any:
        command = COMMANDS.get(args[0]) if args and not self._writes_denied else None
        try:
            if command is None:  # not ours in capitals, or not allowed (NOT_IN_SCRIPTS)
                reply = self._command(args)
            else:
                reply = command(
                    self._store, [a if type(a) is bytes else _lua_arg(a) for a in args[1:]]
                )
        except CommandError as exc:
            return self._table({b"err": str(exc).encode()})
        if type(reply) is list and len(reply) <= MAX_VALUE_ARGS:
            return (True, *[self._to_lua(x) for x in reply])
        return self._to_lua(reply)

    def _to_lua(self, reply: Any) -> Any:
        kind = type(reply)
        if kind is bytes or kind is int:
            return reply
        if reply is None:
            return False
        if kind is list:
            return self._table([self._to_lua(x) for x in reply])
        if kind is Status:
            return self._table({b"ok": bytes(reply)})
        if kind is float:
            return format_double(reply)
        if kind is Pairs:
            return self._table([self._to_lua(x) for pair in reply for x in pair])
        if kind is dict:
            flat: list[Any] = []
            for key, value in reply.items():
                flat += (self._to_lua(key), self._to_lua(value))
            return self._table(flat)
        raise TypeError(f"no Lua form for a reply of type {kind.__name__}")

    def _from_lua(self, value: Any) -> Any:
        kind = type(value)
        if kind is bytes:
            return value
        if kind is int:
            return value
        if value is None or value is False:
            return None
        if value is True:
            return 1
        if kind is float:
            if math.isnan(value) or not -(2**63) <= value < 2**63:
                return INT64_MIN
            return int(value)
        if self._lua_type(value) == "table":
            error = value[b"err"]
            if error is not None:
                raise CommandError(_text(error))
            status = value[b"ok"]
            if status is not None:
                return Status(status if isinstance(status, bytes) else str(status).encode())
            out: list[Any] = []
            i = 1
            while True:
                item = value[i]
                if item is None:
                    return out
                kind = type(item)
                out.append(item if kind is bytes or kind is int else self._from_lua(item))
                i += 1
        raise CommandError(f"ERR the embedded backend cannot return a Lua {self._lua_type(value)}")

    # --- cjson --------------------------------------------------------------------------------

    def _cjson_encode(self, value: Any) -> bytes:
        return self._json(value, 0).encode("latin-1")

    def _cjson_decode(self, raw: Any) -> Any:
        if not isinstance(raw, bytes):
            raise CommandError("ERR bad argument #1 to 'decode' (string expected)")
        try:
            decoded = json.loads(raw)
        except ValueError as exc:
            raise CommandError(f"ERR Expected value but found invalid token: {exc}") from None
        return self._from_json(decoded)

    def _from_json(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return self._table({k.encode(): self._from_json(v) for k, v in value.items()})
        if isinstance(value, list):
            return self._table([self._from_json(v) for v in value])
        if value is None:
            return self._null
        return value  # numbers and booleans

    def _json(self, value: Any, depth: int) -> str:
        if depth > 1000:
            raise CommandError("ERR Cannot serialise, excessive nesting (1001)")
        if value is None or (self._lua_type(value) == "function" and str(value) == self._null_id):
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        if isinstance(value, bytes):
            return _json_string(value)
        if isinstance(value, int | float):
            return _json_number(value)
        if self._lua_type(value) == "table":
            items = list(value.items())
            keys = [k for k, _ in items]
            if all(isinstance(k, int | float) and k >= 1 and float(k).is_integer() for k in keys):
                length = max((int(k) for k in keys), default=0)
                if length == len(keys) and length > 0:
                    by_index = {int(k): v for k, v in items}
                    return (
                        "["
                        + ",".join(self._json(by_index[i], depth + 1) for i in range(1, length + 1))
                        + "]"
                    )
            parts = []
            for k, v in items:
                key = k if isinstance(k, bytes) else _json_number(k).encode("latin-1")
                parts.append(_json_string(key) + ":" + self._json(v, depth + 1))
            return "{" + ",".join(parts) + "}"
        raise CommandError(f"ERR Cannot serialise {self._lua_type(value)}: type not supported")


def _number_of_keys(args: Sequence[bytes]) -> int:
    """EVALSHA's numkeys, checked as Redis does."""
    if not args:
        raise CommandError("ERR wrong number of arguments for 'evalsha' command")
    try:
        nkeys = int(args[0])
    except ValueError:
        raise CommandError("ERR value is not an integer or out of range") from None
    if nkeys < 0:
        raise CommandError("ERR Number of keys can't be negative")
    if nkeys > len(args) - 1:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    return nkeys


def _json_number(value: float) -> str:
    """cjson's number format: %.14g."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        raise CommandError("ERR Cannot serialise number: must not be NaN or Inf")
    return f"{value:.14g}"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
