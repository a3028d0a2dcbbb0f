"""Validation and encoding of namespaces, partitions, offsets, sub keys and messages."""

from __future__ import annotations

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
