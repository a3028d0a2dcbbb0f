"""Dead letters as operators see them: the record (with the sub key it came from, so it can be
replayed in order), filters, and the outcome of a replay. ``Inspector`` reads and acts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workshaper import codec
from workshaper.errors import InvalidInput


def sub_key_text(sub_key: codec.StoredSubKey) -> str:
    """A sub key as an operator types it: str as is, int as digits, bytes as hex."""
    if isinstance(sub_key, bytes):
        return sub_key.hex()
    return "" if sub_key is None else str(sub_key)


def sub_key_kind(sub_key: codec.StoredSubKey) -> str:
    if sub_key is None:
        return "none"
    if isinstance(sub_key, codec.Lane):
        return "lane"
    return {str: "str", int: "int", bytes: "bytes"}[type(sub_key)]


def parse_sub_key(text: str, kind: str = "str") -> codec.SubKey:
    """The inverse of ``sub_key_text``: ``kind`` is str, int or bytes (hex)."""
    try:
        if kind == "int":
            return int(text)
        if kind == "bytes":
            return bytes.fromhex(text)
    except ValueError:
        raise InvalidInput(
            f"sub key {text!r} is not {'an int' if kind == 'int' else 'hex'}"
        ) from None
    if kind != "str":
        raise InvalidInput(f"sub key kind must be str, int or bytes, got {kind!r}")
    return text


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    field: bytes  # its key in the dead hash (the offset, or "corrupt:<ms>")
    offset: int | None
    sub_key: codec.StoredSubKey
    sub_encoded: bytes | None  # None: recorded before sub keys were kept (cannot be replayed)
    error_type: str
    error_message: str
    traceback: str
    worker: str
    attempts: int
    at_ms: int
    entry: bytes  # the queue entry (offset prefix and tagged payload)

    def message(self) -> codec.Message:
        return codec.parse_entry(self.entry).message()

    def to_json(self, with_message: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "sub_key": sub_key_text(self.sub_key),
            "sub_key_kind": sub_key_kind(self.sub_key),
            "error_type": self.error_type,
            "error_message": self.error_message,
            "worker": self.worker,
            "attempts": self.attempts,
            "at_ms": self.at_ms,
        }
        if with_message:
            out["traceback"] = self.traceback
            try:
                message = self.message()
                out["message"] = (
                    {"hex": message.hex()} if isinstance(message, bytes) else {"value": message}
                )
            except codec.CorruptEntry as exc:
                out["message"] = {"corrupt": str(exc)}
        return out


def parse_dead_letter(partition: int, field_name: bytes, raw: bytes) -> DeadLetter:
    error_json, attempts, at_ms, entry = raw.split(b"\n", 3)
    error: dict[str, Any] = json.loads(error_json)
    sub_hex = error.get("sub_hex")
    sub_encoded = bytes.fromhex(sub_hex) if isinstance(sub_hex, str) else None
    sub_key: codec.StoredSubKey = None
    if sub_encoded is not None:
        try:
            sub_key = codec.decode_sub_key(sub_encoded)
        except (codec.CorruptEntry, ValueError):
            sub_key = None
    offset: int | None
    try:
        offset = codec.parse_entry(entry).offset
    except codec.CorruptEntry:
        offset = None
    return DeadLetter(
        partition=partition,
        field=field_name,
        offset=offset,
        sub_key=sub_key,
        sub_encoded=sub_encoded,
        error_type=str(error.get("type", "")),
        error_message=str(error.get("message", "")),
        traceback=str(error.get("traceback", "")),
        worker=str(error.get("worker", "")),
        attempts=int(attempts),
        at_ms=int(at_ms),
        entry=entry,
    )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means; every given field must match."""

    partition: int | None = None
    sub_key: codec.StoredSubKey = None
    any_sub_key: bool = True  # False: only those of ``sub_key`` (which may be None)
    error_type: str | None = None
    min_offset: int | None = None
    max_offset: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.partition is not None and letter.partition != self.partition:
            return False
        if not self.any_sub_key and (letter.sub_encoded is None or letter.sub_key != self.sub_key):
            return False
        if self.error_type is not None and letter.error_type != self.error_type:
            return False
        if self.min_offset is not None and (
            letter.offset is None or letter.offset < self.min_offset
        ):
            return False
        return not (
            self.max_offset is not None
            and (letter.offset is None or letter.offset > self.max_offset)
        )


#: Outcomes of a replay.
REPLAY_SUCCEEDED = "succeeded"
REPLAY_FAILED = "failed"  # dead-lettered again
REPLAY_BLOCKED = "blocked"  # attempts used up again under on_exhausted="block"
REPLAY_PENDING = "pending"  # not finished within the wait


@dataclass(frozen=True)
class ReplayOutcome:
    partition: int
    offset: int
    outcome: str
    dead_letter: DeadLetter | None  # the new record when it failed again

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "partition": self.partition,
            "offset": self.offset,
            "outcome": self.outcome,
        }
        if self.dead_letter is not None:
            out["error_type"] = self.dead_letter.error_type
            out["error_message"] = self.dead_letter.error_message
            out["attempts"] = self.dead_letter.attempts
        return out
