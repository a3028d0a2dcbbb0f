"""claim_sub_keys' transcription (workshaper/embedded/native/claim.py) against its Lua, on the
paths the differential test's rules do not reach: binary sub keys and attempts / crash-window
lines in the claim record (and their retries), malformed arguments, corrupt records and
foreign values. Each case runs the same raw EVAL on the native embedded server, the Lua
embedded server and a real redis-server, and compares the replies (errors by their message)
and every key of the namespace afterwards."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from tests.differential import dump
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.native import TRANSCRIPTIONS
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.lua_scripts import load_script
from workshaper_tools.testing import RedisServer

SOURCE = load_script("claim_sub_keys").source
#: Sub keys a bytes sub key can become (b"b" + the user's bytes): the record's separators,
#: digits, NUL and a length prefix look-alike among them.
#: The embedded servers' clock (seconds): stopped, so both modes stamp the same deadlines.
CLOCK = lambda: 1_800_000_000.123456  # noqa: E731

BINARY_SUBS = [b"b\n1 2 3", b"b12:x", b"b\x00\xff", b"b:", b"b" + b"\n" * 3, b"sa"]


class Sides:
    """The three servers, one namespace, the same commands on each."""

    def __init__(self, redis_url: str) -> None:
        self.namespace = "c" + uuid.uuid4().hex[:10]
        self.part: PartitionKeys = NamespaceKeys(self.namespace).partition(0)
        self.clients: dict[str, redis.Redis] = {  # the embedded ones on one stopped clock
            "native": EmbeddedServer(CLOCK, native_scripts=True).client(),
            "lua": EmbeddedServer(CLOCK, native_scripts=False).client(),
            "redis": redis.Redis.from_url(redis_url),
        }

    def do(self, *command: Any) -> None:
        for client in self.clients.values():
            client.execute_command(*command)  # type: ignore[no-untyped-call]  # unannotated in redis-py

    def keys(self, worker: str = "w") -> list[bytes]:
        return [*self.part.fixed, self.part.claim_record(worker)]

    def argv(self, **changes: Any) -> list[Any]:
        args = {
            "worker": "w",
            "request": "r1",
            "max_leases": 3,
            "lease_ms": 60_000,
            "batch": 2,
            "max_attempts": 3,
            "mode": "d",
            "prefix": self.part.queue_prefix,
        }
        args.update(changes)
        return [v for v in args.values() if v is not None]

    def claim(self, keys: Sequence[bytes] | None = None, **changes: Any) -> Any:
        """EVAL the claim on every side: the one answer they agree on (an error as its
        normalized message), and the same state after it."""
        keys = self.keys() if keys is None else keys
        argv = self.argv(**changes)
        answers = {}
        for name, client in self.clients.items():
            try:
                answers[name] = client.eval(SOURCE, len(keys), *keys, *argv)
            except redis.ResponseError as exc:
                answers[name] = ("error", str(exc))
        # The embedded modes word an error alike (but for Lua's traceback); Redis names the
        # script and its line in its own way.
        assert untraced(answers["native"]) == untraced(answers["lua"]), answers
        answers = {name: untraced(answer, message) for name, answer in answers.items()}
        assert answers["native"] == answers["lua"] == answers["redis"], answers
        states = {name: self.state(client) for name, client in self.clients.items()}
        assert states["native"] == states["lua"] == states["redis"]
        # On the same clock, the embedded modes agree on what depends on it too: the lease
        # deadlines and the claim record's time to live.
        assert self.exact_state("native") == self.exact_state("lua")
        return answers["native"]

    def exact_state(self, name: str) -> dict[bytes | tuple[bytes, str], Any]:
        client = self.clients[name]
        state: dict[bytes | tuple[bytes, str], Any] = {}  # a zset's members, every key's pttl
        for key in sorted(client.scan_iter(match=f"ws:{{{self.namespace}*")):
            if client.type(key) == b"zset":
                state[key] = client.zrange(key, 0, -1, withscores=True)
            state[key, "pttl"] = client.pttl(key)
        return state

    def state(self, client: redis.Redis) -> dict[bytes, Any]:
        state = dump(client, self.part, f"ws:{{{self.namespace}*")
        for key in state:  # the claim record expires with the lease (PX): it has a TTL
            state[key] = (*state[key], client.pttl(key) > 0)
        return state

    def close(self) -> None:
        keys = list(self.clients["redis"].scan_iter(match=f"ws:{{{self.namespace}*"))
        if keys:
            self.clients["redis"].delete(*keys)
        for client in self.clients.values():
            client.close()


def untraced(answer: Any, normalize: Callable[[str], str] | None = None) -> Any:
    """An error answer without the embedded Lua's traceback (and ``normalize``d)."""
    if not (isinstance(answer, tuple) and answer[0] == "error"):
        return answer
    text = answer[1].split("\nstack traceback:")[0]
    return ("error", normalize(text) if normalize else text)


def message(text: str) -> str:
    """An error's message without where each side says it happened: Redis appends the script
    and its line (counted with the shebang line), the embedded runtime prefixes "Error running
    script <sha>: user_script:<line>:"."""
    text = re.sub(r" script: [0-9a-f]{40}, on @user_script:\d+\.$", "", text)
    text = re.sub(r"^Error running script [0-9a-f]{40}: ", "", text)
    return re.sub(r"^user_script:\d+: ", "", text)


@pytest.fixture
def sides(redis_server: RedisServer) -> Iterator[Sides]:
    s = Sides(redis_server.url)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _the_transcription_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every case must reach the transcription on the native side (not fall back to Lua)."""
    from workshaper.embedded import native

    calls = []
    function, sha = TRANSCRIPTIONS["claim_sub_keys"]

    def counted(*args: Any) -> Any:
        calls.append(1)
        return function(*args)

    monkeypatch.setattr(
        native, "TRANSCRIPTIONS", {**TRANSCRIPTIONS, "claim_sub_keys": (counted, sha)}
    )
    monkeypatch.setattr(native, "_by_sha", None)
    yield
    assert calls, "the native side ran the claim in Lua"


def enqueue(sides: Sides, sub: bytes, *offsets: int) -> None:
    """Items of ``sub`` (entries "<offset>|m<offset>") and the sub key in `ready`."""
    sides.do("RPUSH", sides.part.queue(sub), *[b"%d|m%d" % (o, o) for o in offsets])
    sides.do("RPUSH", sides.part.ready, sub)


def test_binary_sub_keys_attempts_and_crash_windows_go_through_the_record(sides: Sides) -> None:
    for i, sub in enumerate(BINARY_SUBS):
        enqueue(sides, sub, 10 * i, 10 * i + 1, 10 * i + 2)
    sides.do("HSET", sides.part.attempts, BINARY_SUBS[0], b"0|2", BINARY_SUBS[3], b"")
    sides.do("HSET", sides.part.exact, BINARY_SUBS[1], b"2", BINARY_SUBS[2], b"0")
    first = sides.claim(max_leases=5)
    assert len(first) > 1 + 5 * 5
    # A retried call answers the first call's leases, its first batches read again: one item
    # finished since on one list, another list is gone.
    sides.do("LPOP", sides.part.queue(BINARY_SUBS[0]))
    sides.do("DEL", sides.part.queue(BINARY_SUBS[3]))
    again = sides.claim(max_leases=5)
    assert again[:2] == first[:2]
    # The next request leases what is left.
    sides.claim(request="r2", max_leases=5, batch=0)
    sides.claim(request="r2", max_leases=5, batch=0)


def test_foreign_attempts_and_window_values_are_recorded_as_the_lua_formats_them(
    sides: Sides,
) -> None:
    # string.format('%s') ends a short string at its first NUL and copies a long one whole;
    # the record's line pattern then matches, or not, as in Lua.
    subs = [b"sa", b"sb", b"sc", b"sd", b"se"]
    for i, sub in enumerate(subs):
        enqueue(sides, sub, i)
    sides.do(
        "HSET",
        sides.part.attempts,
        b"sa",
        b"1|2\x00zz",
        b"sb",
        b"7|" + b"9" * 120,
        b"sc",
        b"x y",
    )
    sides.do("HSET", sides.part.exact, b"sd", b"1.5", b"se", b"-3", b"sa", b"nan")
    sides.claim(max_leases=5)
    sides.claim(max_leases=5)  # the retry decodes those lines


@pytest.mark.parametrize("window", [b"x", b""])
def test_a_crash_window_that_is_no_number_fails_the_claim_before_it_writes(
    sides: Sides, window: bytes
) -> None:
    enqueue(sides, b"sa", 1)
    sides.do("HSET", sides.part.exact, b"sa", window)
    assert sides.claim()[0] == "error"


def test_owned_and_repeated_sub_keys_in_ready(sides: Sides) -> None:
    enqueue(sides, b"sa", 1, 2)
    enqueue(sides, b"sb", 3)
    sides.do("RPUSH", sides.part.ready, b"sa", b"sz")
    sides.do("HSET", sides.part.owners, b"sb", b"4|-|1|3|d|other")
    # A lease left of a sub key nobody owns (a foreign writer): the claim moves its deadline.
    sides.do("ZADD", sides.part.leases, 5, b"sa", 7, b"sy")
    sides.claim(max_leases=10)
    sides.claim(max_leases=10)


@pytest.mark.parametrize(
    "changes",
    [
        {"worker": None, "request": None, "max_leases": None, "lease_ms": None, "batch": None,
         "max_attempts": None, "mode": None, "prefix": None},
        {"worker": ""},
        {"request": ""},
        {"request": None, "max_leases": None, "lease_ms": None, "batch": None,
         "max_attempts": None, "mode": None, "prefix": None},
        {"max_leases": 0},
        {"max_leases": "1.5"},
        {"max_leases": "abc"},
        {"max_leases": "nan"},
        {"max_leases": "-inf"},
        {"max_leases": "inf"},  # passes the check; LRANGE refuses it
        {"max_leases": "1e20"},  # likewise
        {"max_leases": " 0x2 "},
        {"max_leases": "2e0"},
        {"max_leases": "0x1p1"},
        {"lease_ms": "0"},
        {"lease_ms": "ms"},
        {"batch": "-1"},
        {"batch": "1.0"},
        {"batch": ""},
        {"max_attempts": "x"},
        {"mode": "dd"},
        {"prefix": ""},
        {"prefix": None},
    ],
)  # fmt: skip
def test_malformed_arguments(sides: Sides, changes: dict[str, Any]) -> None:
    enqueue(sides, b"sa", 1, 2)
    sides.claim(**changes)


@pytest.mark.parametrize(
    "lease_ms",
    [
        "inf",  # passes the check: the claim leases, then SET PX fails (the Lua's own gap)
        "1e300",  # likewise, with the deadline past a C long
        "4611686018427387904",  # 2**62
        "9007199254740993",  # 2**53 + 1: rounds as a double
    ],
)
def test_absurd_lease_durations(sides: Sides, lease_ms: str) -> None:
    enqueue(sides, b"sa", 1, 2)
    sides.claim(lease_ms=lease_ms)


@pytest.mark.parametrize("batch", ["99999999999999999999", "9007199254740993", "000"])
def test_absurd_batches_and_their_retry(sides: Sides, batch: str) -> None:
    enqueue(sides, b"sa", 1, 2, 3)
    sides.claim(batch=batch)
    sides.claim(batch=batch)


def test_too_few_keys(sides: Sides) -> None:
    sides.claim(keys=sides.part.fixed)
    sides.claim(keys=sides.part.fixed, mode="x")


@pytest.mark.parametrize(
    "record",
    [
        b"garbage",  # no newline
        b"r1\nxx",  # no header
        b"r1\n1 2\n3:abc\n0 1|2 7",  # a line 0: its window becomes ready_left
        b"r1\n4 9\n2:sa3:xyz\n2 |5 1\n1 3|4 0\n2 0|1 2",  # lines out of order, repeated
        b"r1\n0 5\n99:sa",  # a length past the end
        b"other\n1 2\n2:sa",  # another request: a new claim
    ],
)
def test_claim_records(sides: Sides, record: bytes) -> None:
    enqueue(sides, b"sa", 1, 2)
    sides.do("SET", sides.part.claim_record("w"), record)
    sides.claim()


def test_a_record_without_header_whose_request_id_reads_as_a_length(sides: Sides) -> None:
    sides.do("SET", sides.part.claim_record("w"), b"12:x\nzz")
    sides.claim(request="12:x")


@pytest.mark.parametrize("where", ["record", "queue", "retried queue", "token"])
def test_wrong_types_and_values(sides: Sides, where: str) -> None:
    enqueue(sides, b"sa", 1, 2)
    enqueue(sides, b"sb", 3)
    if where == "record":
        sides.do("RPUSH", sides.part.claim_record("w"), b"x")
    elif where == "queue":
        sides.do("DEL", sides.part.queue(b"sb"))
        sides.do("SET", sides.part.queue(b"sb"), b"x")
    elif where == "retried queue":
        sides.claim()
        sides.do("DEL", sides.part.queue(b"sb"))
        sides.do("HSET", sides.part.queue(b"sb"), b"f", b"v")
    else:  # the token counter corrupt: HINCRBY fails after the LPOP, as in Lua
        sides.do("HSET", sides.part.meta, b"token", b"x")
    sides.claim()
