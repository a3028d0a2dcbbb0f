"""The hot scripts' Python transcriptions (workshaper.embedded.native): bound to the exact
script they transcribe, used only while that script is loaded. That they answer as the Lua does
is the differential test's (test_embedded_differential.py) and the script-level tests' job."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from workshaper import scripts
from workshaper.batch import run_one
from workshaper.connection import connect, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.native import TRANSCRIPTIONS
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.lua_scripts import load_script
from workshaper_tools.testing import RedisServer


@pytest.mark.parametrize("name", sorted(TRANSCRIPTIONS))
def test_each_transcription_names_the_script_it_transcribes(name: str) -> None:
    """A .lua changed without its transcription fails here (and runs as Lua meanwhile): update
    the Python to the new script, then its SHA1 constant."""
    _, transcribed = TRANSCRIPTIONS[name]
    assert transcribed == load_script(name).sha


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap every transcription so a test sees which ones ran."""
    from workshaper.embedded import native

    calls = {name: 0 for name in TRANSCRIPTIONS}
    wrapped = {}
    for name, (function, sha) in TRANSCRIPTIONS.items():

        def counted(*args: Any, _name: str = name, _function: Any = function) -> Any:
            calls[_name] += 1
            return _function(*args)

        wrapped[name] = (counted, sha)
    monkeypatch.setattr(native, "TRANSCRIPTIONS", wrapped)
    monkeypatch.setattr(native, "_by_sha", None)
    return calls


@pytest.mark.parametrize("native_scripts", [True, False])
def test_the_transcriptions_run_only_on_the_native_server(
    monkeypatch: pytest.MonkeyPatch, native_scripts: bool
) -> None:
    calls = _count_calls(monkeypatch)
    backend = embedded_backend(EmbeddedServer(native_scripts=native_scripts))
    part = NamespaceKeys("n").partition(0)
    run_one(backend, lambda b: scripts.offer_watermark(b, part, False))
    assert (calls["offer_watermark"] == 1) is native_scripts
    backend.close()


def test_a_flushed_script_is_not_run_by_its_transcription(monkeypatch: pytest.MonkeyPatch) -> None:
    """EVALSHA of a script no longer loaded answers NOSCRIPT, transcription or not."""
    calls = _count_calls(monkeypatch)
    backend = embedded_backend()
    part = NamespaceKeys("n").partition(0)
    run_one(backend, lambda b: scripts.offer_watermark(b, part, False))
    backend.client.execute_command("SCRIPT", "FLUSH")  # type: ignore[no-untyped-call]
    sha = load_script("offer_watermark").sha
    with pytest.raises(redis.exceptions.NoScriptError):
        backend.client.evalsha(sha, len(part.fixed), *part.fixed, "0")
    assert calls["offer_watermark"] == 1
    backend.close()


# --- complete_items: the paths the differential test's rules rarely or never reach -------------
#
# Each case writes a partition's state by hand and runs the script with raw arguments on the
# transcription, on its Lua (embedded) and on a real redis-server: the reply (or error) and every
# key after it must be the same on all three.

COMPLETE = load_script("complete_items")


@dataclass
class State:
    """A partition's state, written by hand (members of sorted sets score their offsets)."""

    owners: dict[str, str] = field(default_factory=dict)
    queues: dict[str, list[str]] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    leases: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    attempts: dict[str, str] = field(default_factory=dict)
    exact: dict[str, str] = field(default_factory=dict)
    late: list[int] = field(default_factory=list)
    #: Fixed keys (their names in PartitionKeys) written as a string: a wrong type.
    strings: list[str] = field(default_factory=list)

    def write(self, client: redis.Redis, pkeys: PartitionKeys) -> None:
        for sub, entries in self.queues.items():
            client.rpush(pkeys.queue(sub.encode()), *entries)
        hashes = (
            (pkeys.owners, self.owners),
            (pkeys.attempts, self.attempts),
            (pkeys.exact, self.exact),
        )
        for key, mapping in hashes:
            if mapping:
                client.hset(key, mapping=mapping)  # type: ignore[arg-type]
        if self.heads:
            client.zadd(pkeys.heads, self.heads)
        if self.leases:
            client.zadd(pkeys.leases, dict.fromkeys(self.leases, 1000))
        if self.late:
            client.zadd(pkeys.late, {str(o): o for o in self.late})
        if self.ready:
            client.rpush(pkeys.ready, *self.ready)
        for name in self.strings:
            client.set(getattr(pkeys, name), "x")


def lease(
    index: int, sub: str, token: int, action: str, exact: int, *offsets: Any, held: Any = 0
) -> list[Any]:
    """One lease's arguments of complete_items."""
    return [index, sub, token, action, exact, held, len(offsets), *offsets]


def args(lease_ms: Any, batch: Any, *leases: list[Any], n: Any = None) -> list[Any]:
    """complete_items's arguments: lease ms, batch, the lease count (``n``, else the number of
    leases given), then each lease's."""
    return [lease_ms, batch, len(leases) if n is None else n, *(a for one in leases for a in one)]


def owned(*subs: str, flag: str = "-") -> dict[str, str]:
    """Owner records "token|flag|batch|max_attempts|mode|worker": sub i holds token i + 1."""
    return {sub: f"{i + 1}|{flag}|2|3|d|w1" for i, sub in enumerate(subs)}


def entries(*offsets: int) -> list[str]:
    return [f"{o}|m{o}" for o in offsets]


@dataclass
class Case:
    state: State
    subs: list[str]  # the queue keys after the fixed ones (KEYS[13..])
    args: list[Any]  # lease ms, batch, n, then each lease's arguments


def _exact_state() -> State:
    return State(
        owners={**owned("a", "b", "c", "d", "e", "f", flag="i"), "g": "7|-|2|3|d|w1"},
        queues={
            "a": entries(0, 1, 2, 3),
            "b": entries(4, 5, 6),
            "c": entries(7),
            "d": entries(8, 9),
            "e": entries(10, 11),
            "f": entries(12, 13),
            "g": entries(14, 15),
        },
        exact={"a": "3", "b": "2", "c": "1", "e": "2.5", "f": "2", "g": "1e300"},
        late=[5, 7],
    )


_BUSY = State(
    owners=owned("a", "b", "c", "d", "e", "f", "g", "h"),
    queues={
        "a": entries(0, 3, 5),
        "b": entries(1, 4),
        "c": entries(2),
        "d": entries(6, 7, 8),
        "e": entries(9, 10),
        "f": entries(11),
        "h": entries(12, 13, 14),
    },
    heads={"a": 0, "b": 1, "c": 2, "d": 6, "e": 9, "f": 11, "h": 12},
    leases=["a", "b", "c", "d", "e", "f", "g", "h"],
    attempts={"a": "0|1", "e": "9|2"},
    late=[3, 6],
)

CASES = {
    # keep, yield (nobody waits: continues), release with items left (the sub key waits now),
    # yield (gives way, drained), continue, continue with nothing finished (attempts record),
    # a stale token, a sub key nobody holds, a held lease whose queue is gone.
    "several leases in one call": Case(
        _BUSY,
        ["a", "h", "b", "c", "d", "e", "f", "x", "g"],
        args(
            60000,
            2,
            lease(1, "a", 1, "k", 0, 0),
            lease(2, "h", 8, "y", 0, 12),
            lease(3, "b", 2, "r", 0, 1),
            lease(4, "c", 3, "y", 0, 2),
            lease(5, "d", 4, "c", 0, 6, 7),
            lease(6, "e", 5, "c", 0),
            lease(7, "f", 99, "r", 0, 11),
            lease(8, "x", 1, "c", 0),
            lease(9, "g", 7, "c", 0, 20),
        ),
    ),
    "a yield while another sub key waits": Case(
        State(owners=owned("a"), queues={"a": entries(0, 1, 2)}, ready=["z"], leases=["a"]),
        ["a"],
        [60000, 5, 1, *lease(1, "a", 1, "y", 0, 0)],
    ),
    "a yield with nothing left": Case(
        State(owners=owned("a"), queues={"a": entries(0)}, ready=["z"], leases=["a"]),
        ["a"],
        [60000, 5, 1, *lease(1, "a", 1, "y", 0, 0)],
    ),
    # single-step windows: shortened (3 - 2), ended (2 - 2), drained, none, fractional, one
    # with nothing finished (takes one), one past 64 bits (formatted as Lua's cast does)
    "exact mode": Case(
        _exact_state(),
        ["a", "b", "c", "d", "e", "f", "g"],
        args(
            60000,
            5,
            lease(1, "a", 1, "c", 1, 0, 1),
            lease(2, "b", 2, "c", 1, 4, 5),
            lease(3, "c", 3, "r", 1, 7),
            lease(4, "d", 4, "k", 1, 8),
            lease(5, "e", 5, "y", 1, 10),
            lease(6, "f", 6, "c", 1),
            lease(7, "g", 7, "c", 1, 14),
        ),
    ),
    "corrupt entries": Case(
        State(
            owners=owned("a", "b", "c"),
            queues={"a": ["0|x", "garbage", "2|y"], "b": ["garbage", "1|x"], "c": entries(3, 4)},
            heads={"a": 0, "b": 1, "c": 3},
            leases=["a", "b", "c"],
        ),
        ["a", "b", "c"],
        args(
            60000,
            3,
            lease(1, "a", 1, "c", 0, 0),
            lease(2, "b", 2, "c", 0, 1),
            lease(3, "c", 3, "c", 0, 3, 9, 4),  # stops at the first offset not at the head
        ),
    ),
    # a retried call whose earlier call was applied carries more offsets: matched from the one
    # the head starts with (late ones forgotten, a single-step window shortened), up to the
    # first entry that is not the next offset's; a head that is none of them: nothing
    "retried calls with more offsets": Case(
        State(
            owners={**owned("a", "b", "c"), "d": "4|i|2|3|d|w1"},
            queues={
                "a": entries(2, 3, 4),
                "b": entries(5, 6),
                "c": entries(7, 8),
                "d": entries(9, 10, 11),
            },
            heads={"a": 2, "b": 5, "c": 7, "d": 9},
            leases=["a", "b", "c", "d"],
            exact={"d": "3"},
            late=[2, 3, 7, 9],
        ),
        ["a", "b", "c", "d"],
        args(
            60000,
            2,
            lease(1, "a", 1, "c", 0, 0, 1, 2, 3),
            lease(2, "b", 2, "k", 0, 1, 5, 9),
            lease(3, "c", 3, "r", 0, 1, 2),
            lease(4, "d", 4, "c", 1, 8, 9),
        ),
    ),
    # a worker holding entries: continues read past them (up to the batch, none when it holds
    # a whole batch or is in single-step mode, none at the end of the list: kept all the
    # same), a keep as ever, a retried call, attempts of an unmoved head, a list that ends with
    # the finished entries, a stale token
    "held entries": Case(
        State(
            owners={**owned("a", "b", "c", "d", "e", "f", "g", "h", "i"), "j": "1|-|2|3|d|w1"},
            queues={
                "a": entries(0, 1, 2, 3, 4, 5, 6, 7),
                "b": entries(10, 11, 12, 13),
                "c": entries(20, 21, 22, 23),
                "d": entries(30, 31),
                "e": entries(40, 41, 42),
                "f": entries(50, 51, 52, 53),
                "g": entries(61, 62, 63, 64, 65, 66),
                "h": entries(70, 71, 72),
                "i": entries(80),
                "j": entries(90, 91),
            },
            heads={"a": 0, "b": 10, "c": 20, "d": 30, "e": 40, "f": 50, "g": 61, "h": 70},
            leases=["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
            attempts={"h": "70|2"},
            exact={"e": "3", "f": "1"},
            late=[1, 11, 61],
        ),
        ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"],
        args(
            60000,
            4,
            lease(1, "a", 1, "c", 0, 0, 1, held=2),
            lease(2, "b", 2, "k", 0, 10, 11, held=2),
            lease(3, "c", 3, "c", 0, 20, held=4),
            lease(4, "d", 4, "c", 0, 30, held=1),
            lease(5, "e", 5, "c", 1, 40, held=1),
            lease(6, "f", 6, "c", 1, 50, held=1),
            lease(7, "g", 7, "c", 0, 60, 61, 62, held=1),
            lease(8, "h", 8, "c", 0, held=3),
            lease(9, "i", 9, "c", 0, 80, held=1),
            lease(10, "j", 5, "c", 0, 90, held=1),
        ),
    ),
    "held entries, numbers as Lua reads them": Case(
        State(owners=owned("a", "b"), queues={"a": entries(0, 1, 2), "b": entries(3, 4, 5, 6)}),
        ["a", "b"],
        args(
            60000,
            "3.0",
            lease(1, "a", 1, "c", 0, 0, held="3e0"),
            lease(2, "b", 2, "c", 0, 3, held="1.0"),
        ),
    ),
    "held entries, an infinite batch": Case(
        State(owners=owned("a", "b"), queues={"a": entries(0, 1, 2), "b": entries(3, 4, 5)}),
        ["a", "b"],
        args(
            60000,
            "inf",
            lease(1, "a", 1, "c", 0, 0, held="inf"),
            lease(2, "b", 2, "c", 0, 3, held=1),
        ),
    ),
    "held entries, a batch past 64 bits": Case(
        State(owners=owned("a"), queues={"a": entries(0, 1, 2)}),
        ["a"],
        args(60000, "1e19", lease(1, "a", 1, "c", 0, 0, held="1e18")),
    ),
    "two leases on one list": Case(
        State(owners=owned("a", "b"), queues={"a": entries(0, 1, 2, 3)}, leases=["a", "b"]),
        ["a"],
        [60000, 2, 2, *lease(1, "a", 1, "c", 0, 0, 1), *lease(1, "b", 2, "c", 0, 0, 1, 2)],
    ),
    # a corrupt single-step count fails the script where Lua fails: the writes made before it
    # (the first lease's LTRIM) stay, as on Redis
    "a corrupt exact count (consume)": Case(
        State(
            owners=owned("a", "b"),
            queues={"a": entries(0, 1), "b": entries(2, 3)},
            exact={"b": "abc"},
        ),
        ["a", "b"],
        [60000, 2, 2, *lease(1, "a", 1, "c", 0, 0), *lease(2, "b", 2, "c", 1, 2)],
    ),
    "a corrupt exact count (take one)": Case(
        State(owners=owned("a"), queues={"a": entries(0, 1)}, exact={"a": ""}),
        ["a"],
        [60000, 2, 1, *lease(1, "a", 1, "c", 1)],
    ),
    # Lua's strtod and '%d': an infinite lease (deadline LONG_MIN), a batch past 64 bits (reads
    # nothing), whole numbers written as floats, offsets with leading zeros
    "absurd numbers": Case(
        State(
            owners=owned("a", "b"),
            queues={"a": entries(0, 1), "b": ["007|x", "8|y"]},
            leases=["a", "b"],
        ),
        ["a", "b"],
        args(
            "inf",
            "1e19",
            lease(1, "a", 1, "c", 0, 0),
            ["2.0", "b", 2, "k", 0, "0e0", "1e0", "007"],
            n="2.0",
        ),
    ),
    "an infinite batch": Case(
        State(owners=owned("a"), queues={"a": entries(0, 1)}, leases=["a"]),
        ["a"],
        ["1e999", "inf", 1, *lease(1, "a", 1, "c", 0, 0)],
    ),
    "an infinite lease count": Case(
        State(owners=owned("a"), queues={"a": entries(0, 1)}),
        ["a"],
        [60000, 2, "inf", *lease(1, "a", 1, "c", 0, 0)],
    ),
    "no leases": Case(State(owners=owned("a")), [], [60000, 2, 0]),
}

_MALFORMED: dict[str, list[Any]] = {
    "no arguments": [],
    "lease ms": [0, 2, 1],
    "lease ms nan": ["nan", 2, 1],
    "batch": [60000, 1.5, 1],
    "lease count": [60000, 2, -1],
    "key index": [60000, 2, 1, *lease(2, "a", 1, "c", 0)],
    "key index 0": [60000, 2, 1, *lease(0, "a", 1, "c", 0)],
    "sub key/token": [60000, 2, 1, 1, "a"],
    "action": [60000, 2, 1, *lease(1, "a", 1, "x", 0)],
    "no action": [60000, 2, 1, 1, "a", 1],
    "offset count": [60000, 2, 1, 1, "a", 1, "c", 0, 0, 2, 0],
    "offset count nan": [60000, 2, 1, *lease(1, "a", 1, "c", 0)[:-1], "x"],
    "offset": [60000, 2, 1, *lease(1, "a", 1, "c", 0, "1a")],
    "no held": [60000, 2, 1, 1, "a", 1, "c", 0],
    "held negative": [60000, 2, 1, *lease(1, "a", 1, "c", 0, 0, held=-1)],
    "held fraction": [60000, 2, 1, *lease(1, "a", 1, "k", 0, 0, held="0.5")],
    "held past the batch": [60000, 2, 1, *lease(1, "a", 1, "c", 0, 0, held=3)],
    "held nan": [60000, 2, 1, *lease(1, "a", 1, "c", 0, 0, held="nan")],
    "held infinite": [60000, 2, 1, *lease(1, "a", 1, "c", 0, 0, held="inf")],
    "held of a yield": [60000, 2, 1, *lease(1, "a", 1, "y", 0, 0, held=1)],
    "held of a release": [60000, 2, 1, *lease(1, "a", 1, "r", 0, 0, held="1e0")],
    "held of a second lease": [
        60000,
        2,
        2,
        *lease(1, "a", 1, "c", 0, 0, held=1),
        *lease(1, "b", 2, "c", 0, held="x"),
    ],
    "empty offset": [60000, 2, 1, *lease(1, "a", 1, "c", 0, "")],
    "second lease": [60000, 2, 2, *lease(1, "a", 1, "c", 0, 0), *lease(1, "b", 2, "q", 0)],
    "repeated sub key": [60000, 2, 2, *lease(1, "a", 1, "c", 0, 0), *lease(1, "a", 1, "r", 0)],
}
for _what, _args in _MALFORMED.items():
    CASES[f"malformed: {_what}"] = Case(
        State(owners=owned("a", "b"), queues={"a": entries(0, 1)}, leases=["a", "b"]), ["a"], _args
    )
for _name in ("owners", "leases", "ready", "heads", "late", "attempts", "exact"):
    CASES[f"wrong type: {_name}"] = Case(
        State(owners=owned("a"), queues={"a": entries(0)}, strings=[_name]),
        ["a"],
        [60000, 2, 1, *lease(1, "a", 1, "c", 0, 0)],
    )
CASES["wrong type: a queue"] = Case(
    State(owners=owned("a", "b"), queues={"a": entries(0)}, exact={"b": "1"}),
    ["a", "exact"],
    [60000, 2, 2, *lease(1, "a", 1, "c", 0, 0), *lease(2, "b", 2, "c", 0)],
)


def _first_line(error: str) -> str:
    return error.split("\n", 1)[0]


def _error_text(error: str) -> str:
    """An error without what only says where it was raised: the script's SHA1 and line (a real
    server counts the shebang line; the embedded runtime does not)."""
    error = _first_line(error)
    error = re.sub(r"^Error running script \w+: user_script:\d+: ", "", error)
    return re.sub(r"^user_script:\d+: (.*) script: \w+, on @user_script:\d+\.$", r"\1", error)


def _state(client: redis.Redis, pattern: str, leases: bytes) -> dict[bytes, Any]:
    """Every key of the namespace; a lease deadline (server time + lease) is masked."""
    state: dict[bytes, Any] = {}
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind = client.type(key)
        value: Any
        if kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
            if key == leases:
                value = [(m, "deadline" if s > 1e12 else s) for m, s in value]
        else:
            value = client.get(key)
        state[key] = (kind, value)
    return state


def _on_three_servers(
    redis_server: RedisServer,
    namespace: str,
    write: Callable[[redis.Redis], None],
    run: Callable[[redis.Redis], Any],
) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """``write`` a state, then ``run`` a script on the native embedded server, on the Lua one
    and on a real server: each side's (reply or normalised error, state after), and the raw
    error texts."""
    pattern = f"ws:{{{namespace}*"
    leases = NamespaceKeys(namespace).partition(0).leases
    backends = {
        "native": embedded_backend(EmbeddedServer(native_scripts=True)),
        "lua": embedded_backend(EmbeddedServer(native_scripts=False)),
        "redis": connect(redis_server.url),
    }
    outcomes: dict[str, tuple[Any, Any]] = {}
    raw_errors: dict[str, str] = {}
    try:
        for name, backend in backends.items():
            write(backend.client)
            try:
                reply: Any = run(backend.client)
            except redis.ResponseError as exc:
                raw_errors[name] = str(exc)
                reply = ("error", _error_text(str(exc)))
            outcomes[name] = (reply, _state(backend.client, pattern, leases))
    finally:
        for backend in backends.values():
            stale = list(backend.client.scan_iter(match=pattern, count=1000))
            if stale:
                backend.client.delete(*stale)
            backend.close()
    return outcomes, raw_errors


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_complete_items_answers_and_writes_as_its_lua(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    calls = _count_calls(monkeypatch)
    namespace = "cx" + uuid.uuid4().hex[:10]
    pkeys = NamespaceKeys(namespace).partition(0)
    keys = [
        *pkeys.fixed,
        *(getattr(pkeys, s) if s == "exact" else pkeys.queue(s.encode()) for s in case.subs),
    ]
    outcomes, raw_errors = _on_three_servers(
        redis_server,
        namespace,
        lambda client: case.state.write(client, pkeys),
        lambda client: client.eval(COMPLETE.source, len(keys), *keys, *case.args),
    )
    assert calls["complete_items"] == 1  # the native server ran the transcription
    assert outcomes["native"] == outcomes["lua"]
    assert outcomes["native"] == outcomes["redis"]
    if raw_errors:  # the transcription's error is the embedded Lua's, word for word
        assert _first_line(raw_errors["native"]) == _first_line(raw_errors["lua"])


# --- offer_watermark / commit_watermark on values no caller of ours sends ------------------------

#: name -> (script, what `accepted` holds before, ARGV): each must answer and write the same on
#: the native server, on its Lua and on a real server (an error too, after the same writes).
WATERMARK_CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "commit to infinity": ("commit_watermark", ["1", "2", "3"], ["1e999"]),
    "commit of no number": ("commit_watermark", ["1", "2", "3"], ["abc"]),
    "commit past a corrupt accepted entry": ("commit_watermark", ["1", "x", "3"], ["2"]),
    "commit of a fraction": ("commit_watermark", ["1", "2", "3"], ["2.5"]),
    "offer past a corrupt accepted entry": ("offer_watermark", ["1", "x", "3"], ["1"]),
}


@pytest.mark.parametrize("case", list(WATERMARK_CASES), ids=list(WATERMARK_CASES))
def test_the_watermark_scripts_answer_odd_values_as_their_lua(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    calls = _count_calls(monkeypatch)
    name, accepted, argv = WATERMARK_CASES[case]
    source = load_script(name).source
    namespace = "wx" + uuid.uuid4().hex[:10]
    pkeys = NamespaceKeys(namespace).partition(0)

    def write(client: redis.Redis) -> None:
        client.rpush(pkeys.accepted, *accepted)
        client.zadd(pkeys.heads, {"s": 9})
        client.zadd(pkeys.clock, {"1000": 1, "2000": 3})

    outcomes, _ = _on_three_servers(
        redis_server,
        namespace,
        write,
        lambda client: client.eval(source, len(pkeys.fixed), *pkeys.fixed, *argv),
    )
    assert calls[name] == 1
    assert outcomes["native"] == outcomes["lua"]
    assert outcomes["native"] == outcomes["redis"]
