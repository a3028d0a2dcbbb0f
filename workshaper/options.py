"""Checks of constructor options shared by the producer, the worker and the Kafka bridge."""

from __future__ import annotations

import math

from workshaper.errors import InvalidInput, InvalidType

SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut to SHOWN_CHARS: a value a user passed by
    mistake may be huge (Python even refuses to print ints of over 4,300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an int of {value.bit_length()} bits" if isinstance(value, int) else "?"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def check_positive(
    name: str, value: object, *, allow_float: bool = False, maximum: float | None = None
) -> None:
    """``value`` must be an int >= 1 (or, with ``allow_float``, a finite number > 0), at most
    ``maximum`` when given; bool is refused. NaN and infinity are refused: they pass every
    comparison check and then break a sleep, a lease or a Lua number far from here."""
    kinds: tuple[type, ...] = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidType(f"{name} must be a number, got {type(value).__name__} {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {shown(value)}")
    if value <= 0 if allow_float else value < 1:  # type: ignore[operator]
        raise InvalidInput(f"{name} must be {'> 0' if allow_float else '>= 1'}, got {shown(value)}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise InvalidInput(f"{name} must be at most {maximum:g}, got {shown(value)}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        kind = type(value).__name__
        raise InvalidType(f"{name} must be True or False, got {kind} {shown(value)}")
