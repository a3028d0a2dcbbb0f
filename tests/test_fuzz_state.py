"""Corrupt state under our keys, systematically (issue 8, item 14): hypothesis corrupts queue
entries (garbage, truncated records, wrong tags, bad payloads), writes garbage into the
bookkeeping keys, gives keys the wrong type or deletes them, before and while a worker runs.

Each case must end in a dead-lettered item or a clear error, never a dead worker; entries that
are merely corrupt must never cost another item or stall the partition. ``CASES`` counts the
cases tried (printed with ``-s``).
"""

from __future__ import annotations

import collections
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import strategies as st

import workshaper
from workshaper import codec
from workshaper.admin import Admin
from workshaper.connection import Backend, connect
from workshaper.keys import PARTITION_KEY_NAMES, NamespaceKeys
from workshaper_tools.testing import RedisServer

from . import fuzzing
from .conftest import wait_for

CASES: collections.Counter[str] = collections.Counter()
BUDGET = 20
SLOW_FACTOR = 10

pytestmark = pytest.mark.timeout(900)

SUBS = ["a", "b", "c"]
#: offset -> sub key: three sub keys of three items, interleaved, and two unordered items.
ITEMS = {o: SUBS[o % 3] for o in range(9)} | {9: None, 10: None}


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    print("\ncorrupt-state cases tried:", dict(sorted(CASES.items())), sum(CASES.values()))


@pytest.fixture
def real_backend(redis_server: RedisServer) -> Iterator[Backend]:
    backend = connect(redis_server.url)
    yield backend
    backend.close()


def run_fuzz(name: str, examples: int, test: Callable[..., None], **strategies: Any) -> None:
    """Run ``test`` on ``examples`` generated cases (seeded by the test, so every run tries the
    same cases), counted in ``CASES``."""
    fuzzing.run_fuzz(CASES, name, examples, test, **strategies)


class Run:
    """One case: a namespace with ITEMS enqueued, a producer acking it, a worker recording."""

    def __init__(self, backend: Backend, batch_size: int) -> None:
        self.backend = backend
        self.namespace = "fs" + uuid.uuid4().hex[:10]
        self.keys = NamespaceKeys(self.namespace).partition(0)
        self.ran: set[int] = set()
        self.producer = workshaper.Producer(backend, self.namespace)
        self.producer.enqueue_many([(sub, f"m{o}", 0, o) for o, sub in ITEMS.items()])
        self.batch_size = batch_size
        self.worker: workshaper.Worker | None = None

    def queue(self, sub: str) -> bytes:
        return self.keys.queue(codec.encode_sub_key(sub, 0))

    def start_worker(self) -> None:
        def work(message: Any, partition: int, offset: int) -> None:
            self.ran.add(offset)

        self.worker = workshaper.Worker(
            self.backend,
            self.namespace,
            work=work,
            concurrency=2,
            lease=0.5,
            max_attempts=2,
            retry_backoff=0,
            batch_size=self.batch_size,
        ).start()

    def worker_alive(self) -> bool:
        assert self.worker is not None
        return self.worker._thread is not None and self.worker._thread.is_alive()

    def dead(self) -> list[Any]:
        return Admin(self.backend, self.namespace).dead_letters(0)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop(10)
        self.producer.close()


# --- corrupt queue entries: each is dead-lettered, nothing else is harmed -----------------------


@dataclass(frozen=True)
class EntryDamage:
    sub: str
    index: int  # 0..2: which of the sub key's entries
    kind: str
    data: bytes
    cut: int

    def apply(self, run: Run) -> bytes | None:
        """Damage the entry; returns the new value (None when garbage was added, not replaced)."""
        client = run.backend.client
        key = run.queue(self.sub)
        raw = cast("bytes | None", client.lindex(key, self.index))  # bytes replies
        assert raw is not None
        prefix = raw.partition(b"|")[0] + b"|"
        if self.kind == "append":
            client.rpush(key, self.data)
            return None
        if self.kind == "prepend":
            client.lpush(key, self.data)
            return None
        new = {
            "garbage": self.data,
            "truncate": raw[: 1 + self.cut % max(1, len(raw) - 1)],  # 1 to len - 1 bytes
            "tag": prefix + b"x" + raw[len(prefix) + 1 :],
            "bad_utf8": prefix + b"s\xff\xfe" + self.data,
            "bad_json": prefix + b"j{" + self.data,
            "no_payload": prefix,
        }[self.kind]
        # cast: redis-py types lset's value str; bytes work
        client.lset(key, self.index, cast(str, new))
        return new


entry_damages = st.builds(
    EntryDamage,
    sub=st.sampled_from(SUBS),
    index=st.integers(0, 2),
    kind=st.sampled_from(
        ["garbage", "truncate", "tag", "bad_utf8", "bad_json", "no_payload", "append", "prepend"]
    ),
    data=st.binary(max_size=12),  # empty too: see test_an_empty_queue_entry_is_dead_lettered
    cut=st.integers(1, 40),
)


def fuzz_corrupt_entries(backend: Backend, examples: int) -> None:
    def case(damages: list[EntryDamage], batch_size: int, mid_run: bool) -> None:
        run = Run(backend, batch_size)
        try:
            if mid_run:
                run.start_worker()
            destroyed = 0  # entries whose offset prefix is gone: dead-lettered without one
            for damage in damages:
                new = damage.apply(run)
                if new is None or not new.partition(b"|")[0].isdigit() or b"|" not in new:
                    destroyed += 1
            if not mid_run:
                run.start_worker()
            # Not stuck: every accepted item finishes and the watermark passes them all.
            assert run.producer.flush(timeout=30), "the partition is stuck"
            assert run.producer.watermark(0) == max(ITEMS)
            dead = run.dead()
            dead_offsets = {d.offset for d in dead if d.offset is not None}
            missing = set(ITEMS) - run.ran - dead_offsets
            assert len(missing) <= destroyed, f"items lost: {sorted(missing)}"
            assert run.worker_alive(), "the worker died"
        finally:
            run.close()

    run_fuzz(
        "corrupt entries",
        examples,
        case,
        damages=st.lists(entry_damages, min_size=1, max_size=3),
        batch_size=st.integers(1, 4),
        mid_run=st.booleans(),
    )


def test_fuzz_corrupt_entries(real_backend: Backend) -> None:
    fuzz_corrupt_entries(real_backend, BUDGET)


@pytest.mark.slow
def test_fuzz_corrupt_entries_long(real_backend: Backend) -> None:
    fuzz_corrupt_entries(real_backend, BUDGET * SLOW_FACTOR)


def test_an_empty_queue_entry_is_dead_lettered(real_backend: Backend) -> None:
    # Found by fuzz_corrupt_entries: the worker's fail_item call was refused ("bad argument
    # ... head prefix: nil") on every try, so the sub key and the watermark stayed stuck. An
    # entry without an offset is now recognised by its whole bytes, compared exactly.
    run = Run(real_backend, batch_size=1)
    try:
        # cast: redis-py types lset's value str; bytes work
        real_backend.client.lset(run.queue("a"), 0, cast(str, b""))
        run.start_worker()
        assert run.producer.flush(timeout=5), "the partition is stuck"
        assert [d.raw_entry for d in run.dead()] == [b""]
        assert run.ran == set(ITEMS) - {0}
    finally:
        run.close()


# --- wrong key types, deleted keys, garbage in the bookkeeping: the worker survives ------------


@pytest.mark.parametrize(
    "name",
    # owners and leases: claim_sub_keys.lua failed after its LPOP of ready, stranding the
    # popped sub keys for good; it now checks every key's type before its first write.
    ["owners", "leases", "exact", "attempts"],
)
def test_a_key_of_the_wrong_type_does_not_kill_the_worker(
    real_backend: Backend, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    # Found by fuzz_corrupt_keys: a WRONGTYPE reply to a claim ended the worker's loop. Now it
    # is logged and the claim sent again with a backoff, until an operator repairs the key.
    run = Run(real_backend, batch_size=2)
    key = run.keys.fixed[FIXED.index(name)]
    client = real_backend.client
    try:
        client.delete(key)
        client.set(key, b"not a hash")
        run.start_worker()
        wait_for(lambda: any("WRONGTYPE" in r.getMessage() for r in caplog.records))
        assert run.worker_alive(), "the worker died"
        client.delete(key)  # repaired
        assert run.producer.flush(timeout=10), "the partition stayed stuck after the repair"
        assert run.ran == set(ITEMS)
        assert run.worker_alive()
    finally:
        run.close()


FIXED = list(PARTITION_KEY_NAMES)


@dataclass(frozen=True)
class KeyDamage:
    key: str  # a fixed key's name, or "q:<sub>"
    kind: str  # "wrong_type", "delete", "garbage"
    data: bytes

    def target(self, run: Run) -> bytes:
        if self.key.startswith("q:"):
            return run.queue(self.key[2:])
        return run.keys.fixed[FIXED.index(self.key)]

    def apply(self, run: Run) -> None:
        client = run.backend.client
        key = self.target(run)
        if self.kind == "delete":
            client.delete(key)
        elif self.kind == "wrong_type":
            kind = client.type(key)
            client.delete(key)
            if kind == b"string":
                client.rpush(key, self.data)
            else:
                client.set(key, self.data)
        else:  # garbage of the right type
            kind = client.type(key)
            if kind in (b"list", b"none"):
                client.rpush(key, self.data)
            elif kind == b"hash":
                fields = client.hkeys(key) or [b"x"]
                client.hset(key, fields[len(self.data) % len(fields)], self.data)
            elif kind == b"zset":
                client.zadd(key, {self.data: len(self.data)})


key_damages = st.builds(
    KeyDamage,
    key=st.sampled_from(FIXED + [f"q:{s}" for s in SUBS]),
    kind=st.sampled_from(["wrong_type", "delete", "garbage"]),
    data=st.binary(max_size=12),
)


def fuzz_corrupt_keys(backend: Backend, examples: int) -> None:
    def case(damages: list[KeyDamage], batch_size: int, mid_run: bool) -> None:
        run = Run(backend, batch_size)
        try:
            if mid_run:
                run.start_worker()
            for damage in damages:
                damage.apply(run)
            if not mid_run:
                run.start_worker()
            # The worker runs what it can and keeps running; the producer's enqueue ends in a
            # status or a clear error.
            try:
                run.producer.enqueue("a", "late", 0, 100)
            except workshaper.WorkShaperError as exc:
                assert str(exc)
            run.producer.flush(timeout=1)
            assert run.worker_alive(), "the worker died"
        finally:
            run.close()

    run_fuzz(
        "corrupt keys",
        examples,
        case,
        damages=st.lists(key_damages, min_size=1, max_size=2),
        batch_size=st.integers(1, 4),
        mid_run=st.booleans(),
    )


def test_fuzz_corrupt_keys(real_backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)
    fuzz_corrupt_keys(real_backend, BUDGET // 2)  # a stuck case waits 1 s: half the budget


@pytest.mark.slow
def test_fuzz_corrupt_keys_long(real_backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)
    fuzz_corrupt_keys(real_backend, BUDGET * SLOW_FACTOR)


@pytest.mark.parametrize("garbage", [b"", b"s\xff\xfe", b"i12x", b"?what"])
def test_garbage_in_ready_does_not_kill_the_worker(real_backend: Backend, garbage: bytes) -> None:
    # Found by fuzz_corrupt_keys: a sub key in `ready` that does not decode ended the worker
    # when it was claimed. Now its lease is run as raw bytes (nothing to run) and ends.
    run = Run(real_backend, batch_size=1)
    try:
        real_backend.client.lpush(run.keys.ready, garbage)
        run.start_worker()
        assert run.producer.flush(timeout=30), "the partition is stuck"
        assert run.ran == set(ITEMS)
        assert run.worker_alive(), "the worker died"
    finally:
        run.close()
