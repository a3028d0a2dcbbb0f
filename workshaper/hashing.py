"""Mapping an attribute of a message to one of ``max_sub_keys`` ordering buckets."""

from __future__ import annotations

import mmh3

from workshaper.errors import InvalidInput, InvalidType


def sub_key_for(value: str | bytes | int, max_sub_keys: int) -> int:
    """Return the bucket (0 .. max_sub_keys - 1) for ``value``.

    MurmurHash3 x86 32-bit, seed 0, unsigned, of the UTF-8 bytes of a str (bytes as they are;
    an int is hashed as its decimal string), modulo ``max_sub_keys``: the same number the Ruby
    work-shaper's ``MurmurHash3::V32.str_hash(value) % max_sub_keys`` gives, so a fleet that
    mixes both keeps every key on one bucket.
    """
    if isinstance(max_sub_keys, bool) or not isinstance(max_sub_keys, int):
        raise InvalidType(f"max_sub_keys must be an int, got {type(max_sub_keys).__name__}")
    if max_sub_keys < 1:
        raise InvalidInput(f"max_sub_keys must be >= 1, got {max_sub_keys}")
    if isinstance(value, bool):
        raise InvalidType("sub_key_for value must be str, bytes or int, got bool")
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, int):
        data = str(value).encode("ascii")
    else:
        raise InvalidType(
            f"sub_key_for value must be str, bytes or int, got {type(value).__name__}"
        )
    return murmur3_32(data) % max_sub_keys


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit as an unsigned int."""
    return int(mmh3.hash(data, seed, signed=False))
