"""A worker's settings, checked once and then read by every part of the coordinator."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workshaper import codec
from workshaper.errors import InvalidInput, InvalidType
from workshaper.keys import NamespaceKeys
from workshaper.options import check_positive, shown

#: Items a worker reads per lease per round trip.
DEFAULT_BATCH_SIZE = 100
#: Default ``prefetch``, per executor slot. How many leases are really read ahead follows the
#: batch times (prefetch.PrefetchPolicy): long batches use one. With a lease per item a claim
#: is the worker's unit of work, so the cap sets the items per round trip: 2 per slot (16
#: leases at concurrency 8) made the claim, the completion and the coordinator's turn cost
#: ~40% more per item than 8 per slot (docs/benchmarks.md, issue 9).
DEFAULT_PREFETCH_PER_SLOT = 8
#: Shortest lease accepted: renewals run every lease / 3 and must fit a round trip.
MIN_LEASE_SECONDS = 0.05

EXHAUSTED_MODES = {"dead_letter": "d", "block": "b"}
#: Upper bounds of the options: beyond them a value is a typo, not a setting (threads a process
#: cannot start, a lease or backoff that outlives any deploy, counts Lua cannot print exactly).
MAX_CONCURRENCY, MAX_PREFETCH, MAX_BATCH_SIZE = 10_000, 100_000, 100_000
MAX_LEASE_SECONDS, MAX_BACKOFF, MAX_ATTEMPTS = 86_400.0, 3_600.0, 1_000_000
MAX_NAME_LENGTH = 200


def check_worker_name(name: object) -> None:
    """A worker name is part of key names and records: printable UTF-8 text, no whitespace."""
    if not isinstance(name, str):
        raise InvalidType(f"name must be a str, got {type(name).__name__}")
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise InvalidInput(f"name must have 1 to {MAX_NAME_LENGTH} characters, got {len(name)}")
    codec.check_text("name", name)
    if not name.isprintable() or any(c.isspace() for c in name):
        raise InvalidInput(f"name {shown(name)} must be printable, without whitespace")


@dataclass(frozen=True)
class WorkerSettings:
    id: str
    namespace: str
    keys: NamespaceKeys
    concurrency: int
    lease_seconds: float
    max_attempts: int
    retry_backoff: float
    on_exhausted: str
    batch_size: int
    #: Most leases held beyond ``concurrency`` (batch read ahead) while the backlog is deep;
    #: how many are used follows the batch times (see prefetch.PrefetchPolicy).
    prefetch: int

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    @property
    def exhausted_mode(self) -> str:
        """The script's code for ``on_exhausted``: "d" dead-letter, "b" block."""
        return EXHAUSTED_MODES[self.on_exhausted]


def check_handlers(
    work: Callable[..., Any] | None,
    on_done: Callable[..., Any] | None,
    on_error: Callable[..., Any] | None,
) -> None:
    for label, fn in (("work", work), ("on_done", on_done), ("on_error", on_error)):
        if fn is not None and not callable(fn):
            raise InvalidType(f"{label} must be callable, got {type(fn).__name__}")
    if work is None:
        raise InvalidType("work must be callable, got None")


def worker_settings(
    namespace: str,
    *,
    concurrency: int,
    lease: float,
    max_attempts: int,
    retry_backoff: float,
    on_exhausted: str,
    batch_size: int,
    prefetch: int | None,
    name: str | None,
) -> WorkerSettings:
    """Check every option (nothing connects before this passed) and fill in the defaults."""
    codec.check_namespace(namespace)
    check_positive("concurrency", concurrency, maximum=MAX_CONCURRENCY)
    check_positive("lease", lease, allow_float=True, maximum=MAX_LEASE_SECONDS)
    check_positive("max_attempts", max_attempts, maximum=MAX_ATTEMPTS)
    check_positive("batch_size", batch_size, maximum=MAX_BATCH_SIZE)
    if retry_backoff != 0:  # 0 (retry at once) is allowed
        check_positive("retry_backoff", retry_backoff, allow_float=True, maximum=MAX_BACKOFF)
    elif isinstance(retry_backoff, bool) or not isinstance(retry_backoff, int | float):
        raise InvalidType(f"retry_backoff must be a number, got {shown(retry_backoff)}")
    if not isinstance(on_exhausted, str) or on_exhausted not in EXHAUSTED_MODES:
        raise InvalidInput(
            f"on_exhausted must be 'dead_letter' or 'block', got {shown(on_exhausted)}"
        )
    if lease < MIN_LEASE_SECONDS:
        raise InvalidInput(f"lease must be >= {MIN_LEASE_SECONDS} seconds, got {lease}")
    if prefetch is None:
        prefetch = DEFAULT_PREFETCH_PER_SLOT * concurrency
    elif isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise InvalidInput(f"prefetch must be an int >= 0, got {shown(prefetch)}")
    elif prefetch > MAX_PREFETCH:
        raise InvalidInput(f"prefetch must be at most {MAX_PREFETCH}, got {shown(prefetch)}")
    if name is not None:
        check_worker_name(name)
    return WorkerSettings(
        id=name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
        namespace=namespace,
        keys=NamespaceKeys(namespace),
        concurrency=concurrency,
        lease_seconds=float(lease),
        max_attempts=max_attempts,
        retry_backoff=float(retry_backoff),
        on_exhausted=on_exhausted,
        batch_size=batch_size,
        prefetch=prefetch,
    )
