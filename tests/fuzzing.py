"""Running a hypothesis target the way the fuzz modules do: a fixed number of cases, seeded,
each one counted."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings


def run_fuzz(
    cases: collections.Counter[str],
    name: str,
    examples: int,
    test: Callable[..., None],
    **strategies: Any,
) -> None:
    """Run ``test`` on ``examples`` generated cases (derandomized: seeded by the test, so every
    run tries the same cases), counting each under ``cases[name]``."""

    # A derandomized run is seeded from the source of ``counted``: it reads exactly as it did
    # in the fuzz modules (hence CASES), so they keep trying the same cases.
    CASES = cases  # noqa: N806

    def counted(**kwargs: Any) -> None:
        CASES[name] += 1
        test(**kwargs)

    settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )(given(**strategies)(counted))()
