"""Lua 5.1's numbers, for the transcriptions: what ``tonumber`` reads (C's strtod), the doubles
Lua holds, and ``string.format('%d')`` (a C cast to long).

They only matter for absurd arguments or corrupt stored values (a batch of 2**60, "inf", a
count that is no number): the transcriptions answer those as the Lua does, and the common case
(a small whole number) costs one check.
"""

from __future__ import annotations

import math
import re
from typing import TypeGuard

Number = int | float

#: Lua numbers are doubles: integers up to this are exact, so Python ints agree with them.
EXACT = 2**53
#: What a C cast of a double outside 64 bits (or NaN) gives on x86-64, Lua's '%d' included.
INT64_MIN = -(2**63)

_DECIMAL = re.compile(rb"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_HEX = re.compile(rb"\s*0[xX][0-9a-fA-F]+\s*")
#: C's isspace, which strtod skips before a number and Lua after it.
_C_SPACE = b" \t\n\r\f\v"
_NAN = re.compile(rb"nan(\([0-9a-z_]*\))?")


def _plain_number(value: bytes) -> Number | None:
    """Decimal and plain hexadecimal numbers; a whole one as an int."""
    if value.isdigit():
        return int(value)
    if _DECIMAL.fullmatch(value):
        number = float(value)
        return int(number) if number.is_integer() else number
    if _HEX.fullmatch(value):
        return int(value.strip(), 16)
    return None


def lua_tonumber(value: bytes | None) -> Number | None:
    """Lua 5.1's ``tonumber`` of a string, which is C's strtod (None where Lua gives nil):
    decimal, hexadecimal (signed, fractional), infinities and NaN. A whole number is an int;
    ``tonumber`` rounds one past 2**53 as Lua holds it."""
    if value is None:
        return None
    number = _plain_number(value)
    if number is not None:
        return number
    text = value.strip(_C_SPACE).lower()
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if body in (b"inf", b"infinity") or _NAN.fullmatch(body):
        return float(text.replace(b"infinity", b"inf").split(b"(")[0])
    if body.startswith(b"0x") and body[2:3] not in (b"+", b"-"):
        try:
            return float.fromhex(text.decode("ascii"))
        except ValueError:
            return None
    return None


def tonumber(value: bytes | None) -> Number | None:
    """``tonumber`` as the double Lua holds: lua_tonumber, with an int past 2**53 turned into
    the float it rounds to (so comparisons and arithmetic round as Lua's do)."""
    if (  # the common case: a whole number within 2**53
        value is not None
        and len(value) < 16
        and (value.isdigit() or (value[:1] == b"-" and value[1:].isdigit()))
    ):
        return int(value)
    number = lua_tonumber(value)
    return None if number is None else lua_number(number)


def whole(number: Number | None, least: int) -> TypeGuard[Number]:
    """The scripts' ``whole(value, least)`` of a number read by ``tonumber``:
    ``v and v == math.floor(v) and v >= least`` (inf is whole; NaN never)."""
    if number is None or math.isnan(number):  # floor(NaN) is NaN: never equal
        return False
    return (math.isinf(number) or number == math.floor(number)) and number >= least


def lua_number(value: int | float) -> Number:
    """A number as Lua holds it: past 2**53 an int becomes the double it rounds to, so the
    arithmetic after it rounds as Lua's does."""
    if type(value) is int and -EXACT <= value <= EXACT:
        return value
    return float(value)


def to_long(value: Number) -> int:
    """The C cast ``(long)value`` of Lua's ``string.format('%d')``: truncation, and INT64_MIN
    for what 64 bits cannot hold (and NaN)."""
    if type(value) is int and -EXACT <= value <= EXACT:
        return value
    x = float(value)
    return int(x) if -(2.0**63) <= x < 2.0**63 else INT64_MIN


def format_d(value: Number) -> bytes:
    """``string.format('%d', value)``."""
    if type(value) is int and -EXACT <= value <= EXACT:
        return b"%d" % value
    return b"%d" % to_long(value)


def format_s(value: bytes) -> bytes:
    """``string.format('%s', value)``: Lua 5.1 copies a string of 100 bytes or more, and
    sprintf's a shorter one (which ends it at its first NUL)."""
    if len(value) >= 100:
        return value
    return value.split(b"\0", 1)[0]


def reply_number(value: Number) -> int:
    """A Lua number in a script's reply: truncated to an integer (LuaScripts._from_lua)."""
    if type(value) is int:
        return value
    if not -(2.0**63) <= value < 2.0**63:  # out of range, or NaN
        return INT64_MIN
    return int(value)


def number_arg(value: Number) -> bytes:
    """A Lua number passed to redis.call, as the embedded runtime makes it a string (lupa hands
    over an integral double within 64 bits as an int)."""
    if isinstance(value, int):
        return b"%d" % value
    if value.is_integer() and -(2.0**63) <= value < 2.0**63:
        return b"%d" % int(value)
    return repr(value).encode()
