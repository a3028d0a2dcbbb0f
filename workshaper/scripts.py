"""A typed call per Lua script: the only code that knows a script's argument layout and the
shape of its reply. Each call adds the script to a Batch and returns a Reply."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from workshaper.batch import Batch, Reply
from workshaper.keys import NamespaceKeys, PartitionKeys


class EncodedItem(NamedTuple):
    sub: bytes  # encoded sub key (codec.encode_sub_key)
    offset: int
    entry: bytes  # queue entry (codec.make_entry)


def enqueue_items(
    batch: Batch,
    pkeys: PartitionKeys,
    items: Sequence[EncodedItem],
    max_in_queue: int,
    request_id: str | None = None,
    *,
    expected_highest: int = -1,
) -> Reply[list[int]]:
    """Statuses per item: 0 accepted, 1 duplicate, 2 already acked, 3 full, 4 being acked,
    5 lost writes (the partition's highest accepted offset is below ``expected_highest``:
    nothing written).

    ``request_id`` must be unique per call across processes (default: a random one): a re-sent
    call (same id) gets the answer of its first run.

    Items are sent grouped by sub key (each group's entries contiguous), so the script can push
    a whole group from its arguments in one RPUSH.
    """
    group_of: dict[bytes, int] = {}
    entries: list[list[bytes]] = []
    subs: list[bytes] = []
    offsets: list[int] = []
    groups: list[int] = []
    for item in items:
        group = group_of.get(item.sub)
        if group is None:
            group = group_of[item.sub] = len(subs) + 1
            subs.append(item.sub)
            entries.append([])
        entries[group - 1].append(item.entry)
        offsets.append(item.offset)
        groups.append(group)
    if request_id is None:
        request_id = uuid.uuid4().hex
    args: list[Any] = [
        request_id,
        max_in_queue,
        expected_highest,
        len(items),
        len(subs),
        *offsets,
        *groups,
    ]
    for sub, group_entries in zip(subs, entries, strict=True):
        args += (sub, len(group_entries), *group_entries)
    count = len(items)

    def parse(raw: Any) -> list[int]:
        return [0] * count if isinstance(raw, int) else list(raw)

    return batch.script(
        "enqueue_items", [*pkeys.fixed, *(pkeys.queue(sub) for sub in subs)], args, parse=parse
    )


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us per lease
class Claimed:
    sub: bytes
    token: int
    attempts_record: bytes  # b"offset|n" or b""
    exact: int  # items left to run one at a time
    entries: list[bytes]  # the first batch: the head of the sub key's list


def _parse_claim(raw: list[Any]) -> tuple[int, list[Claimed]]:
    """(runnable sub keys left in the partition, the new leases)."""
    ready_left = int(raw[0])
    claims: list[Claimed] = []
    i = 1
    while i < len(raw):
        count = int(raw[i + 4])
        first = i + 5
        claims.append(
            Claimed(
                raw[i], int(raw[i + 1]), raw[i + 2], int(raw[i + 3]), raw[first : first + count]
            )
        )
        i = first + count
    return ready_left, claims


def claim_sub_keys(
    batch: Batch,
    pkeys: PartitionKeys,
    *,
    worker_id: str,
    request_id: str,
    max_leases: int,
    lease_ms: int,
    batch_size: int,
    max_attempts: int,
    exhausted_mode: str,
) -> Reply[tuple[int, list[Claimed]]]:
    return batch.script(
        "claim_sub_keys",
        [*pkeys.fixed, pkeys.claim_record(worker_id)],
        [
            worker_id,
            request_id,
            max_leases,
            lease_ms,
            batch_size,
            max_attempts,
            exhausted_mode,
            pkeys.queue_prefix,
        ],
        parse=_parse_claim,
    )


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us per lease
class Completion:
    sub: bytes
    token: int
    action: str  # "k" keep, "c" continue, "y" yield (continue unless others wait), "r" release
    offsets: Sequence[int]
    exact: bool = False  # the lease runs one item at a time after a crash (claim said so)
    #: Entries the worker holds right after ``offsets``, read and not finished yet (0 <= held
    #: <= batch, above 0 with "k" and "c" only): "c" then hands out what follows them, at most
    #: batch - held, and keeps the lease even with none (complete_items.lua).
    held: int = 0


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us per lease
class CompletionReply:
    code: int  # -1 fenced, 1 held, 2 released
    finished: int
    attempts_record: bytes  # of the new head, when next_entries is given
    next_entries: list[bytes]
    requeued: bool = False  # released with items left: the sub key is runnable again


def _parse_completion(r: list[Any]) -> CompletionReply:
    code, finished = int(r[0]), int(r[1])
    if code == 2:
        return CompletionReply(code, finished, b"", [], len(r) > 2 and int(r[2]) == 1)
    return CompletionReply(code, finished, r[2] if len(r) > 2 else b"", list(r[3:]))


def _parse_completions(raw: list[list[Any]]) -> list[CompletionReply]:
    return [_parse_completion(r) for r in raw]


def complete_items(
    batch: Batch,
    pkeys: PartitionKeys,
    completions: Sequence[Completion],
    *,
    lease_ms: int,
    batch_size: int,
) -> Reply[list[CompletionReply]]:
    extra: list[bytes] = []
    args: list[Any] = [lease_ms, batch_size, len(completions)]
    for c in completions:
        extra.append(pkeys.queue(c.sub))
        exact = 1 if c.exact else 0
        args += (len(extra), c.sub, c.token, c.action, exact, c.held, len(c.offsets))
        args += c.offsets
    return batch.script("complete_items", [*pkeys.fixed, *extra], args, parse=_parse_completions)


def fail_item(
    batch: Batch,
    pkeys: PartitionKeys,
    *,
    sub: bytes,
    token: int,
    head_prefix: bytes,
    offset: int | None,
    attempt: int,
    max_attempts: int,
    exhausted_mode: str,
    force: bool,
    error_json: str,
    lease_ms: int,
) -> Reply[tuple[int, int]]:
    """(code, attempts): -1 fenced, 0 no longer at head, 1 retry, 2 dead-lettered, 3 blocked."""
    return batch.script(
        "fail_item",
        [*pkeys.fixed, pkeys.queue(sub)],
        [
            sub,
            token,
            head_prefix,
            "" if offset is None else offset,
            attempt,
            max_attempts,
            exhausted_mode,
            "1" if force else "0",
            error_json,
            lease_ms,
        ],
        parse=lambda raw: (int(raw[0]), int(raw[1])),
    )


def extend_leases(
    batch: Batch, pkeys: PartitionKeys, leases: Sequence[tuple[bytes, int]], lease_ms: int
) -> Reply[list[int]]:
    """0-based indexes of the leases that were lost."""
    args: list[Any] = [lease_ms]
    for sub, token in leases:
        args += (sub, token)
    return batch.script(
        "extend_leases", pkeys.fixed, args, parse=lambda raw: [int(i) - 1 for i in raw]
    )


def expired_leases(
    batch: Batch, pkeys: PartitionKeys, before_ms: int, limit: int
) -> Reply[list[bytes]]:
    """Up to ``limit`` sub keys whose lease deadline is before ``before_ms`` (server ms). A plain
    read, no script: the reaper asks it of every partition, so it costs one command (a script
    would add its own commands to the count), and expire_lease.lua re-checks each deadline."""
    return batch.command(
        "ZRANGEBYSCORE", pkeys.leases, "-inf", f"({before_ms}", "LIMIT", 0, limit, parse=list
    )


def expire_lease(
    batch: Batch, pkeys: PartitionKeys, sub: bytes, reaper_id: str
) -> Reply[tuple[int, int]]:
    """(code, attempts): 0 not expired, 1 requeued, 2 dead-lettered, 3 blocked."""
    return batch.script(
        "expire_lease",
        [*pkeys.fixed, pkeys.queue(sub)],
        [sub, reaper_id],
        parse=lambda raw: (int(raw[0]), int(raw[1])),
    )


@dataclass(frozen=True, slots=True)
class Offer:
    acked: int
    watermark: int
    in_queue: int
    offsets: list[int]  # finished offsets in (acked, watermark], when asked for

    @property
    def advances(self) -> bool:
        return self.watermark > self.acked


def _parse_offer(raw: list[Any]) -> Offer:
    return Offer(int(raw[0]), int(raw[1]), int(raw[2]), [int(o) for o in raw[3:]])


def offer_watermark(batch: Batch, pkeys: PartitionKeys, with_offsets: bool) -> Reply[Offer]:
    return batch.script(
        "offer_watermark", pkeys.fixed, ["1" if with_offsets else "0"], parse=_parse_offer
    )


def commit_watermark(batch: Batch, pkeys: PartitionKeys, watermark: int) -> Reply[int]:
    """Accepted-but-not-acked items left in the partition."""
    return batch.script("commit_watermark", pkeys.fixed, [watermark], parse=int)


def mark_isolated(batch: Batch, pkeys: PartitionKeys, sub: bytes, token: int) -> Reply[int]:
    """1, or -1 when the lease is lost."""
    return batch.script("mark_isolated", pkeys.fixed, [sub, token], parse=int)


def unblock_sub_key(
    batch: Batch, pkeys: PartitionKeys, sub: bytes, action: str, note_json: str, *, request_id: str
) -> Reply[bool]:
    """True when the sub key was blocked (``request_id``: unique per operator action, so a
    re-sent call answers True again)."""
    return batch.script(
        "unblock_sub_key",
        [*pkeys.fixed, pkeys.queue(sub), pkeys.unblock_record(request_id)],
        [sub, action, note_json],
        parse=lambda raw: bool(int(raw)),
    )


# --- namespace-wide: the reaper's election and the worker registry -------------------------


@dataclass(frozen=True, slots=True)
class ReaperLock:
    held: bool  # the caller is the reaper for ``term``
    term: int  # the holder's term (0: nobody holds it)
    ttl_ms: int  # what is left of the lock (the full TTL when the caller just took or renewed it)
    server_ms: int  # server time when the script ran


def reaper_lock(
    batch: Batch, nkeys: NamespaceKeys, worker_id: str, term: int, ttl_ms: int
) -> Reply[ReaperLock]:
    """Take, renew (``term`` > 0, held by this worker) or give up (``ttl_ms`` 0) the lock."""
    return batch.script(
        "reaper_lock",
        [nkeys.reaper, nkeys.reaper_term],
        [worker_id, term, ttl_ms],
        parse=lambda raw: ReaperLock(bool(int(raw[0])), int(raw[1]), int(raw[2]), int(raw[3])),
    )


def register_worker(
    batch: Batch, nkeys: NamespaceKeys, worker_id: str, info_json: str
) -> Reply[int]:
    """The worker's heartbeat; the script stamps ``seen`` with server time."""
    return batch.script("register_worker", [nkeys.workers], [worker_id, info_json], parse=int)


def prune_workers(batch: Batch, nkeys: NamespaceKeys, max_age_ms: int) -> Reply[int]:
    """Drop registry entries whose heartbeat is older than ``max_age_ms``: how many went."""
    return batch.script("prune_workers", [nkeys.workers], [max_age_ms], parse=int)


# Operator scripts (workshaper.ops): read-only views, and the replay of a dead letter.


def inspect_partition(batch: Batch, pkeys: PartitionKeys) -> Reply[list[Any]]:
    """The raw fields of inspect_partition.lua (see its header); workshaper.ops parses them."""
    return batch.script("inspect_partition", pkeys.fixed, [], parse=list, read_only=True)


def stuck_sub_keys(
    batch: Batch, pkeys: PartitionKeys, *, limit: int, older_than_ms: int
) -> Reply[list[Any]]:
    """The raw rows of stuck_sub_keys.lua (see its header); workshaper.ops parses them."""
    return batch.script(
        "stuck_sub_keys", pkeys.fixed, [limit, older_than_ms], parse=list, read_only=True
    )


def replay_dead_letter(
    batch: Batch, pkeys: PartitionKeys, field: bytes, sub: bytes
) -> Reply[bytes | None]:
    """The queue entry put back at the tail of the sub key's queue, or None (no such record)."""
    return batch.script(
        "replay_dead_letter",
        [*pkeys.fixed, pkeys.queue(sub)],
        [field, sub],
        parse=lambda raw: raw[1] if int(raw[0]) == 1 else None,
    )
