"""A namespace's lane count, fixed by its first producer and checked by every later one.

With ``lanes=N`` a producer puts an item on lane ``lane_of(its encoded sub key, N)`` of its
partition (codec). Producers of one namespace with different counts, or one with lanes and one
without, would put a sub key's items on two lists, which different workers lease at once: its
order would be lost. So the namespace's count is recorded in Redis (``ws:{ns}:lanes``, on the
namespace's own hash tag like its other namespace-wide keys) by the first producer that
enqueues, ``"0"`` for no lanes, and a producer whose count differs refuses to enqueue.
"""

from __future__ import annotations

import redis

from workshaper.batch import Batch, Link, Reply
from workshaper.connection import Backend, access_denied
from workshaper.errors import BackendUnavailable, LaneCountMismatch, ScriptError, WorkShaperError
from workshaper.keys import namespace_keys


def _shown(count: int | None) -> str:
    return "no lanes" if count is None else f"lanes={count}"


def record_lane_count(
    backend: Backend, namespace: str, lanes: int | None, link: Link | None = None
) -> None:
    """Record ``lanes`` (None: no lanes) as ``namespace``'s lane count unless it has one
    (SET NX), and read what it has (GET), in one round trip; LaneCountMismatch, naming both
    counts, when the namespace has another."""
    key = namespace_keys(namespace, backend.cluster).lanes
    raw = None
    for _ in range(3):  # None: a purge deleted the key between the two commands
        batch = Batch(backend, link)
        batch.command("SET", key, str(lanes or 0), "NX")
        got: Reply[bytes | None] = batch.command("GET", key)
        try:
            batch.execute()
            raw = got.get()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(
                f"lost Redis at {backend.where} while checking the lane count of namespace"
                f" {namespace!r} ({exc}); nothing was written: enqueue it again"
            ) from exc
        except ScriptError as exc:
            if isinstance(exc.__cause__, redis.exceptions.NoPermissionError):
                raise access_denied(backend, exc.__cause__) from None
            raise
        if raw is not None:
            break
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    if not text.isdigit():
        raise WorkShaperError(
            f"namespace {namespace!r} holds {text[:40]!r} as its lane count ({key.decode()}),"
            " which is none: nothing was written; purge the namespace or repair that key"
        )
    recorded = int(text) or None
    if recorded != lanes:
        raise LaneCountMismatch(
            f"namespace {namespace!r} has {_shown(recorded)}, recorded by its first producer;"
            f" this producer has {_shown(lanes)}: nothing was written (a sub key's lane"
            " depends on the count, so mixing counts would break its order). Use"
            f" {_shown(recorded)}, or another namespace",
            recorded,
            lanes,
        )
