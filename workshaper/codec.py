"""Validation and wire encoding of sub keys, messages and queue entries.

Everything that reaches Redis passes through here first, so a bad value is rejected with an
error naming it before anything is written.

Queue entry layout (one element of a sub key's list)::

    <offset in decimal> "|" <tag> <payload>
    tag "b": payload is bytes, returned as bytes
    tag "s": payload is UTF-8 text, returned as str
    tag "j": payload is JSON, returned decoded
    tag "k": a lane's entry: "k" <length> ":" <encoded sub key> <tagged payload>, where the
             sub key is the item's own (its list is its lane's, not its sub key's)

The offset prefix lets the Lua scripts check "is this item still at the head?" with one string
comparison, which is how a retried script recognises work it already did.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any, cast

from workshaper.errors import InvalidInput, InvalidType

#: Offsets are stored as sorted-set scores (IEEE doubles): above 2**53 they would lose precision.
MAX_OFFSET = 2**53 - 1
#: Partitions share the same limit for symmetry and key-name sanity.
MAX_PARTITION = 2**31 - 1
#: Default cap on one encoded message.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

SubKey = str | int | bytes | None
Message = Any

_NAMESPACE_FORBIDDEN = re.compile(r"[\s{}:]")
_TAG_BYTES = b"b"
_TAG_STR = b"s"
_TAG_JSON = b"j"
_TAG_KEYED = b"k"
_LANE = b"L"
#: Most lanes a namespace may have: a lane is a list and a lease, so more than this many
#: lanes per partition costs more in idle claims than it gives in spread.
MAX_LANES = 4096


class CorruptEntry(ValueError):
    """A queue entry read from Redis cannot be decoded (someone wrote garbage, or a bug)."""


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise InvalidType(f"namespace must be a str, got {type(namespace).__name__}")
    if not namespace:
        raise InvalidInput("namespace must not be empty")
    if _NAMESPACE_FORBIDDEN.search(namespace):
        raise InvalidInput(
            f"namespace {namespace!r} must not contain whitespace, '{{', '}}' or ':'"
        )
    if len(namespace) > 200:
        raise InvalidInput(f"namespace is {len(namespace)} characters long; the limit is 200")
    _utf8("namespace", namespace)
    return namespace


def _check_int(name: str, value: object, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidType(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0 or value > upper:
        shown = value if abs(value) < 10**100 else f"an int of {value.bit_length()} bits"
        raise InvalidInput(f"{name} must be an int from 0 to {upper}, got {shown}")
    return value


def check_partition(partition: object) -> int:
    return _check_int("partition", partition, MAX_PARTITION)


def check_offset(offset: object) -> int:
    return _check_int("offset", offset, MAX_OFFSET)


def check_sub_key(sub_key: object) -> SubKey:
    if sub_key is None or isinstance(sub_key, str | bytes):
        return sub_key
    if isinstance(sub_key, int) and not isinstance(sub_key, bool):
        return sub_key
    raise InvalidType(
        f"sub_key must be str, int, bytes or None, got {type(sub_key).__name__} {sub_key!r}"
    )


def _utf8(field: str, text: str) -> bytes:
    """``text`` as UTF-8; a str that has none (a lone surrogate) is refused, naming ``field``."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{field} is not valid UTF-8 text: {exc.reason} {text[exc.start : exc.end]!r}"
            f" at index {exc.start}"
        ) from None


def check_text(field: str, text: str) -> None:
    """Refuse a str that is not valid UTF-8 text (a lone surrogate), naming ``field``."""
    _utf8(field, text)


def encode_sub_key(sub_key: SubKey, offset: int) -> bytes:
    """The sub key's name inside its partition: a type letter, then the value.

    ``None`` means "no order needed": each such item becomes a sub key of its own (named by its
    offset), so unordered items run in parallel.
    """
    if sub_key is None:
        return b"n%d" % offset
    if isinstance(sub_key, str):
        return b"s" + _utf8("sub_key", sub_key)
    if isinstance(sub_key, bytes):
        return b"b" + sub_key
    try:
        return b"i%d" % sub_key
    except ValueError:  # Python refuses to print ints of more than 4,300 digits
        raise InvalidInput(
            f"sub_key int has {sub_key.bit_length()} bits, more digits than Python prints"
        ) from None


@dataclass(frozen=True, slots=True)
class Lane:
    """A lane of a partition: the Redis-side sub key of a producer with ``lanes`` set. Each
    of its entries carries the item's own sub key; operators' views show the lane."""

    index: int

    def __str__(self) -> str:
        return f"lane {self.index}"


#: What a sub key's name in Redis decodes to: a sub key, or the lane of a producer with lanes.
StoredSubKey = SubKey | Lane


def check_lanes(lanes: object) -> int | None:
    """``lanes`` as given to a producer or manager: None (no lanes) or 1 .. MAX_LANES."""
    if lanes is None:
        return None
    if isinstance(lanes, bool) or not isinstance(lanes, int):
        raise InvalidType(f"lanes must be an int or None, got {type(lanes).__name__} {lanes!r}")
    if not 1 <= lanes <= MAX_LANES:
        raise InvalidInput(f"lanes must be from 1 to {MAX_LANES}, got {lanes}")
    return lanes


def lane_sub(index: int) -> bytes:
    """The Redis-side sub key of lane ``index``."""
    return b"L%d" % index


def lane_of(encoded_sub: bytes, lanes: int) -> int:
    """The lane of an encoded sub key: CRC-32 (C speed, stable across processes and
    versions, unlike ``hash``) modulo the lane count."""
    return zlib.crc32(encoded_sub) % lanes


def keyed_entry(offset: int, encoded_sub: bytes, payload: bytes) -> bytes:
    """A lane's queue entry: the item's offset, its own encoded sub key, its tagged payload."""
    return b"%d|k%d:%s%s" % (offset, len(encoded_sub), encoded_sub, payload)


def _split_lane_entry(raw: bytes) -> tuple[int | None, bytes | None, bytes]:
    """A lane's entry as (offset, encoded sub key, tagged payload); None for a part that is
    missing or malformed."""
    head, sep, rest = raw.partition(b"|")
    if not sep or not head.isdigit() or len(head) > 16:
        return None, None, b""
    if rest[:1] != _TAG_KEYED:
        return int(head), None, rest
    length, sep, body = rest[1:].partition(b":")
    if not sep or not length.isdigit() or int(length) > len(body):
        return int(head), None, rest
    return int(head), body[: int(length)], body[int(length) :]


#: The head of a well-formed lane entry, ``<offset>|k<length>:``: one match instead of the
#: partitions and checks of _split_lane_entry (about 30% less per entry, read for every item).
_LANE_ENTRY_HEAD = re.compile(rb"(\d{1,16})\|k(\d{1,10}):")


def read_lane_entry(raw: bytes) -> tuple[int | None, bytes | None, int]:
    """A lane's entry's offset, the encoded sub key it carries and where its tagged payload
    starts, in one pass (the worker reads every entry once, as its window gets it); None for
    an offset or sub key that is missing or malformed, and 0 as the start without a sub key."""
    head = _LANE_ENTRY_HEAD.match(raw)
    if head is not None:
        start = head.end()
        end = start + int(head[2])
        if end <= len(raw):
            return int(head[1]), raw[start:end], end
    offset, sub, payload = _split_lane_entry(raw)  # not the usual form: the checked split
    return offset, sub, (len(raw) - len(payload) if sub is not None else 0)


def decode_lane_payload(offset: int, sub: bytes, payload: bytes) -> tuple[int, SubKey, Message]:
    """An item of a lane from what ``read_lane_entry`` read of its entry: its offset, its own
    sub key (decoded) and its message (decoded from the tagged payload)."""
    sub_key = decode_sub_key(sub)
    if isinstance(sub_key, Lane):
        raise CorruptEntry(f"lane entry carries no valid sub key: {sub[:40]!r}")
    return offset, sub_key, decode_message(payload)


def entry_sub(raw: bytes) -> bytes | None:
    """The encoded sub key a lane's entry carries, or None."""
    return _split_lane_entry(raw)[1]


def decode_lane_item(raw: bytes) -> tuple[int, SubKey, Message]:
    """A lane's entry's offset, its item's own sub key and its message, in one pass."""
    offset, sub, payload_at = read_lane_entry(raw)
    if offset is None or sub is None:
        raise CorruptEntry(f"lane entry carries no valid sub key: {raw[:40]!r}")
    return decode_lane_payload(offset, sub, raw[payload_at:])


def item_sub_key(raw: bytes) -> SubKey:
    """The item's own sub key, from a lane's entry; CorruptEntry if the entry has none."""
    return decode_lane_item(raw)[1]


def _unkey(data: bytes) -> bytes:
    """The tagged payload inside a keyed payload (``k<len>:<sub><payload>``)."""
    length, sep, body = data[1:].partition(b":")
    if not sep or not length.isdigit() or int(length) > len(body):
        raise CorruptEntry(f"lane entry has no valid sub key prefix: {data[:40]!r}")
    return body[int(length) :]


def decode_sub_key(encoded: bytes) -> StoredSubKey:
    kind, body = encoded[:1], encoded[1:]
    if kind == b"s":
        return body.decode("utf-8")
    if kind == b"b":
        return body
    if kind == b"i":
        return int(body)
    if kind == b"n":
        return None
    if kind == _LANE and body.isdigit():
        return Lane(int(body))
    raise CorruptEntry(f"unknown sub key encoding {encoded[:40]!r}")


def encode_message(message: Message, max_bytes: int) -> bytes:
    """Tag and serialize a message. Never pickle: only bytes, str and JSON values travel."""
    if isinstance(message, bytes | bytearray | memoryview):
        data = _TAG_BYTES + bytes(message)
    elif isinstance(message, str):
        data = _TAG_STR + _utf8("message", message)
    else:
        try:
            text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except TypeError as exc:
            raise InvalidType(
                f"message must be bytes, str or JSON-serializable, got {type(message).__name__}"
                f" ({exc})"
            ) from None
        except ValueError as exc:
            raise InvalidInput(f"message is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("message is nested too deeply to encode as JSON") from None
        data = _TAG_JSON + _utf8("message", text)
    if len(data) - 1 > max_bytes:
        raise InvalidInput(
            f"message is {len(data) - 1} bytes encoded; max_message_bytes is {max_bytes}"
        )
    return data


def decode_message(data: bytes) -> Message:
    if data[:1] == _TAG_KEYED:
        data = _unkey(data)
    tag, body = data[:1], data[1:]
    try:
        if tag == _TAG_BYTES:
            return body
        if tag == _TAG_STR:
            return body.decode("utf-8")
        if tag == _TAG_JSON:
            return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptEntry(f"message payload does not decode: {exc}") from None
    raise CorruptEntry(f"unknown message tag {tag!r}")


def encode_item(
    sub_key: object,
    message: Message,
    partition: object,
    offset: object,
    max_bytes: int,
    *,
    lanes: int | None = None,
) -> tuple[int, bytes, int, bytes]:
    """Validate and encode one item: (partition, encoded sub key, offset, queue entry).

    The common case (int partition and offset in range, a str/int/bytes sub key) is checked
    inline; anything else goes through the check functions, which raise the precise error.
    With ``lanes`` (checked by ``check_lanes`` beforehand) the item goes to its lane: the sub
    key returned is the lane's (``lane_sub(lane_of(sub, lanes))``) and the entry a keyed one
    (``keyed_entry``) that carries the item's own encoded sub key.
    """
    if type(partition) is not int or not 0 <= partition <= MAX_PARTITION:
        check_partition(partition)
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        check_offset(offset)
    p, o = cast(int, partition), cast(int, offset)
    if type(sub_key) is str:
        try:
            sub = b"s" + sub_key.encode("utf-8")
        except UnicodeEncodeError:
            sub = encode_sub_key(sub_key, o)  # raises the error naming the field
    else:
        sub = encode_sub_key(check_sub_key(sub_key), o)
    if type(message) is bytes and len(message) <= max_bytes:
        payload = _TAG_BYTES + message
    elif type(message) is str and len(message) * 4 <= max_bytes:  # UTF-8: <= 4 bytes a char
        try:
            payload = _TAG_STR + message.encode("utf-8")
        except UnicodeEncodeError:
            payload = encode_message(message, max_bytes)  # raises the error naming the field
    else:
        payload = encode_message(message, max_bytes)
    if lanes is None:
        return p, sub, o, b"%d|%s" % (o, payload)
    # lane_sub(lane_of(...)) and keyed_entry(...) written out: this runs once per item
    return p, b"L%d" % (zlib.crc32(sub) % lanes), o, b"%d|k%d:%s%s" % (o, len(sub), sub, payload)


def make_entry(offset: int, encoded_message: bytes) -> bytes:
    return b"%d|%s" % (offset, encoded_message)


def entry_prefix(offset: int) -> bytes:
    """What a queue entry for ``offset`` starts with (the scripts' head check)."""
    return b"%d|" % offset


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    payload: bytes  # the tagged message, decoded lazily by the worker

    def message(self) -> Message:
        return decode_message(self.payload)


def parse_entry(raw: bytes) -> Entry:
    """Split a queue entry into offset and tagged payload; raise CorruptEntry if malformed."""
    head, sep, payload = raw.partition(b"|")
    if not sep or not head.isdigit() or len(head) > 16:
        raise CorruptEntry(f"queue entry has no valid offset prefix: {raw[:40]!r}")
    return Entry(int(head), payload)


def head_prefix(raw: bytes) -> bytes:
    """The bytes a script compares to recognise ``raw`` at the head of its list: the offset
    prefix when ``parse_entry`` reads one, else the whole (corrupt, maybe empty) entry, which
    fail_item compares exactly."""
    head, sep, _ = raw.partition(b"|")
    if sep and head.isdigit() and len(head) <= 16:
        return head + sep
    return raw
