"""Validation and encoding of namespaces, partitions, offsets, sub keys and messages."""

from __future__ import annotations

from typing import Any

import pytest

from workshaper import InvalidInput, InvalidType, codec


@pytest.mark.parametrize("ns", ["orders", "a-b_c.d", "x" * 200])
def test_good_namespaces(ns: str) -> None:
    assert codec.check_namespace(ns) == ns


@pytest.mark.parametrize(
    ("ns", "error", "fragment"),
    [
        ("", InvalidInput, "empty"),
        ("a b", InvalidInput, "whitespace"),
        ("a\tb", InvalidInput, "whitespace"),
        ("a{b", InvalidInput, "'{'"),
        ("a}b", InvalidInput, "'}'"),
        ("a:b", InvalidInput, "':'"),
        ("x" * 201, InvalidInput, "201"),
        (None, InvalidType, "NoneType"),
        (b"ns", InvalidType, "bytes"),
    ],
)
def test_bad_namespaces(ns: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        codec.check_namespace(ns)


@pytest.mark.parametrize("check", [codec.check_partition, codec.check_offset])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, InvalidInput),
        (True, InvalidType),
        (False, InvalidType),
        (1.0, InvalidType),
        ("3", InvalidType),
        (None, InvalidType),
    ],
)
def test_partition_and_offset_must_be_non_negative_ints(
    check: object, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=repr(value) if error is InvalidType else "-1"):
        check(value)  # type: ignore[operator]


def test_offsets_are_capped_at_2_to_53() -> None:
    assert codec.check_offset(codec.MAX_OFFSET) == 2**53 - 1
    with pytest.raises(InvalidInput, match=str(2**53)):
        codec.check_offset(2**53)


@pytest.mark.parametrize("sub", ["a", "", b"\x00\xff", 0, -5, 10**30, None])
def test_sub_key_round_trip(sub: codec.SubKey) -> None:
    assert codec.decode_sub_key(codec.encode_sub_key(codec.check_sub_key(sub), 7)) == sub


def test_sub_keys_of_different_types_never_collide() -> None:
    subs: list[codec.SubKey] = ["1", b"1", 1, None]
    encodings = {codec.encode_sub_key(s, 1) for s in subs}
    assert len(encodings) == 4


def test_none_sub_keys_are_distinct_per_offset() -> None:
    assert codec.encode_sub_key(None, 1) != codec.encode_sub_key(None, 2)


@pytest.mark.parametrize("bad", [True, 1.5, ("a",), ["a"], {"a": 1}])
def test_bad_sub_keys(bad: object) -> None:
    with pytest.raises(InvalidType, match="sub_key"):
        codec.check_sub_key(bad)


@pytest.mark.parametrize(
    "message",
    [b"\x00\xffraw", "text \u00e9", "", b"", {"a": [1, 2.5, None, True]}, [1, "x"], 3, None, 1.5],
)
def test_message_round_trip_keeps_type(message: object) -> None:
    data = codec.encode_message(message, 1024)
    back = codec.decode_message(data)
    assert back == message and type(back) is type(message)


def test_bytearray_comes_back_as_bytes() -> None:
    assert codec.decode_message(codec.encode_message(bytearray(b"ab"), 10)) == b"ab"


@pytest.mark.parametrize("bad", [object(), {1, 2}, {"a": object()}])
def test_unserializable_messages_are_rejected_never_pickled(bad: object) -> None:
    with pytest.raises(InvalidType, match="JSON-serializable"):
        codec.encode_message(bad, 1024)


def test_nan_is_not_json() -> None:
    with pytest.raises(InvalidInput, match="JSON"):
        codec.encode_message(float("nan"), 1024)


def test_message_size_limit_names_both_sizes() -> None:
    codec.encode_message(b"x" * 10, 10)
    with pytest.raises(InvalidInput, match=r"11 bytes.*max_message_bytes is 10"):
        codec.encode_message(b"x" * 11, 10)


def test_entry_round_trip_and_head_prefix() -> None:
    raw = codec.make_entry(42, codec.encode_message("hi", 10))
    assert raw.startswith(codec.entry_prefix(42))
    entry = codec.parse_entry(raw)
    assert (entry.offset, entry.message()) == (42, "hi")
    assert codec.head_prefix(raw) == b"42|"


@pytest.mark.parametrize("raw", [b"garbage", b"", b"|s", b"x1|s", b"12345678901234567|s"])
def test_corrupt_entries_are_detected(raw: bytes) -> None:
    with pytest.raises(codec.CorruptEntry):
        codec.parse_entry(raw)
    assert codec.head_prefix(raw) == raw  # no offset: fail_item compares the whole entry


@pytest.mark.parametrize("payload", [b"q", b"j{not json", b"s\xff\xfe"])
def test_corrupt_payloads_are_detected(payload: bytes) -> None:
    with pytest.raises(codec.CorruptEntry):
        codec.decode_message(payload)


# --- lanes: entries that carry their item's own sub key -------------------------------------


@pytest.mark.parametrize("sub_key", ["order-7", 42, b"\x00\xff|:k", None, ""])
@pytest.mark.parametrize("message", [b"raw|bytes", "text", {"a": [1, 2]}])
def test_a_keyed_entry_round_trips_its_sub_key_and_message(sub_key: Any, message: Any) -> None:
    encoded = codec.encode_sub_key(sub_key, 17)
    raw = codec.keyed_entry(17, encoded, codec.encode_message(message, 1000))
    entry = codec.parse_entry(raw)
    assert entry.offset == 17
    assert entry.message() == message
    assert codec.entry_sub(raw) == encoded
    assert codec.item_sub_key(raw) == (sub_key if sub_key is not None else None)


def test_an_entry_that_is_not_keyed_has_no_entry_sub() -> None:
    assert codec.entry_sub(b"5|sabc") is None
    with pytest.raises(codec.CorruptEntry, match="carries no valid sub key"):
        codec.item_sub_key(b"5|sabc")


@pytest.mark.parametrize(
    "raw", [b"5|k", b"5|kx:sa", b"5|k9:sab", b"5|k2sab", b"5|k3:L12sx", b"5|k2:zzsx"]
)
def test_a_malformed_keyed_entry_is_corrupt_not_misread(raw: bytes) -> None:
    with pytest.raises(codec.CorruptEntry):
        codec.item_sub_key(raw)


def test_a_keyed_payload_with_a_bad_length_does_not_decode() -> None:
    with pytest.raises(codec.CorruptEntry, match="no valid sub key prefix"):
        codec.decode_message(b"k99:sab")


def test_lanes_spread_sub_keys_stably_and_decode_as_lanes() -> None:
    subs = [codec.encode_sub_key(f"key-{i}", 0) for i in range(4000)]
    lanes = [codec.lane_of(s, 16) for s in subs]
    assert set(lanes) == set(range(16))
    assert max(lanes.count(i) for i in range(16)) < 2 * 4000 / 16
    assert codec.lane_of(b"skey-1", 16) == codec.lane_of(b"skey-1", 16) == 11  # pinned: stable
    assert codec.decode_sub_key(codec.lane_sub(7)) == codec.Lane(7)
    assert str(codec.Lane(7)) == "lane 7"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, InvalidInput, "from 1 to 4096, got 0"),
        (4097, InvalidInput, "from 1 to 4096"),
        (True, InvalidType, "lanes must be an int or None, got bool"),
        ("8", InvalidType, "got str"),
    ],
)
def test_bad_lane_counts_are_refused_by_name(value: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        codec.check_lanes(value)


def test_good_lane_counts_pass() -> None:
    assert codec.check_lanes(None) is None
    assert codec.check_lanes(1) == 1
    assert codec.check_lanes(4096) == 4096


def test_a_lane_entry_is_read_and_decoded_in_one_pass() -> None:
    raw = codec.keyed_entry(12, b"sorder-1", codec.encode_message({"x": 1}, 100))
    offset, sub, payload_at = codec.read_lane_entry(raw)
    assert (offset, sub) == (12, b"sorder-1")
    assert sub is not None
    # where the tagged payload starts: the window hands it on, and nothing is parsed again
    assert codec.decode_lane_payload(12, sub, raw[payload_at:]) == (12, "order-1", {"x": 1})
    assert codec.decode_lane_item(raw) == (12, "order-1", {"x": 1})


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (b"junk", (None, None)),
        (b"x|k2:sa", (None, None)),
        (b"5|sab", (5, None)),
        (b"5|k9:sab", (5, None)),
        (b"5|kx:sab", (5, None)),
    ],
)
def test_an_unreadable_lane_entry_reads_as_none_and_does_not_decode(
    raw: bytes, read: tuple[int | None, bytes | None]
) -> None:
    assert codec.read_lane_entry(raw) == (*read, 0)
    with pytest.raises(codec.CorruptEntry):
        codec.decode_lane_item(raw)


def test_a_lane_entry_naming_a_lane_as_its_sub_key_does_not_decode() -> None:
    with pytest.raises(codec.CorruptEntry, match="no valid sub key"):
        codec.decode_lane_item(b"5|k2:L1sab")
    offset, sub, payload_at = codec.read_lane_entry(b"5|k2:L1sab")
    assert sub == b"L1"
    with pytest.raises(codec.CorruptEntry, match="no valid sub key"):
        codec.decode_lane_payload(5, sub, b"5|k2:L1sab"[payload_at:])


@pytest.mark.parametrize(
    "raw",
    [
        b"7|k5:i4242bxyz",
        b"7|k0:bxyz",  # an empty sub key reads; decode_sub_key finds it corrupt
        b"0|k3:n\x00\x01sabc",
        b"12345678901234567|k2:sab",  # 17 digits: not an offset
        b"7|k2:s",  # the length runs past the end
        b"7|k:sab",
        b"7|K2:sab",
    ],
)
def test_the_fast_read_of_a_lane_entry_agrees_with_the_checked_split(raw: bytes) -> None:
    offset, sub, payload_at = codec.read_lane_entry(raw)
    assert (offset, sub) == codec._split_lane_entry(raw)[:2]
    if payload_at:
        assert raw[payload_at:] == codec._split_lane_entry(raw)[2]
