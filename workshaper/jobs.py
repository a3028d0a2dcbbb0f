"""What a handler can learn about the item it runs: ``current_job()``."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import NamedTuple

from workshaper.codec import SubKey


class Job(NamedTuple):
    """The item being run. ``token`` is the fencing token of the worker's lease on this sub key:
    tokens of a partition only grow, so a downstream store can reject a write that carries a
    smaller token than one it has already seen for (partition, sub key)."""

    sub_key: SubKey
    partition: int
    offset: int
    attempt: int  # 1-based
    token: int


_current: ContextVar[Job | None] = ContextVar("workshaper_current_job", default=None)


def current_job() -> Job:
    """The Job being run by the calling handler. Raises LookupError outside a handler."""
    job = _current.get()
    if job is None:
        raise LookupError("current_job() is only available inside a WorkShaper work handler")
    return job


#: Sets the job the calling handler sees (the ContextVar's own method: no Python frame per item).
set_current_job = _current.set


#: ``Job(*fields)`` without the Python-level ``__new__`` of a NamedTuple (half the cost of
#: making one; the executor makes one per item).
new_job: Callable[[tuple[SubKey, int, int, int, int]], Job] = partial(tuple.__new__, Job)
