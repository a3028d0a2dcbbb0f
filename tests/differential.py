"""What the differential tests share (tests/test_embedded_differential.py: the embedded
server's scripts; tests/test_engine_differential.py: PartitionEngine; both against the Lua scripts
on a private redis-server): reading a namespace's keys, masking what depends on the server's
clock, the items of an enqueue call.

What depends on the server's clock is masked before comparing: lease deadlines (the scores of
the leases set), the clock samples' times and the time stamped into failure records. The JSON
of a failure record is compared decoded (cjson writes object keys in Lua's table order).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from workshaper import codec, scripts
from workshaper.keys import PartitionKeys
from workshaper.scripts import EncodedItem


def dump(client: redis.Redis, pkeys: PartitionKeys, pattern: str) -> dict[bytes, Any]:
    """Every key matching ``pattern``: its type and value, clock-dependent parts masked."""
    return masked(pkeys, read_keys(client, pattern))


def read_keys(client: redis.Redis, pattern: str) -> dict[bytes, tuple[bytes, Any]]:
    """Every key matching ``pattern``: its type and value as redis-py reads it (a set's
    members sorted, a sorted set's (member, score) pairs in ZRANGE order)."""
    state: dict[bytes, tuple[bytes, Any]] = {}
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind: Any = client.type(key)  # bytes: the client does not decode responses
        value: Any
        if kind == b"string":
            value = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        state[key] = (kind, value)
    return state


def masked(pkeys: PartitionKeys, state: dict[bytes, tuple[bytes, Any]]) -> dict[bytes, Any]:
    """``state`` (as read_keys reads it) with the clock-dependent parts of each value masked."""
    return {key: (kind, _mask(pkeys, key, kind, value)) for key, (kind, value) in state.items()}


def _mask(pkeys: PartitionKeys, key: bytes, kind: bytes, value: Any) -> Any:
    """What of a key's value (as redis-py reads it) is compared: its clock-dependent parts
    masked."""
    if kind == b"hash" and key in (pkeys.dead, pkeys.blocked):
        return _mask_failures(value)
    if kind == b"zset" and key == pkeys.leases:  # deadlines are server time + lease: members only
        return sorted(m for m, _ in value)
    if kind == b"zset" and key == pkeys.clock:  # server ms -> offset: the offsets only
        return sorted(score for _, score in value)
    return value


def _mask_failures(records: dict[bytes, bytes]) -> Any:
    """Failure records by field; corrupt entries (no offset) are filed under
    "corrupt:<server ms>:<n>": those are compared as a collection, without their field."""
    named = {f: _mask_failure(v) for f, v in records.items() if not f.startswith(b"corrupt:")}
    corrupt = sorted(
        repr(_mask_failure(v)) for f, v in records.items() if f.startswith(b"corrupt:")
    )
    return named, corrupt


def _mask_failure(record: bytes) -> Any:
    """A failure record is error JSON, attempts, server ms and the entry, one per line."""
    error_json, attempts, _now, entry = record.split(b"\n", 3)
    return (json.dumps(json.loads(error_json), sort_keys=True), attempts, entry)


def entry_offsets(entries: list[bytes]) -> list[int]:
    """The offsets of a lease's entries, up to the first corrupt one."""
    done: list[int] = []
    for entry in entries:
        try:
            done.append(codec.parse_entry(entry).offset)
        except codec.CorruptEntry:
            break
    return done


def outcome(reply: Any) -> str:
    """A coarse label of a reply, for coverage statistics."""
    if isinstance(reply, list) and reply and isinstance(reply[0], int):
        return "statuses " + ",".join(sorted({str(x) for x in reply}))
    if isinstance(reply, list) and reply and isinstance(reply[0], scripts.CompletionReply):
        return f"code {reply[0].code}"
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[1], list):
        return f"{min(len(reply[1]), 2)}+ leases"
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
        return f"code {reply[0]}"
    if isinstance(reply, scripts.Offer):
        return "advances" if reply.advances else "no advance"
    return type(reply).__name__ if not isinstance(reply, int | bool) else str(reply)


def encode_items(items: list[tuple[Any, int]]) -> list[EncodedItem]:
    """(sub key, offset) pairs as the producer sends them, message "m<offset>"."""
    return [
        EncodedItem(
            codec.encode_sub_key(sub, off),
            off,
            codec.make_entry(off, codec.encode_message(f"m{off}", 100)),
        )
        for sub, off in items
    ]
