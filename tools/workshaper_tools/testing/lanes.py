"""The producer's ``lanes`` option (docs/lanes.md) as the bench and the chaos harness pass it.

``lanes=None`` is today's mode (every sub key leased on its own) and adds nothing to the
producer's keyword arguments, so the tools run unchanged against a ``Producer`` that has no
``lanes`` parameter; asking for lanes from such a producer says so instead of failing later.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Why a lanes run cannot go on (the tests skip with it).
NO_LANES = "workshaper.Producer has no lanes parameter in this tree (the lanes producer is not in)"


def producer_takes_lanes() -> bool:
    """True when ``workshaper.Producer(..., lanes=N)`` is accepted."""
    import workshaper  # noqa: PLC0415 - the chaos producer keeps its imports light

    return "lanes" in inspect.signature(workshaper.Producer).parameters


def lanes_option(lanes: int | None) -> dict[str, Any]:
    """The producer's keyword arguments for ``lanes``: ``{}`` for today's mode (None)."""
    if lanes is None:
        return {}
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be a positive int or None, got {lanes!r}")
    if not producer_takes_lanes():
        raise RuntimeError(NO_LANES)
    return {"lanes": lanes}
