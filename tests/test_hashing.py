"""sub_key_for: MurmurHash3 x86 32-bit, seed 0, unsigned, modulo max_sub_keys."""

from __future__ import annotations

import pytest

from workshaper import InvalidInput, InvalidType, sub_key_for
from workshaper.hashing import murmur3_32

# Published MurmurHash3_x86_32 vectors (SMHasher / Wikipedia test values).
VECTORS = [
    (b"", 0, 0x00000000),
    (b"", 1, 0x514E28B7),
    (b"", 0xFFFFFFFF, 0x81F16F39),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
    (b"aaaa", 0x9747B28C, 0x5A97808A),
    (b"abc", 0, 0xB3DD93FA),
    (b"Hello, world!", 1234, 0xFAF6CDB3),
    (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    (b"hello", 0, 0x248BFA47),
]


@pytest.mark.parametrize(("data", "seed", "expected"), VECTORS)
def test_murmur3_matches_published_vectors(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


def test_sub_key_for_is_unsigned_hash_modulo() -> None:
    # 0x248BFA47 = 613153351 -> mod 100 = 51; the value is unsigned (never negative).
    assert sub_key_for("hello", 100) == 0x248BFA47 % 100 == 51
    assert sub_key_for(b"hello", 100) == 51
    assert sub_key_for("\u00e9", 7) == murmur3_32("\u00e9".encode()) % 7  # UTF-8 encoded


def test_sub_key_for_int_hashes_its_decimal_string() -> None:
    assert sub_key_for(12345, 97) == sub_key_for("12345", 97)


def test_sub_key_for_spreads_keys_over_every_bucket() -> None:
    buckets = {sub_key_for(f"customer-{i}", 16) for i in range(1000)}
    assert buckets == set(range(16))


@pytest.mark.parametrize("bad", [0, -1])
def test_sub_key_for_rejects_bucket_count_below_one(bad: int) -> None:
    with pytest.raises(InvalidInput, match="max_sub_keys"):
        sub_key_for("x", bad)


@pytest.mark.parametrize("bad", [1.5, None, True])
def test_sub_key_for_rejects_non_int_bucket_count(bad: object) -> None:
    with pytest.raises(InvalidType, match="max_sub_keys"):
        sub_key_for("x", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.5, None, True, ["a"]])
def test_sub_key_for_rejects_unhashable_values(bad: object) -> None:
    with pytest.raises(InvalidType, match="value"):
        sub_key_for(bad, 10)  # type: ignore[arg-type]
