"""Operator view and actions: partition status, dead letters, blocked sub keys."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, cast

from workshaper import codec, scripts
from workshaper.batch import run_one
from workshaper.connection import Backend, connect
from workshaper.errors import InvalidInput
from workshaper.keys import namespace_keys


@dataclass(frozen=True)
class FailureRecord:
    """A dead letter, or the reason a sub key is blocked."""

    partition: int
    offset: int | None
    sub_key: codec.StoredSubKey
    error_type: str
    error_message: str
    traceback: str
    worker: str
    attempts: int
    at_ms: int  # server time
    message: codec.Message | None  # None when the entry itself is corrupt
    raw_entry: bytes


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def parse_failure_record(
    partition: int, raw: bytes, sub_key: codec.StoredSubKey = None
) -> FailureRecord:
    error_json, attempts, at_ms, entry = raw.split(b"\n", 3)
    error: dict[str, Any] = json.loads(error_json)
    offset: int | None = None
    message: codec.Message | None = None
    try:
        parsed = codec.parse_entry(entry)
        offset = parsed.offset
        message = parsed.message()
    except codec.CorruptEntry:
        pass  # kept as raw_entry; offset is known when only the payload is corrupt
    return FailureRecord(
        partition,
        offset,
        sub_key,
        str(error.get("type", "")),
        str(error.get("message", "")),
        str(error.get("traceback", "")),
        str(error.get("worker", "")),
        int(attempts),
        int(at_ms),
        message,
        entry,
    )


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    acked: int | None
    pending: int  # accepted, not finished
    finished_unacked: int  # finished, waiting for the watermark to pass them
    ready_sub_keys: int
    leased_sub_keys: int
    blocked_sub_keys: int
    dead_letters: int

    @property
    def unacked(self) -> int:
        """What backpressure counts: accepted and not acked."""
        return self.pending + self.finished_unacked


class Admin:
    def __init__(self, redis: Any = None, namespace: str = "default") -> None:
        codec.check_namespace(namespace)
        self._backend: Backend = connect(redis)
        self._keys = namespace_keys(namespace, self._backend.cluster)

    def partitions(self) -> list[int]:
        return sorted(int(p) for p in self._backend.client.smembers(self._keys.partitions))

    def status(self) -> list[PartitionStatus]:
        """Counts per partition (two round trips; reads every non-empty sub key's length):
        an operator tool, not for hot paths."""
        client = self._backend.client
        parts = self.partitions()
        pipe = client.pipeline(transaction=False)
        for p in parts:
            k = self._keys.partition(p)
            pipe.hget(k.meta, "acked")
            pipe.llen(k.accepted)
            pipe.zrange(k.heads, 0, -1)
            pipe.llen(k.ready)
            pipe.zcard(k.leases)
            pipe.hlen(k.blocked)
            pipe.hlen(k.dead)
        raw = _chunks(pipe.execute(), 7)
        pipe = client.pipeline(transaction=False)
        for p, fields in zip(parts, raw, strict=True):
            for sub in fields[2]:
                pipe.llen(self._keys.partition(p).queue(sub))
        lengths = iter(pipe.execute())
        out = []
        for p, (acked, unacked, heads, ready, leased, blocked, dead) in zip(
            parts, raw, strict=True
        ):
            unfinished = sum(next(lengths) for _ in heads)
            out.append(
                PartitionStatus(
                    p,
                    None if acked is None else int(acked),
                    unfinished,
                    unacked - unfinished,
                    ready,
                    leased,
                    blocked,
                    dead,
                )
            )
        return out

    def dead_letters(self, partition: int) -> list[FailureRecord]:
        raw = cast(
            dict[bytes, bytes], self._backend.client.hgetall(self._keys.partition(partition).dead)
        )
        records = [parse_failure_record(partition, v) for v in raw.values()]
        return sorted(records, key=lambda r: (r.offset is None, r.offset or 0))

    def purge_dead_letters(self, partition: int) -> int:
        """Delete the dead letters of a partition; returns how many there were."""
        key = self._keys.partition(partition).dead
        count = int(self._backend.client.hlen(key))
        self._backend.client.delete(key)
        return count

    def blocked(self, partition: int) -> list[FailureRecord]:
        raw = cast(
            dict[bytes, bytes],
            self._backend.client.hgetall(self._keys.partition(partition).blocked),
        )
        return [parse_failure_record(partition, v, codec.decode_sub_key(k)) for k, v in raw.items()]

    def _unblock(self, partition: int, sub_key: codec.StoredSubKey, action: str) -> bool:
        codec.check_partition(partition)
        if isinstance(sub_key, codec.Lane):  # a producer with lanes blocks a whole lane
            codec.check_lanes(sub_key.index + 1)
            sub = codec.lane_sub(sub_key.index)
        else:
            sub = codec.encode_sub_key(codec.check_sub_key(sub_key), 0)
        if sub_key is None:
            raise InvalidInput("sub_key None items are never blocked as a group")
        note = json.dumps(
            {
                "type": "OperatorDeadLetter",
                "message": "dead-lettered by an operator",
                "traceback": "",
                "worker": "admin",
            }
        )
        pkeys = self._keys.partition(partition)
        request_id = secrets.token_hex(8)  # a re-sent call must answer as the first one
        result = run_one(
            self._backend,
            lambda b: scripts.unblock_sub_key(b, pkeys, sub, action, note, request_id=request_id),
        )
        if result:
            self._backend.client.zadd(self._keys.wake_of(partition), {str(partition): 0}, nx=True)
        return result

    def retry_blocked(self, partition: int, sub_key: codec.StoredSubKey) -> bool:
        """Run the blocked head item again with fresh attempts. False if it was not blocked."""
        return self._unblock(partition, sub_key, "retry")

    def dead_letter_blocked(self, partition: int, sub_key: codec.StoredSubKey) -> bool:
        """Give the blocked head item up (dead-letter it) and go on with the sub key."""
        return self._unblock(partition, sub_key, "dead_letter")

    def workers(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[bytes, bytes], self._backend.client.hgetall(self._keys.workers))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def close(self) -> None:
        self._backend.close()
