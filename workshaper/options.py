"""Checks of constructor options shared by the producer, the worker and the Kafka bridge."""

from __future__ import annotations

from workshaper.errors import InvalidInput, InvalidType


def check_positive(name: str, value: object, *, allow_float: bool = False) -> None:
    """``value`` must be an int >= 1 (or, with ``allow_float``, a number > 0); bool is refused."""
    kinds: tuple[type, ...] = (int, float) if allow_float else (int,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidType(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if value <= 0 if allow_float else value < 1:  # type: ignore[operator]
        raise InvalidInput(f"{name} must be {'> 0' if allow_float else '>= 1'}, got {value!r}")
