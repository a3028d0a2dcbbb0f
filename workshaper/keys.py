"""Every Redis key name WorkShaper uses is built here, and only here.

All keys of one (namespace, partition) share the hash tag ``{namespace:partition}``, so one Lua
script is atomic over a partition and the layout works unchanged on Redis Cluster. State that
spans partitions (wake-ups, the partition index, the worker registry) has its own tag
``{namespace}``.

Per partition ``ws:{ns:p}:``
    meta      HASH   acked (acked watermark), offer (watermark being acked), max (highest accepted
                     offset), token (fencing-token counter), request (the last enqueue call's id
                     and answer, so a re-sent call is answered as the first time)
    accepted  LIST   accepted offsets not acked yet, ascending (finished or not): its length is
                     the backpressure count, acking trims its head
    heads     ZSET   each sub key with items -> offset of its head item (its oldest unfinished
                     one); the lowest score is the partition's lowest unfinished offset
    late      ZSET   unfinished offsets that were accepted out of order (below a higher accepted
                     one): rare, and counted in the lowest unfinished offset too
    ready     LIST   sub keys with items and no lease, in FIFO order
    leases    ZSET   leased sub key -> lease deadline (server ms)
    owners    HASH   leased sub key -> "token|worker|batch|max_attempts"
    attempts  HASH   sub key -> "offset|n": n attempts of the head item ended without success
    exact     HASH   sub key -> items left to run one at a time after an unattributed crash
    blocked   HASH   sub key -> JSON reason, for sub keys held by on_exhausted="block"
    dead      HASH   offset -> JSON dead letter (error, traceback, attempts, worker, time)
    clock     ZSET   server ms -> highest offset accepted by then (one sample per enqueue
                     call): when an unfinished offset was accepted, for operators' ages
    q:<sub>   LIST   the sub key's queue entries, oldest first (see codec)
    claim:<worker>  STRING  the worker's last claim request and its answer (retry dedupe)
    unblock:<request>  STRING  an applied operator unblock, for a minute (retry dedupe)
Per namespace ``ws:{ns}:``
    wake        ZSET  partitions that may have ready sub keys (workers block on it). On a Redis
                      Cluster the bell is sharded instead: partition p rings
                      ``ws:{ns:wake<p % CLUSTER_WAKE_SHARDS>}:wake``, each shard its own slot
    partitions  SET   every partition that ever had items (the reaper's list)
    workers     HASH  worker id -> JSON (host, pid, concurrency, leases, reaper, ``seen``: the last
                      heartbeat in server time); entries older than registry.STALE_SECONDS are
                      pruned by the elected reaper
    reaper      STRING "term|worker id" of the one worker that reaps the namespace, with a TTL
                      its holder renews (reaper_lock.lua)
    reaper_term STRING counter of reaper terms (fencing: a term is never reused)
    lanes       STRING the namespace's lane count, recorded by its first producer ("0": no
                      lanes); every later producer must have the same (LaneCountMismatch)
    kafka       HASH  group: the Kafka consumer group whose bridges feed the namespace (one
                      namespace per group: its dedupe state is that group's)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

PREFIX = "ws"

#: Shards of the wake-up bell on a Redis Cluster. The bell is the one namespace-wide key on the
#: hot path (a ZADD per producer batch, a BZPOPMIN per wake-up); sharded by partition, it
#: spreads over this many slots, so over up to this many masters. Every worker blocks on every
#: shard (one waker thread each). A single server keeps one bell. The other namespace keys
#: (partition index, worker registry, reaper lock) stay on ``{ns}``: their traffic grows with
#: workers + partitions per second, not with items (docs/scaling.md).
CLUSTER_WAKE_SHARDS = 8

#: Order of the fixed per-partition keys every script receives as KEYS[1..12].
PARTITION_KEY_NAMES = (
    "meta",
    "accepted",
    "heads",
    "late",
    "ready",
    "leases",
    "owners",
    "attempts",
    "exact",
    "blocked",
    "dead",
    "clock",
)


@dataclass(frozen=True)
class PartitionKeys:
    namespace: str
    partition: int
    base: bytes = field(init=False)
    fixed: tuple[bytes, ...] = field(init=False)

    def __post_init__(self) -> None:
        base = f"{PREFIX}:{{{self.namespace}:{self.partition}}}:".encode()
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "fixed", tuple(base + n.encode() for n in PARTITION_KEY_NAMES))

    @property
    def meta(self) -> bytes:
        return self.fixed[0]

    @property
    def accepted(self) -> bytes:
        return self.fixed[1]

    @property
    def heads(self) -> bytes:
        return self.fixed[2]

    @property
    def late(self) -> bytes:
        return self.fixed[3]

    @property
    def ready(self) -> bytes:
        return self.fixed[4]

    @property
    def leases(self) -> bytes:
        return self.fixed[5]

    @property
    def owners(self) -> bytes:
        return self.fixed[6]

    @property
    def attempts(self) -> bytes:
        return self.fixed[7]

    @property
    def exact(self) -> bytes:
        return self.fixed[8]

    @property
    def blocked(self) -> bytes:
        return self.fixed[9]

    @property
    def dead(self) -> bytes:
        return self.fixed[10]

    @property
    def clock(self) -> bytes:
        return self.fixed[11]

    def queue(self, sub_key: bytes) -> bytes:
        """The list holding one sub key's entries (``sub_key`` as encoded by codec)."""
        return self.queue_prefix + sub_key

    @property
    def queue_prefix(self) -> bytes:
        """``queue(sub) == queue_prefix + sub``: given to claim_sub_keys.lua, which reads the
        lists of the sub keys it leases (not known before the claim)."""
        return self.base + b"q:"

    def claim_record(self, worker_id: str) -> bytes:
        return self.base + b"claim:" + worker_id.encode()

    def unblock_record(self, request_id: str) -> bytes:
        return self.base + b"unblock:" + request_id.encode()

    def all_static(self) -> list[bytes]:
        return list(self.fixed)


@dataclass(frozen=True)
class NamespaceKeys:
    namespace: str
    #: 1 on a single server, CLUSTER_WAKE_SHARDS on a cluster (``for_backend``).
    wake_shards: int = 1

    def _key(self, name: str) -> bytes:
        return f"{PREFIX}:{{{self.namespace}}}:{name}".encode()

    @property
    def wake(self) -> bytes:
        """The bell of a single server (shard 0 is this key there)."""
        return self._key("wake")

    def wake_of(self, partition: int) -> bytes:
        """The bell that ``partition`` rings."""
        if self.wake_shards == 1:
            return self.wake
        return self._wake_shard(partition % self.wake_shards)

    def _wake_shard(self, shard: int) -> bytes:
        return f"{PREFIX}:{{{self.namespace}:wake{shard}}}:wake".encode()

    def wake_keys(self) -> list[bytes]:
        """Every bell of the namespace (what workers block on)."""
        if self.wake_shards == 1:
            return [self.wake]
        return [self._wake_shard(i) for i in range(self.wake_shards)]

    def by_wake_key(self, partitions: list[int]) -> dict[bytes, list[int]]:
        """``partitions`` grouped by the bell each rings, in their order."""
        out: dict[bytes, list[int]] = {}
        for p in partitions:
            out.setdefault(self.wake_of(p), []).append(p)
        return out

    @property
    def partitions(self) -> bytes:
        return self._key("partitions")

    @property
    def workers(self) -> bytes:
        return self._key("workers")

    @property
    def reaper(self) -> bytes:
        return self._key("reaper")

    @property
    def reaper_term(self) -> bytes:
        return self._key("reaper_term")

    @property
    def lanes(self) -> bytes:
        return self._key("lanes")

    @property
    def kafka(self) -> bytes:
        return self._key("kafka")

    def namespace_wide(self) -> list[bytes]:
        """Every key of the namespace that belongs to no partition (what a purge of the whole
        namespace deletes besides the partitions' keys and the claim records)."""
        return [
            *self.wake_keys(),
            self.partitions,
            self.workers,
            self.reaper,
            self.reaper_term,
            self.lanes,
            self.kafka,
        ]

    def partition(self, partition: int) -> PartitionKeys:
        return _partition_keys(self.namespace, partition)

    def claim_records_pattern(self, partition: int | None = None) -> bytes:
        """SCAN pattern of the claim records of one partition, or of all (``purge`` only)."""
        tag = "*" if partition is None else str(partition)
        return f"{PREFIX}:{{{self.namespace}:{tag}}}:claim:*".encode()


def namespace_keys(namespace: str, cluster: bool) -> NamespaceKeys:
    """The keys of ``namespace`` on a cluster (sharded bell) or a single server."""
    return NamespaceKeys(namespace, CLUSTER_WAKE_SHARDS if cluster else 1)


@cache
def _partition_keys(namespace: str, partition: int) -> PartitionKeys:
    """Key names are built once per (namespace, partition): the hot paths ask for them a lot."""
    return PartitionKeys(namespace, partition)


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis glob pattern (ACL key patterns, SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def namespace_key_patterns(namespace: str) -> tuple[str, str]:
    """Glob patterns (as Redis ACLs take them) matching every key of ``namespace`` and no key
    of another namespace: its ``{namespace}`` keys and its ``{namespace:partition}`` keys.
    Namespaces contain no ':' or '}' (codec.check_namespace), so ``ws:{a:*`` cannot match a
    key of a namespace "a:b" or "ab"."""
    ns = _glob_escape(namespace)
    return (f"{PREFIX}:{{{ns}}}:*", f"{PREFIX}:{{{ns}:*")
