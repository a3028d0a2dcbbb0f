"""What every embedded command shares: reply types, argument parsing, Redis's error texts."""

from __future__ import annotations

import math
import re

from workshaper.embedded.store import CommandError


class Status(bytes):
    """A simple-string reply (+OK, +PONG)."""


class Pairs(list):  # type: ignore[type-arg]
    """(member, score) pairs (WITHSCORES): nested in RESP3, one flat array in RESP2."""


OK = Status(b"OK")
PONG = Status(b"PONG")

NOT_INTEGER = "ERR value is not an integer or out of range"
NOT_FLOAT = "ERR value is not a valid float"
MIN_MAX_NOT_FLOAT = "ERR min or max is not a float"
SYNTAX = "ERR syntax error"


def wrong_args(name: str) -> CommandError:
    return CommandError(f"ERR wrong number of arguments for '{name.lower()}' command")


def to_int(raw: bytes) -> int:
    """Redis's string-to-integer: optional minus sign, decimal digits, within 64 bits."""
    if raw.isdigit() and len(raw) < 19 and (raw[0] != 48 or len(raw) == 1):  # b"0" is 48
        return int(raw)  # the common case: a small non-negative number, no leading zero
    if not re.fullmatch(rb"-?(0|[1-9][0-9]*)", raw):
        raise CommandError(NOT_INTEGER)
    value = int(raw)
    if not -(2**63) <= value < 2**63:
        raise CommandError(NOT_INTEGER)
    return value


def to_float(raw: bytes, error: str = NOT_FLOAT) -> float:
    if raw.isdigit():  # the common case: a non-negative integer (a time, an offset)
        return float(raw)
    text = raw.strip().lower()
    if text in (b"inf", b"+inf", b"infinity", b"+infinity"):
        return math.inf
    if text in (b"-inf", b"-infinity"):
        return -math.inf
    try:
        value = float(raw)
    except ValueError:
        raise CommandError(error) from None
    if math.isnan(value) or raw != raw.strip():
        raise CommandError(error)
    return value


def format_double(value: float) -> bytes:
    """A score as Redis writes it in a string reply (RESP2, and so in scripts): %.17g."""
    if value == 0:
        return b"0"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    return b"%.17g" % value


def arity(name: str, args: list[bytes], least: int, even_after: int | None = None) -> None:
    if len(args) < least or (even_after is not None and (len(args) - even_after) % 2):
        raise wrong_args(name)


def span(length: int, start: int, stop: int) -> tuple[int, int]:
    """Redis's inclusive [start, stop] with negative indexes, as a Python slice's bounds."""
    if start < 0:
        start = max(0, length + start)
    if stop < 0:
        stop = length + stop
    stop = min(stop, length - 1)
    if start > stop:
        return 0, 0
    return start, stop + 1
