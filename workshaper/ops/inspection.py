"""What an operator sees of a namespace: partitions, workers, stuck sub keys and dead letters,
and the actions on dead letters (replay, drop) and on the namespace (purge).

Reads cost a few commands per partition, sent in one round trip: each partition's numbers come
from one read-only script (``inspect_partition.lua``), its stuck sub keys from the ``heads``
index (``stuck_sub_keys.lua``), never from a scan of every sub key. Ages come from the
partition's clock (``keys.py``): the time an offset was accepted, to the enqueue batch.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from workshaper import codec, scripts
from workshaper.admin import FailureRecord, parse_failure_record
from workshaper.batch import Batch, run_one
from workshaper.connection import Backend, connect
from workshaper.errors import InvalidInput
from workshaper.keys import NamespaceKeys, PartitionKeys, namespace_keys
from workshaper.ops.deadletters import (
    REPLAY_BLOCKED,
    REPLAY_FAILED,
    REPLAY_PENDING,
    REPLAY_SUCCEEDED,
    DeadLetter,
    DeadLetterFilter,
    ReplayOutcome,
    parse_dead_letter,
    parse_sub_key,
    sub_key_kind,
    sub_key_text,
)

#: Default for ``stuck``: a head item unfinished this long (seconds) is shown.
DEFAULT_STUCK_AFTER = 60.0
#: Default number of stuck rows (the top K by head age, over all partitions).
DEFAULT_STUCK_LIMIT = 20
#: How often ``replay`` looks for the outcome of the new run.
REPLAY_POLL_INTERVAL = 0.05

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "Inspector",
    "PartitionView",
    "ReplayOutcome",
    "Snapshot",
    "StuckKey",
    "WorkerView",
    "namespaces",
    "parse_sub_key",
    "sub_key_kind",
    "sub_key_text",
]


def _int_or_none(raw: bytes | str | int | None) -> int | None:
    if raw is None or raw in (b"", ""):
        return None
    return int(raw)


@dataclass(frozen=True)
class PartitionView:
    """One partition's numbers at one server time."""

    partition: int
    acked: int | None  # acked watermark
    highest: int | None  # highest accepted offset
    lag: int  # highest - acked (accepted offsets not acked yet, gaps included)
    unacked_items: int  # accepted, not acked (finished or not): what backpressure counts
    lowest_unfinished: int | None
    pending_sub_keys: int  # sub keys with unfinished items
    runnable_sub_keys: int  # waiting for a worker: what an extra worker could start now
    leased_sub_keys: int  # running (held by a worker)
    expired_leases: int  # held past their deadline: the holder is gone, a reaper will act
    blocked_sub_keys: int  # waiting for an operator (on_exhausted="block")
    dead_letters: int
    oldest_unfinished_age: float | None  # seconds since the lowest unfinished was accepted
    server_ms: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_partition_view(partition: int, raw: list[Any]) -> PartitionView:
    (now, acked, highest, unacked, first, low, pending, runnable, leased, expired, blocked) = raw[
        :11
    ]
    dead, oldest = raw[11], raw[12]
    now_ms = int(now)
    acked_i, highest_i, first_i = _int_or_none(acked), _int_or_none(highest), _int_or_none(first)
    if highest_i is None:
        lag = 0
    elif acked_i is not None:
        lag = max(0, highest_i - acked_i)
    elif first_i is not None:
        lag = highest_i - first_i + 1
    else:
        lag = 0
    oldest_ms = _int_or_none(oldest)
    return PartitionView(
        partition=partition,
        acked=acked_i,
        highest=highest_i,
        lag=lag,
        unacked_items=int(unacked),
        lowest_unfinished=_int_or_none(low),
        pending_sub_keys=int(pending),
        runnable_sub_keys=int(runnable),
        leased_sub_keys=int(leased),
        expired_leases=int(expired),
        blocked_sub_keys=int(blocked),
        dead_letters=int(dead),
        oldest_unfinished_age=None if oldest_ms is None else max(0, now_ms - oldest_ms) / 1000,
        server_ms=now_ms,
    )


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    pid: int
    concurrency: int
    in_flight: int  # leases held at its last heartbeat
    heartbeat_age: float  # seconds since its last heartbeat (server time)
    reaper: bool = False  # the namespace's elected reaper (it requeues expired leases)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: Why a sub key's head has not finished.
WHY_RUNNING = "running"  # leased; its handler runs (or its batch waits in the worker)
WHY_RETRY = "retry backoff"  # leased; the head failed before and is retried after a backoff
WHY_BLOCKED = "blocked"  # attempts used up with on_exhausted="block": an operator must act
WHY_EXPIRED = "lease expired"  # the holder stopped renewing (crashed, paused); a reaper acts
WHY_WAITING = "waiting"  # runnable, no worker has taken it yet


@dataclass(frozen=True)
class StuckKey:
    partition: int
    sub_key: codec.StoredSubKey
    head_offset: int | None
    age: float | None  # seconds since the head item was accepted (None: unknown)
    attempts: int  # attempts of the head item that ended without success
    holder: str | None  # worker id holding the lease
    why: str
    queued: int  # items in the sub key's queue, the head included

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sub_key"] = sub_key_text(self.sub_key)
        out["sub_key_kind"] = sub_key_kind(self.sub_key)
        return out


@dataclass(frozen=True)
class Snapshot:
    """Everything ``status`` shows, at one moment."""

    namespace: str
    time: float  # our clock, seconds since the epoch
    partitions: list[PartitionView]
    workers: list[WorkerView]
    stuck: list[StuckKey] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "time": self.time,
            "partitions": [p.to_json() for p in self.partitions],
            "workers": [w.to_json() for w in self.workers],
            "stuck": [s.to_json() for s in self.stuck],
        }


def _why(
    blocked: bool, owner: bytes, deadline: int | None, attempts: int, now_ms: int
) -> tuple[str, str | None]:
    holder = owner.split(b"|", 5)[5].decode(errors="replace") if owner.count(b"|") >= 5 else None
    if blocked:
        return WHY_BLOCKED, None
    if holder is None:
        return WHY_WAITING, None
    if deadline is not None and deadline < now_ms:
        return WHY_EXPIRED, holder
    if attempts > 0:
        return WHY_RETRY, holder
    return WHY_RUNNING, holder


def _attempts_of(record: bytes, head_offset: int | None) -> int:
    offset, sep, count = record.partition(b"|")
    if not sep or head_offset is None or not offset.isdigit() or int(offset) != head_offset:
        return 0
    return int(count)


class Inspector:
    """Read a namespace and act on its dead letters. ``redis`` is a URL, a client or None."""

    def __init__(self, redis: Any = None, namespace: str = "default") -> None:
        codec.check_namespace(namespace)
        self.namespace = namespace
        self._backend: Backend = connect(redis)
        self._keys = namespace_keys(namespace, self._backend.cluster)

    @property
    def backend(self) -> Backend:
        return self._backend

    def close(self) -> None:
        self._backend.close()

    def _pkeys(self, partition: int) -> PartitionKeys:
        return self._keys.partition(codec.check_partition(partition))

    def partitions(self) -> list[int]:
        return sorted(int(p) for p in self._backend.client.smembers(self._keys.partitions))

    def partition_views(self, partitions: Iterable[int] | None = None) -> list[PartitionView]:
        parts = self.partitions() if partitions is None else sorted(partitions)
        if not parts:
            return []
        batch = Batch(self._backend)
        replies = [(p, scripts.inspect_partition(batch, self._pkeys(p))) for p in parts]
        batch.execute()
        return [parse_partition_view(p, r.get()) for p, r in replies]

    def workers(self) -> list[WorkerView]:
        client = self._backend.client
        if self._backend.cluster:  # TIME has no key: ask the node that holds the registry
            cluster: Any = client  # a redis.RedisCluster
            registry = cluster.hgetall(self._keys.workers)
            node = cluster.get_node_from_key(self._keys.workers)
            seconds, micros = cluster.execute_command("TIME", target_nodes=node)
        else:
            pipe = client.pipeline(transaction=False)
            pipe.hgetall(self._keys.workers)
            pipe.time()
            registry, (seconds, micros) = pipe.execute()
        raw = cast(dict[bytes, bytes], registry)
        now = seconds + micros / 1e6  # "seen" is server time: compare with the server's clock
        out = []
        for wid, blob in raw.items():
            try:
                info: dict[str, Any] = json.loads(blob)
            except ValueError:
                info = {}
            out.append(
                WorkerView(
                    id=wid.decode(errors="replace"),
                    host=str(info.get("host", "")),
                    pid=int(info.get("pid", 0)),
                    concurrency=int(info.get("concurrency", 0)),
                    in_flight=int(info.get("leases", 0)),
                    heartbeat_age=max(0.0, now - float(info.get("seen", 0.0))),
                    reaper=bool(info.get("reaper", False)),
                )
            )
        return sorted(out, key=lambda w: w.id)

    def stuck(
        self,
        older_than: float = DEFAULT_STUCK_AFTER,
        limit: int = DEFAULT_STUCK_LIMIT,
        partitions: Iterable[int] | None = None,
    ) -> list[StuckKey]:
        """The top ``limit`` sub keys by head age whose head item is older than ``older_than``
        seconds, plus blocked ones whatever their age, oldest first."""
        if older_than < 0:
            raise InvalidInput(f"older_than must be >= 0 seconds, got {older_than}")
        if limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {limit}")
        parts = self.partitions() if partitions is None else sorted(partitions)
        if not parts:
            return []
        batch = Batch(self._backend)
        replies = [
            (
                p,
                scripts.stuck_sub_keys(
                    batch, self._pkeys(p), limit=limit, older_than_ms=int(older_than * 1000)
                ),
            )
            for p in parts
        ]
        batch.execute()
        rows: list[tuple[int, int, list[Any]]] = []
        for p, reply in replies:
            raw = reply.get()
            now_ms = int(raw[0])
            rows += [(p, now_ms, raw[i : i + 7]) for i in range(1, len(raw), 7)]
        # How many items wait behind each head: one LLEN per row, in one round trip.
        pipe = self._backend.client.pipeline(transaction=False)
        for p, _, row in rows:
            pipe.llen(self._pkeys(p).queue(row[0]))
        lengths = pipe.execute() if rows else []
        out = []
        for (p, now_ms, row), queued in zip(rows, lengths, strict=True):
            sub, head, accepted, owner, deadline, attempts_record, blocked = row
            head_offset = _int_or_none(head)
            accepted_ms = _int_or_none(accepted)
            attempts = _attempts_of(attempts_record, head_offset)
            deadline_ms = None if deadline in (b"", "") else int(float(deadline))
            why, holder = _why(bool(int(blocked)), owner, deadline_ms, attempts, now_ms)
            try:
                sub_key = codec.decode_sub_key(sub)
            except (codec.CorruptEntry, ValueError):
                sub_key = sub
            out.append(
                StuckKey(
                    partition=p,
                    sub_key=sub_key,
                    head_offset=head_offset,
                    age=None if accepted_ms is None else max(0, now_ms - accepted_ms) / 1000,
                    attempts=attempts,
                    holder=holder,
                    why=why,
                    queued=int(queued),
                )
            )
        # Unknown ages sort first: no clock sample covers them, so they predate every sample.
        out.sort(
            key=lambda s: (
                -(s.age if s.age is not None else float("inf")),
                s.partition,
                s.head_offset or 0,
            )
        )
        return out[:limit]

    def snapshot(
        self, stuck_after: float = DEFAULT_STUCK_AFTER, stuck_limit: int = DEFAULT_STUCK_LIMIT
    ) -> Snapshot:
        parts = self.partitions()
        return Snapshot(
            namespace=self.namespace,
            time=time.time(),
            partitions=self.partition_views(parts),
            workers=self.workers(),
            stuck=self.stuck(stuck_after, stuck_limit, parts),
        )

    def blocked(self, partitions: Iterable[int] | None = None) -> list[FailureRecord]:
        """Every blocked sub key (held for an operator) with the reason, by partition."""
        parts = self.partitions() if partitions is None else sorted(partitions)
        pipe = self._backend.client.pipeline(transaction=False)
        for p in parts:
            pipe.hgetall(self._pkeys(p).blocked)
        out = []
        for p, raw in zip(parts, pipe.execute() if parts else [], strict=True):
            for sub, record in sorted(cast(dict[bytes, bytes], raw).items()):
                out.append(parse_failure_record(p, record, codec.decode_sub_key(sub)))
        return out

    # Dead letters

    def _dead_letters_of(self, partition: int) -> Iterator[DeadLetter]:
        key = self._pkeys(partition).dead
        client = self._backend.client
        # HSCAN pages through a large hash; the embedded backend has no HSCAN (and no size).
        pairs: Iterable[tuple[bytes, bytes]] = (
            cast(dict[bytes, bytes], client.hgetall(key)).items()
            if self._backend.embedded
            else client.hscan_iter(key, count=500)
        )
        for name, raw in pairs:
            yield parse_dead_letter(partition, name, raw)

    def dead_letters(
        self, where: DeadLetterFilter | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        """Matching dead letters by (partition, offset); corrupt entries (no offset) last."""
        where = where or DeadLetterFilter()
        parts = self.partitions() if where.partition is None else [where.partition]
        out = [d for p in parts for d in self._dead_letters_of(p) if where.matches(d)]
        out.sort(key=lambda d: (d.partition, d.offset is None, d.offset or 0, d.field))
        return out if limit is None else out[:limit]

    def some_dead_letters(self, partitions: Iterable[int], per_partition: int) -> list[DeadLetter]:
        """At most ``per_partition`` dead letters of each partition (whichever HSCAN meets
        first), by (partition, offset): a bounded read for live views of large dead hashes."""
        out = [
            d for p in partitions for d in itertools.islice(self._dead_letters_of(p), per_partition)
        ]
        out.sort(key=lambda d: (d.partition, d.offset is None, d.offset or 0, d.field))
        return out

    def dead_letter(self, partition: int, offset: int) -> DeadLetter | None:
        codec.check_offset(offset)
        raw = cast(
            bytes | None, self._backend.client.hget(self._pkeys(partition).dead, str(offset))
        )
        return None if raw is None else parse_dead_letter(partition, str(offset).encode(), raw)

    def drop(self, letters: Iterable[DeadLetter]) -> int:
        """Delete these dead letters; returns how many were still there."""
        pipe = self._backend.client.pipeline(transaction=False)
        count = 0
        for d in letters:
            pipe.hdel(self._pkeys(d.partition).dead, d.field)
            count += 1
        return sum(int(n) for n in pipe.execute()) if count else 0

    def replay(self, partition: int, offset: int, wait: float = 30.0) -> ReplayOutcome:
        """Queue a dead letter again at the tail of its sub key's queue (so it runs after the
        items of that sub key queued now, never beside them), then wait up to ``wait`` seconds
        for the outcome. A running worker runs it; ``wait=0`` returns at once (pending)."""
        letter = self.dead_letter(partition, offset)
        if letter is None:
            raise InvalidInput(f"partition {partition} has no dead letter at offset {offset}")
        if letter.sub_encoded is None:
            raise InvalidInput(
                f"dead letter {partition}/{offset} was recorded without its sub key (by an older "
                "version), so it cannot be replayed in order"
            )
        sub = letter.sub_encoded
        pkeys = self._pkeys(partition)
        entry = run_one(
            self._backend, lambda b: scripts.replay_dead_letter(b, pkeys, letter.field, sub)
        )
        if entry is None:
            raise InvalidInput(f"dead letter {partition}/{offset} was replayed or dropped already")
        self._backend.client.zadd(self._keys.wake_of(partition), {str(partition): 0}, nx=True)
        deadline = time.monotonic() + wait
        while True:
            outcome = self._replay_outcome(partition, offset, sub, entry)
            if outcome is not None or time.monotonic() >= deadline:
                return outcome or ReplayOutcome(partition, offset, REPLAY_PENDING, None)
            time.sleep(REPLAY_POLL_INTERVAL)

    def _replay_outcome(
        self, partition: int, offset: int, sub: bytes, entry: bytes
    ) -> ReplayOutcome | None:
        pkeys = self._pkeys(partition)
        # One transaction: the item leaves its queue and (on failure) enters `dead` atomically.
        pipe = self._backend.client.pipeline(transaction=True)
        pipe.lpos(pkeys.queue(sub), cast(str, entry))  # redis-py types it str; bytes work
        pipe.hget(pkeys.dead, str(offset))
        pipe.hget(pkeys.blocked, sub)
        position, dead, blocked = pipe.execute()
        if blocked is not None and blocked.split(b"\n", 3)[-1] == entry:
            return ReplayOutcome(partition, offset, REPLAY_BLOCKED, None)
        if position is not None:
            return None
        if dead is not None:
            letter = parse_dead_letter(partition, str(offset).encode(), dead)
            return ReplayOutcome(partition, offset, REPLAY_FAILED, letter)
        return ReplayOutcome(partition, offset, REPLAY_SUCCEEDED, None)

    def purge(self, partition: int | None = None) -> int:
        """Delete every key of the namespace (or of one partition); returns keys removed.
        Stop the namespace's workers and producers first: their state is removed under them."""
        parts = self.partitions() if partition is None else [codec.check_partition(partition)]
        client = self._backend.client
        removed = 0
        for p in parts:
            pkeys = self._pkeys(p)
            keys = [*pkeys.fixed]
            subs = cast(list[bytes], client.zrange(pkeys.heads, 0, -1))
            subs += cast(list[bytes], client.hkeys(pkeys.blocked))
            keys += [pkeys.queue(sub) for sub in subs]
            for i in range(0, len(keys), 500):
                removed += int(client.unlink(*keys[i : i + 500]))
            client.srem(self._keys.partitions, str(p))
        # Claim records expire by themselves; the workers that left them may be gone, so only a
        # SCAN finds them all (one pass; purge is rare).
        claims = list(
            client.scan_iter(match=self._keys.claim_records_pattern(partition), count=1000)
        )
        for i in range(0, len(claims), 500):
            removed += int(client.unlink(*claims[i : i + 500]))
        if partition is None:
            for key in self._keys.namespace_wide():
                removed += int(client.unlink(key))  # one by one: on a cluster, their own slots
        else:
            client.zrem(self._keys.wake_of(partition), str(partition))
        return removed


def namespaces(redis: Any = None, limit: int = 1000) -> list[str]:
    """Namespaces found in Redis, by their partition index keys. This walks the keyspace with
    SCAN (no namespace registry exists): the dashboard calls it once at start and on demand."""
    backend = connect(redis)
    try:
        found: set[str] = set()
        pattern = NamespaceKeys("*").partitions
        for key in backend.client.scan_iter(match=pattern, count=1000, _type="set"):
            name = key.decode(errors="replace")
            found.add(name[name.index("{") + 1 : name.rindex("}")])
            if len(found) >= limit:
                break
        return sorted(found)
    finally:
        backend.close()
