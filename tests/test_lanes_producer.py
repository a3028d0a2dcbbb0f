"""The producer's ``lanes`` option: items on their lane's list with keyed entries, run once each
with their own sub key and in order per sub key, the lane count fixed per namespace
(LaneCountMismatch), the Manager with lanes on both backends."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any, cast

import pytest

import workshaper
from workshaper import Enqueued, InvalidInput, InvalidType, LaneCountMismatch, codec
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys
from workshaper.ops.inspection import Inspector
from workshaper_tools.testing import RedisServer

#: Sub keys of every type, two of them with the same text in another type, and None.
SUB_KEYS: list[codec.SubKey] = [
    "a",
    "b",
    7,
    b"a",
    b"\x00\xff",
    "é",
    None,
    *[f"k{i}" for i in range(20)],
]


def items_of(count: int, partitions: int, seed: int) -> list[tuple[codec.SubKey, str, int, int]]:
    """``count`` items over ``partitions``, sub keys drawn from SUB_KEYS, offsets ascending per
    partition with gaps."""
    rng = random.Random(seed)
    next_offset = dict.fromkeys(range(partitions), 0)
    out = []
    for i in range(count):
        p = rng.randrange(partitions)
        next_offset[p] += rng.randrange(1, 3)
        out.append((rng.choice(SUB_KEYS), f"m{i}", p, next_offset[p]))
    return out


class Runs:
    """What a handler saw: (start|end, partition, offset, current_job().sub_key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, int, int, object]] = []

    def work(self, message: object, partition: int, offset: int) -> None:
        sub_key = workshaper.current_job().sub_key
        with self.lock:
            self.events.append(("start", partition, offset, sub_key))
        with self.lock:
            self.events.append(("end", partition, offset, sub_key))

    def check(self, items: list[tuple[codec.SubKey, Any, int, int]]) -> None:
        """Every item ran exactly once, with its own sub key; per (partition, sub key) the
        items ran one at a time, in offset order (None: no order)."""
        with self.lock:
            events = list(self.events)
        starts = Counter((p, o, s) for kind, p, o, s in events if kind == "start")
        assert starts == Counter((p, o, s) for s, _, p, o in items)
        per_key: dict[tuple[int, str, object], list[tuple[str, int]]] = {}
        for kind, p, o, s in events:
            if s is not None:
                per_key.setdefault((p, type(s).__name__, s), []).append((kind, o))
        for key, seen in per_key.items():
            offsets = [o for kind, o in seen if kind == "start"]
            assert offsets == sorted(offsets), f"{key}: out of order: {offsets}"
            assert seen == [e for o in offsets for e in (("start", o), ("end", o))], key


def test_items_land_in_their_lane_with_keyed_entries(backend: Backend, namespace: str) -> None:
    items = items_of(200, 2, seed=1)
    client = backend.client
    keys = NamespaceKeys(namespace)
    with workshaper.Producer(backend, namespace, lanes=8) as producer:
        assert client.exists(keys.lanes) == 0  # recorded at the first enqueue, not before
        assert producer.enqueue_many(items) == [Enqueued.ACCEPTED] * len(items)
        assert client.get(keys.lanes) == b"8"
        expected: dict[tuple[int, bytes], list[bytes]] = {}
        for sub_key, message, p, o in items:
            sub = codec.encode_sub_key(sub_key, o)
            lane = codec.lane_sub(codec.lane_of(sub, 8))
            entry = codec.keyed_entry(o, sub, codec.encode_message(message, 100))
            expected.setdefault((p, lane), []).append(entry)
        for p in (0, 1):
            pkeys = keys.partition(p)
            lanes = set(cast(list[bytes], client.zrange(pkeys.heads, 0, -1)))
            assert lanes == {lane for q, lane in expected if q == p}
            assert all(codec.decode_sub_key(s) == codec.Lane(int(s[1:])) for s in lanes)
            for lane in lanes:
                entries = cast(list[bytes], client.lrange(pkeys.queue(lane), 0, -1))
                assert entries == expected[(p, lane)]
                for raw, (sub_key, _, _, o) in zip(
                    entries, [i for i in items if i[2] == p and _lane(i) == lane], strict=True
                ):
                    assert codec.item_sub_key(raw) == sub_key
                    assert codec.parse_entry(raw).offset == o
        # Dedupe by offset is the scripts' as ever.
        assert producer.enqueue_many(items[:5]) == [Enqueued.DUPLICATE] * 5


def _lane(item: tuple[codec.SubKey, Any, int, int]) -> bytes:
    return codec.lane_sub(codec.lane_of(codec.encode_sub_key(item[0], item[3]), 8))


def test_lanes_spread_unordered_items_and_keep_a_sub_key_on_one_lane() -> None:
    """None sub keys are named by their offset, so they spread over the lanes; a sub key
    always maps to the same lane."""
    lanes = {codec.lane_of(codec.encode_sub_key(None, o), 16) for o in range(1000)}
    assert lanes == set(range(16))
    assert len({codec.lane_of(codec.encode_sub_key("k", o), 16) for o in range(100)}) == 1


def test_a_worker_runs_every_item_once_with_its_own_sub_key_in_order(
    backend: Backend, namespace: str
) -> None:
    items = items_of(600, 3, seed=2)
    runs = Runs()
    with workshaper.Producer(backend, namespace, lanes=4, max_in_queue=10**6) as producer:
        producer.enqueue_many(items)
        worker = workshaper.Worker(backend, namespace, work=runs.work, concurrency=8).start()
        try:
            assert producer.flush(timeout=60)
        finally:
            assert worker.stop(timeout=30)
        runs.check(items)
        last = {p: max(o for _, _, q, o in items if q == p) for p in range(3)}
        assert {p: producer.watermark(p) for p in range(3)} == last


def test_two_workers_on_redis_with_retries_keep_order(
    redis_server: RedisServer, namespace: str
) -> None:
    """Two workers on a real Redis; every 7th item fails its first attempt: it runs again
    before its sub key's next item, and every item still ends exactly once."""
    items = items_of(400, 2, seed=3)
    runs = Runs()
    failed: set[tuple[int, int]] = set()
    lock = threading.Lock()

    def work(message: object, partition: int, offset: int) -> None:
        if offset % 7 == 0:
            with lock:
                first = (partition, offset) not in failed
                failed.add((partition, offset))
            if first:
                raise RuntimeError("first attempt fails")
        runs.work(message, partition, offset)

    url = redis_server.url
    with workshaper.Producer(url, namespace, lanes=16, max_in_queue=10**6) as producer:
        producer.enqueue_many(items)
        workers = [
            workshaper.Worker(url, namespace, work=work, concurrency=4, retry_backoff=0).start()
            for _ in range(2)
        ]
        try:
            assert producer.flush(timeout=60)
        finally:
            for worker in workers:
                assert worker.stop(timeout=30)
    runs.check(items)
    assert failed == {(p, o) for _, _, p, o in items if o % 7 == 0}


@pytest.mark.parametrize(("first", "second"), [(8, 16), (8, None), (None, 8)])
def test_lane_count_mismatch_names_both_counts_and_writes_nothing(
    backend: Backend, namespace: str, first: int | None, second: int | None
) -> None:
    pkeys = NamespaceKeys(namespace).partition(0)
    with workshaper.Producer(backend, namespace, lanes=first) as producer:
        producer.enqueue("k", "m", 0, 0)
        with workshaper.Producer(backend, namespace, lanes=second) as other:
            with pytest.raises(LaneCountMismatch) as raised:
                other.enqueue("k", "m", 0, 1)
            with pytest.raises(LaneCountMismatch):  # and again: a refusal is not cached
                other.enqueue_many([("k", "m", 0, 1), ("j", "m", 1, 0)])
        assert (raised.value.recorded, raised.value.lanes) == (first, second)
        text = str(raised.value)
        shown = {8: "lanes=8", 16: "lanes=16", None: "no lanes"}
        assert f"has {shown[first]}" in text and f"this producer has {shown[second]}" in text
        assert backend.client.llen(pkeys.accepted) == 1  # only the first producer's item
        with workshaper.Producer(backend, namespace, lanes=first) as same:
            assert same.enqueue("k", "m", 0, 1) is Enqueued.ACCEPTED


def test_a_producer_without_lanes_records_none(backend: Backend, namespace: str) -> None:
    """A producer without lanes records "0" at its first enqueue, so a producer with lanes
    that starts while it runs is refused (not only one that starts after its check)."""
    keys = NamespaceKeys(namespace)
    with workshaper.Producer(backend, namespace) as producer:
        assert producer.enqueue_many([]) == []
        assert backend.client.exists(keys.lanes) == 0  # nothing enqueued: nothing recorded
        producer.enqueue("k", "m", 0, 0)
        assert backend.client.get(keys.lanes) == b"0"
        with (
            workshaper.Producer(backend, namespace, lanes=2) as late,
            pytest.raises(LaneCountMismatch, match="has no lanes"),
        ):
            late.enqueue("k", "m", 0, 1)
        assert producer.enqueue("k", "m", 0, 1) is Enqueued.ACCEPTED


def test_purge_deletes_the_lane_count(backend: Backend, namespace: str) -> None:
    with workshaper.Producer(backend, namespace, lanes=8) as producer:
        producer.enqueue("k", "m", 0, 0)
    inspector = Inspector(backend, namespace)
    inspector.purge(partition=0)  # one partition only: the namespace keeps its count
    assert backend.client.get(NamespaceKeys(namespace).lanes) == b"8"
    inspector.purge()
    assert backend.client.exists(NamespaceKeys(namespace).lanes) == 0
    with workshaper.Producer(backend, namespace, lanes=16) as producer:
        assert producer.enqueue("k", "m", 0, 0) is Enqueued.ACCEPTED


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, InvalidInput),
        (-1, InvalidInput),
        (5000, InvalidInput),
        (True, InvalidType),
        ("8", InvalidType),
        (8.0, InvalidType),
    ],
)
def test_bad_lanes_are_refused_by_name(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="lanes"):
        workshaper.Producer(None, "t-bad-lanes", lanes=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="lanes"):
        workshaper.Manager(work=print, lanes=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="lanes"):
        unreachable = "redis://127.0.0.1:1/0"  # never reached: the option is checked first
        workshaper.Manager(work=print, redis=unreachable, lanes=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["embedded", "redis"])
def test_manager_with_lanes_runs_everything_in_order(
    where: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    redis = None if where == "embedded" else request.getfixturevalue("redis_server").url
    items = items_of(500, 3, seed=4)
    runs = Runs()
    acked: dict[int, int] = {}
    lock = threading.Lock()

    def ack(partition: int, offset: int) -> None:
        with lock:
            assert offset > acked.get(partition, -1)
            acked[partition] = offset

    with workshaper.Manager(
        work=runs.work, ack=ack, max_in_queue=50, redis=redis, namespace=namespace, lanes=8
    ) as manager:
        for sub_key, message, p, o in items:
            assert manager.enqueue(sub_key, message, p, o) is Enqueued.ACCEPTED
        assert manager.flush(timeout=60)
        assert manager.total_enqueued == manager.total_acked == len(items)
    runs.check(items)
    assert acked == {p: max(o for _, _, q, o in items if q == p) for p in range(3)}
