"""Checks of constructor options shared by the producer, the worker and the Kafka bridge."""

from __future__ import annotations

import math

from workshaper.errors import InvalidInput, InvalidType


def check_positive(
    name: str, value: object, *, allow_float: bool = False, maximum: float | None = None
) -> None:
    """``value`` must be an int >= 1 (or, with ``allow_float``, a finite number > 0), at most
    ``maximum`` when given; bool is refused. NaN and infinity are refused: they pass every
    comparison check and then break a sleep, a lease or a Lua number far from here."""
    kinds: tuple[type, ...] = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidType(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number, got {value!r}")
    if value <= 0 if allow_float else value < 1:  # type: ignore[operator]
        raise InvalidInput(f"{name} must be {'> 0' if allow_float else '>= 1'}, got {value!r}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise InvalidInput(f"{name} must be at most {maximum:g}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidType(f"{name} must be True or False, got {type(value).__name__} {value!r}")
