"""The spike's keys, scripts and producer (see the package's doc for what is left out)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

SCRIPTS = ("enqueue", "claim", "cycle")
_HERE = Path(__file__).resolve().parent


def load_scripts(client: redis.Redis) -> dict[str, str]:
    """SCRIPT LOAD each script; name -> SHA1."""
    return {name: str(client.script_load((_HERE / f"{name}.lua").read_text())) for name in SCRIPTS}


def lane_of(sub: bytes, lanes: int) -> int:
    """The lane of a sub key: every item of a sub key lands in the same lane, so its order is
    the lane's order."""
    return zlib.crc32(sub) % lanes


@dataclass(frozen=True)
class LaneKeys:
    """Key names of one partition's lanes; all share the partition's hash tag."""

    namespace: str
    partition: int

    @property
    def tag(self) -> str:
        return f"lp:{{{self.namespace}:{self.partition}}}"

    @property
    def accepted(self) -> str:
        return f"{self.tag}:accepted"

    @property
    def meta(self) -> str:
        return f"{self.tag}:meta"

    def lane(self, i: int) -> str:
        return f"{self.tag}:lane:{i}"

    def lease(self, i: int) -> str:
        return f"{self.tag}:lease:{i}"

    def finished(self, i: int) -> str:
        return f"{self.tag}:done:{i}"


def encode_entry(offset: int, sub: bytes, payload: bytes) -> bytes:
    return b"%d|%b|%b" % (offset, sub, payload)


def decode_entry(entry: bytes) -> tuple[int, bytes, bytes]:
    offset, sub, payload = entry.split(b"|", 2)
    return int(offset), sub, payload


class LaneProducer:
    """``enqueue_many`` of the spike: one script call per partition, one round trip per call."""

    def __init__(self, url: str, namespace: str, lanes: int) -> None:
        self.client = redis.Redis.from_url(url)
        self.shas = load_scripts(self.client)
        self.namespace = namespace
        self.lanes = lanes

    def enqueue_many(self, items: Sequence[tuple[Any, Any, int, int]]) -> None:
        """(sub key, message, partition, offset) tuples, offsets increasing per partition."""
        by_partition: dict[int, list[tuple[bytes, bytes, int]]] = {}
        for sub, message, partition, offset in items:
            # No sub key, no order: each such item is a key of its own.
            key = b"\x00%d" % offset if sub is None else str(sub).encode()
            payload = message if isinstance(message, bytes) else str(message).encode()
            by_partition.setdefault(partition, []).append((key, payload, offset))
        pipe = self.client.pipeline(transaction=False)
        for partition, rows in by_partition.items():
            keys = LaneKeys(self.namespace, partition)
            by_lane: dict[int, list[bytes]] = {}
            for sub, message, offset in rows:
                entry = encode_entry(offset, sub, message)
                by_lane.setdefault(lane_of(sub, self.lanes), []).append(entry)
            args: list[Any] = [len(rows), len(by_lane), *(offset for _, _, offset in rows)]
            for entries in by_lane.values():
                args += (len(entries), *entries)
            script_keys = [keys.accepted, keys.meta, *(keys.lane(i) for i in by_lane)]
            pipe.evalsha(self.shas["enqueue"], len(script_keys), *script_keys, *args)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
