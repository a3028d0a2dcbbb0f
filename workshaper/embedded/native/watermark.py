"""offer_watermark.lua and commit_watermark.lua in Python (see the package's doc)."""

from __future__ import annotations

from workshaper.embedded.native.numbers import tonumber
from workshaper.embedded.native.partition import Partition, call, script_error
from workshaper.embedded.store import Store

#: The SHA1 of the .lua sources (with their includes) these functions transcribe.
OFFER_SHA1 = "6942c2565afce19ea6f4da444cd3e648e5ab876d"
COMMIT_SHA1 = "b8e084393993ca986ee0c408986a673ee064c902"


def offer_watermark(store: Store, keys: list[bytes], argv: list[bytes]) -> list[bytes | int]:
    """The next watermark of the partition, marked as being acked:
    {acked, watermark, in_queue, offsets...}."""
    part = Partition(store, keys)
    acked = part.hget(part.meta, b"acked") or b"-1"
    in_queue = part.llen(part.accepted)
    low = part.lowest_unfinished()
    finished = in_queue
    if low is not None:
        finished = part.accepted_rank(low, False, "offer_watermark")
    if finished == 0:
        return [acked, acked, in_queue]
    accepted = part.list_at(part.accepted)
    assert accepted is not None  # finished > 0: it has entries
    top = accepted[finished - 1]
    offer = part.hget(part.meta, b"offer")
    if offer is None or _number(offer, OFFER_SHA1) < _number(top, OFFER_SHA1):
        call(store, b"HSET", part.meta, b"offer", top)
    reply: list[bytes | int] = [acked, top, in_queue]
    if argv[:1] == [b"1"]:
        reply += accepted[:finished]
    return reply


def commit_watermark(store: Store, keys: list[bytes], argv: list[bytes]) -> int:
    """Move the acked watermark to ARGV[1]; the number of accepted-but-not-acked items left."""
    part = Partition(store, keys)
    if not argv:
        raise script_error(COMMIT_SHA1, "attempt to compare nil with number")
    watermark = argv[0]
    acked = part.hget(part.meta, b"acked")
    if acked is None or _number(acked, COMMIT_SHA1) < _number(watermark, COMMIT_SHA1):
        call(store, b"HSET", part.meta, b"acked", watermark)
        acked_count = part.accepted_rank(tonumber(watermark), True, "commit_watermark")
        if acked_count > 0:
            call(store, b"LTRIM", part.accepted, b"%d" % acked_count, b"-1")
        call(store, b"ZREMRANGEBYSCORE", part.clock, b"-inf", watermark)
    offer = part.hget(part.meta, b"offer")
    if offer is not None and _number(offer, COMMIT_SHA1) <= _number(watermark, COMMIT_SHA1):
        call(store, b"HDEL", part.meta, b"offer")
    return part.llen(part.accepted)


def _number(value: bytes, sha: str) -> int | float:
    """``tonumber`` where the script compares the result: a non-number fails the script as
    Lua's comparison with nil does."""
    number = tonumber(value)
    if number is None:
        raise script_error(sha, "attempt to compare nil with number")
    return number
