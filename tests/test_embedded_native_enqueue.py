"""enqueue_items' transcription (workshaper/embedded/native/enqueue.py) against its Lua and a
real Redis, on what the differential test's rules do not reach: lost writes (status 5), a re-sent
call answered from its record, batches past the script's chunk sizes (2,000 ARGV values per
RPUSH, 1,000 pairs per ZADD of new heads), a late gap above every entry left in `accepted`, a
queue list of the wrong type (the fast path's pushes undone) and malformed calls. Every reply
and, after every call, every key of the namespace must be the same on the three."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from workshaper import codec, scripts
from workshaper.batch import run_one
from workshaper.connection import Backend, connect, embedded_backend
from workshaper.embedded import EmbeddedServer
from workshaper.embedded.native.enqueue import CHUNK
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import load_script
from workshaper.scripts import EncodedItem
from workshaper_tools.testing import RedisServer

from .differential import dump

SOURCE = load_script("enqueue_items").source


def item(sub: str | None, offset: int) -> EncodedItem:
    return EncodedItem(
        codec.encode_sub_key(sub, offset),
        offset,
        codec.make_entry(offset, codec.encode_message(f"m{offset}", 100)),
    )


class Sides:
    """The native embedded server, the embedded server in Lua, and a real Redis, in step."""

    def __init__(self, redis_url: str) -> None:
        namespace = "e" + uuid.uuid4().hex[:10]
        self.backends: list[Backend] = [
            embedded_backend(EmbeddedServer(native_scripts=True)),
            embedded_backend(EmbeddedServer(native_scripts=False)),
            connect(redis_url),
        ]
        self.keys = NamespaceKeys(namespace).partition(0)
        self.pattern = f"ws:{{{namespace}*"
        self.calls = 0

    def same(self, run: Callable[[Backend], Any]) -> Any:
        """``run`` on each side: the same reply (or error class) and then the same state."""
        outcomes = []
        for backend in self.backends:
            try:
                outcomes.append(run(backend))
            except Exception as exc:  # the same error class on every side (texts differ)
                outcomes.append(("error", type(exc).__name__))
        assert outcomes[0] == outcomes[1] == outcomes[2]
        states = [dump(b.client, self.keys, self.pattern) for b in self.backends]
        assert states[0] == states[1] == states[2]
        return outcomes[0]

    def enqueue(
        self, items: list[EncodedItem], max_in_queue: int = 1_000_000, **kwargs: Any
    ) -> Any:
        self.calls += 1
        kwargs.setdefault("request_id", f"call{self.calls}")  # the same on every side
        return self.same(
            lambda b: run_one(
                b,
                lambda batch: scripts.enqueue_items(
                    batch, self.keys, items, max_in_queue, **kwargs
                ),
            )
        )

    def raw(self, argv: list[Any], subs: Sequence[bytes] = ()) -> Any:
        """EVAL of the script with these arguments, as sent (the reply not parsed)."""
        keys = [*self.keys.fixed, *(self.keys.queue(s) for s in subs)]
        return self.same(lambda b: b.client.eval(SOURCE, len(keys), *keys, *argv))

    def each(self, write: Callable[[redis.Redis], Any]) -> None:
        for backend in self.backends:
            write(backend.client)

    def state(self) -> dict[bytes, Any]:
        """Every key of the namespace (the same on each side: same() checks it)."""
        return dump(self.backends[0].client, self.keys, self.pattern)

    def close(self) -> None:
        for backend in self.backends:
            keys = list(backend.client.scan_iter(match=self.pattern, count=1000))
            if keys:
                backend.client.delete(*keys)
            backend.close()


@pytest.fixture
def sides(redis_server: RedisServer) -> Iterator[Sides]:
    s = Sides(redis_server.url)
    yield s
    s.close()


def test_lost_writes_write_nothing_and_keep_the_record(sides: Sides) -> None:
    assert sides.enqueue([item("a", i) for i in range(5)], request_id="r1") == [0] * 5
    lost = [item("a", 5), item("b", 6)]
    assert sides.enqueue(lost, request_id="r2", expected_highest=10) == [5, 5]
    # The record of r1 is still the partition's last: a re-send of r1 gets its answer.
    assert sides.raw(["r1", 100, -1, 0, 0]) == 5
    assert sides.enqueue(lost, request_id="r3", expected_highest=4) == [0, 0]


def test_a_re_sent_call_gets_its_first_answer_on_both_paths(sides: Sides) -> None:
    enc = codec.encode_sub_key("a", 0)
    entries = [codec.make_entry(i, b"x") for i in (1, 2)]
    fast = ["f1", 100, -1, 2, 1, 1, 2, 1, 1, enc, 2, *entries]
    assert sides.raw(fast, [enc]) == 2
    assert sides.raw(fast, [enc]) == 2  # from the record: nothing written again
    general = ["g1", 100, -1, 2, 1, 2, 3, 1, 1, enc, 2, entries[1], codec.make_entry(3, b"y")]
    assert sides.raw(general, [enc]) == [1, 0]
    assert sides.raw(general, [enc]) == [1, 0]
    # Records the script never writes are answered as the script reads them.
    sides.each(lambda c: c.hset(sides.keys.meta, "request", "h1|n"))
    assert sides.raw(["h1", 100, -1, 0, 0]) is None
    sides.each(lambda c: c.hset(sides.keys.meta, "request", "h1|n7.9"))
    assert sides.raw(["h1", 100, -1, 0, 0]) == 7
    sides.each(lambda c: c.hset(sides.keys.meta, "request", "h1|12x"))
    assert sides.raw(["h1", 100, -1, 0, 0]) == [1, 2, 72]


def test_batches_past_the_chunk_sizes(sides: Sides) -> None:
    count = 2100  # past 2,000 ARGV values per RPUSH and 1,000 pairs per ZADD or HMGET
    # A leased sub key among them: its new queue gets a head but is not made runnable.
    sides.each(lambda c: c.hset(sides.keys.owners, codec.encode_sub_key("k7", 0), "1|-|1|3|d|w"))
    # The fast path: one sub key per item, then one sub key for all.
    assert sides.enqueue([item(f"k{i}", 2 * i) for i in range(count)]) == [0] * count
    assert sides.enqueue([item("one", 2 * count + i) for i in range(count)]) == [0] * count
    # The general path: late gap fills (LINSERT, `late`), duplicates, fresh offsets of one sub
    # key, then of one sub key each (new heads) until the partition is full.
    late = [item(f"k{i}", 2 * i + 1) for i in range(count)]
    again = [item(f"k{i}", 2 * i) for i in range(0, count, 7)]
    one = [item("two", 4 * count + i) for i in range(count)]
    each = [item(f"n{i}", 5 * count + i) for i in range(count)]
    statuses = sides.enqueue([*late, *again, *one, *each], max_in_queue=4 * count + 1100)
    accepted = [0] * count
    assert statuses == [*accepted, *[1] * len(again), *accepted, *[0] * 1100, *[3] * (count - 1100)]


def test_a_late_gap_above_every_accepted_entry_is_appended(sides: Sides) -> None:
    # `max` says 100 was accepted, `accepted` has nothing above 50 (state of a partial restore):
    # 50 is a gap filled late, appended to `accepted` rather than inserted.
    sides.each(lambda c: c.hset(sides.keys.meta, "max", "100"))
    assert sides.enqueue([item("a", 50), item("a", 40), item("b", 101)]) == [0, 0, 0]


def test_a_call_without_items(sides: Sides) -> None:
    assert sides.raw(["z1", 100, -1, 0, 0]) == []
    assert sides.enqueue([item("a", 3)]) == [0]
    assert sides.raw(["z2", 100, -1, 0, 0]) == []


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no n
        ["r", 100, -1],
        ["r", "x", -1, 1, 1, 5, 1, "sa", 1, "5|m"],  # max_in_queue no number
        ["r", 100, "x", 1, 1, 5, 1, "sa", 1, "5|m"],  # expected_highest no number
        ["r", 100, -1, 1, 1, "x", 1, "sa", 1, "5|m"],  # an offset no number
        ["r", 100, -1, 1, 1, 5, 1, "sa"],  # a group without its count
        ["r", 100, -1, 1, None, 5, 1, "sa", 1, "5|m"],  # no group count
    ],
)
def test_malformed_calls_fail_before_writing(sides: Sides, argv: list[Any]) -> None:
    sides.enqueue([item("a", 3)])
    args = [b"" if a is None else a for a in argv]
    outcome = sides.raw(args, [b"sa"])
    assert outcome[0] == "error"


def test_a_corrupt_watermark_fails_the_call_before_writing(sides: Sides) -> None:
    sides.enqueue([item("a", 3)])
    sides.each(lambda c: c.hset(sides.keys.meta, "acked", "garbage"))
    assert sides.enqueue([item("a", 4)])[0] == "error"


def test_numbers_are_lua_doubles(sides: Sides) -> None:
    # Past 2**53 two offsets are one double to Lua: the second is a duplicate of the first.
    assert sides.enqueue([item("a", 2**53), item("b", 2**53 + 1)]) == [0, 1]
    # tonumber reads what C's strtod reads: "inf" is a number (no limit), "0x2" is 2.
    enc = codec.encode_sub_key("c", 0)
    top = 2**53 + 10
    assert sides.raw(["i1", "inf", -1, 1, 1, top, 1, enc, 1, b"%d|m" % top], [enc]) == 1
    assert sides.raw(["i2", "0x2", -1, 1, 1, 3, 1, enc, 1, b"3|m"], [enc]) == [3]
    assert sides.raw(["i3", 100, -1, "nan", 0]) == []  # `for i = 1, NaN` runs no time


def test_an_accepted_entry_that_is_no_number_fails_the_search(sides: Sides) -> None:
    sides.each(lambda c: c.rpush(sides.keys.accepted, "x"))
    sides.each(lambda c: c.hset(sides.keys.meta, "max", "100"))
    assert sides.enqueue([item("a", 50)])[0] == "error"  # `v < value` with v nil


@pytest.mark.parametrize("bad_at", ["first", "middle", "last"])
def test_a_list_of_the_wrong_type_undoes_the_fast_paths_pushes(sides: Sides, bad_at: str) -> None:
    # Lists that existed (one of them leased, one whose group is past one RPUSH), lists that
    # were new, and one list of the wrong type: the call fails, every key as it was.
    sides.each(lambda c: c.hset(sides.keys.owners, codec.encode_sub_key("b", 0), "1|-|1|3|d|w"))
    sides.enqueue([item("a", 0), item("a", 1), item("b", 2), item("big", 3), item("c", 4)])
    bad = codec.encode_sub_key("bad", 0)
    sides.each(lambda c: c.set(sides.keys.queue(bad), "not a list"))
    before = sides.state()
    subs = ["a", "new1", "b", "big", "new2", "c"]
    at = {"first": 0, "middle": 3, "last": len(subs)}[bad_at]
    subs.insert(at, "bad")
    items: list[EncodedItem] = []
    for sub in subs:
        for _ in range(CHUNK + 10 if sub == "big" else 2):
            items.append(item(sub, 5 + len(items)))
    assert sides.enqueue(items)[0] == "error"
    assert sides.state() == before
    sides.each(lambda c: c.delete(sides.keys.queue(bad)))
    assert sides.enqueue(items) == [0] * len(items)


def test_a_group_past_the_end_of_argv_undoes_the_chunks_it_pushed(sides: Sides) -> None:
    # A malformed call: the second group claims more entries than ARGV holds. Its first RPUSH
    # (CHUNK entries) goes in, the next fails on a nil value: both groups' pushes are undone.
    sides.enqueue([item("a", 0)])
    before = sides.state()
    subs = [codec.encode_sub_key("a", 0), codec.encode_sub_key("z", 0)]
    entries = [codec.make_entry(1 + i, b"x") for i in range(CHUNK + 5)]
    argv = ["m1", 100_000, -1, 2, 2, 1, 2, 1, 2, subs[0], 1, entries[0], subs[1], CHUNK + 9]
    assert sides.raw([*argv, *entries[1:]], subs)[0] == "error"
    assert sides.state() == before
