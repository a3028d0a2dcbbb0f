"""Option values in error messages: a value passed by mistake may be huge, and the error must
still name the option (Python refuses to print ints of over 4,300 digits)."""

from __future__ import annotations

import pytest

import workshaper
from workshaper.errors import InvalidInput
from workshaper.options import SHOWN_CHARS, shown

HUGE = 10**5000


@pytest.mark.parametrize("option", ["on_exhausted", "prefetch", "retry_backoff", "concurrency"])
def test_a_huge_int_option_is_a_clear_error(option: str) -> None:
    with pytest.raises(InvalidInput, match=option):
        # A huge int on purpose, for the options of other types too (hence the ignore).
        workshaper.Worker(None, "ns", work=lambda m, p, o: None, **{option: HUGE})  # type: ignore[arg-type]


def test_shown_values_are_short() -> None:
    assert shown("x" * 10_000).endswith("...")
    assert len(shown("x" * 10_000)) == SHOWN_CHARS
    assert shown(HUGE) == f"an int of {HUGE.bit_length()} bits"
    assert shown("block") == "'block'"
