"""The partition operations on typed in-memory state: one partition's scripts (enqueue, claim,
complete, fail, lease renewal, offer and commit of the watermark) as methods of a Python object
whose state is ints, deques and dicts, not a store of Redis containers of bytes.

Each method takes the arguments of its typed call in ``workshaper.scripts`` (without the batch
and the partition's keys) and returns what that call's reply parses to, so a caller written
against ``scripts`` gets the same answers. ``render()`` gives the partition's keys as Redis would
hold them after the same calls. The Lua scripts stay the truth: tests/test_engine_differential.py
drives the same random operations into them on a real redis-server and into this engine and
compares every reply and the rendered state after every step. Each method names the script it
follows; the comments name the script's steps where the order matters.

What a single process needs and nothing more: no lease expires here (nobody reaps them: the
process holding the leases owns the state), so crash windows ("exact") and isolation flags
never arise, and the operator's scripts (unblock, replay, inspect) are not here. Calls are not
thread-safe: the caller serializes them, as Redis runs one script at a time.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from workshaper.embedded.completing import check_completions, finished_run
from workshaper.embedded.records import ClaimRecord, entry_offset, failure_record, with_sub_key
from workshaper.keys import PartitionKeys
from workshaper.scripts import Claimed, Completion, CompletionReply, EncodedItem, Offer

#: enqueue_items.lua's statuses.
ACCEPTED, DUPLICATE, ALREADY_ACKED, FULL, BEING_ACKED, LOST_WRITES = range(6)
#: fail_item.lua's codes.
FENCED, NOT_AT_HEAD, RETRY, DEAD_LETTERED, BLOCKED = -1, 0, 1, 2, 3


class PartitionEngine:
    """One partition's state and the operations of its scripts."""

    def __init__(self, pkeys: PartitionKeys, clock: Callable[[], float] = time.time) -> None:
        self.pkeys = pkeys
        self._clock = clock
        # meta: the hash fields of K_META (None: the field does not exist)
        self._acked: int | None = None
        self._offer: int | None = None
        self._max: int | None = None
        self._request: bytes | None = None
        self._token: int | None = None
        #: accepted-but-not-acked offsets, ascending (K_ACCEPTED)
        self._accepted: list[int] = []
        #: sub key -> its head item's offset (K_HEADS), and a heap of (offset, sub) over it
        #: whose stale pairs are dropped when they reach the top
        self._heads: dict[bytes, int] = {}
        self._head_heap: list[tuple[int, bytes]] = []
        self._late: set[int] = set()  # offsets accepted below the highest one (K_LATE)
        self._ready: deque[bytes] = deque()  # runnable sub keys (K_READY)
        self._leases: dict[bytes, int] = {}  # sub key -> lease deadline, server ms (K_LEASES)
        #: sub key -> (token, the rest of its owner record) (K_OWNERS holds b"<token><rest>"):
        #: the fencing check compares ints, and a claim formats no record
        self._owners: dict[bytes, tuple[int, bytes]] = {}
        self._owner_suffixes: dict[tuple[int, int, str, str], bytes] = {}
        self._attempts: dict[bytes, bytes] = {}  # sub key -> b"<offset>|<n>" (K_ATTEMPTS)
        self._blocked: dict[bytes, bytes] = {}  # sub key -> failure record (K_BLOCKED)
        self._dead: dict[bytes, bytes] = {}  # offset (or corrupt:...) -> record (K_DEAD)
        self._samples: dict[int, int] = {}  # server ms -> highest accepted offset (K_CLOCK)
        self._queues: dict[bytes, deque[bytes]] = {}  # sub key -> its entries
        self._claims: dict[str, ClaimRecord] = {}  # worker id -> its last claim

    @property
    def in_queue(self) -> int:
        """Accepted-but-not-acked items (what enqueue counts against max_in_queue)."""
        return len(self._accepted)

    # --- shared (includes/partition.lua) -----------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _set_head(self, sub: bytes, offset: int) -> None:
        self._heads[sub] = offset
        heapq.heappush(self._head_heap, (offset, sub))

    def _lowest_head(self) -> int | None:
        heap, heads = self._head_heap, self._heads
        while heap:
            offset, sub = heap[0]
            if heads.get(sub) == offset:
                return offset
            heapq.heappop(heap)
        return None

    def _lowest_unfinished(self) -> int | None:
        low = self._lowest_head()
        if self._late:
            late = min(self._late)
            if low is None or late < low:
                low = late
        return low

    def _refresh_head(self, sub: bytes) -> None:
        """After the head of ``sub``'s queue was removed: the new head's offset, or no head."""
        queue = self._queues.get(sub)
        if not queue:
            self._heads.pop(sub, None)
            return
        offset = entry_offset(queue[0])
        if offset is not None:  # a corrupt head keeps the old score
            self._set_head(sub, offset)

    def _holds(self, sub: bytes, token: int) -> bool:
        """Does ``token`` own the lease on ``sub`` (the scripts' fencing check)?"""
        owner = self._owners.get(sub)
        return owner is not None and owner[0] == token

    def _extend(self, sub: bytes, deadline: int) -> None:
        if sub in self._leases:  # ZADD XX: never re-creates a lease
            self._leases[sub] = deadline

    def _release(self, sub: bytes) -> None:
        self._owners.pop(sub, None)
        self._leases.pop(sub, None)

    def _record_clock(self, highest: int) -> None:
        self._samples[self._now_ms()] = highest

    def _forget_late(self, offsets: Sequence[int]) -> None:
        if self._late:
            self._late.difference_update(offsets)

    def _push(self, sub: bytes, entries: Sequence[bytes]) -> int:
        """RPUSH to ``sub``'s queue: its new length."""
        queue = self._queues.get(sub)
        if queue is None:
            queue = self._queues[sub] = deque()
        queue.extend(entries)
        return len(queue)

    def _register_new_heads(self, new: list[tuple[bytes, bytes]]) -> None:
        """enqueue_items.lua's register_new_heads: queues that were empty get their first
        entry as head, and become runnable unless leased."""
        owners = self._owners
        for sub, entry in new:
            offset = entry_offset(entry)
            if offset is not None:
                self._set_head(sub, offset)
        self._ready.extend(sub for sub, _ in new if sub not in owners)

    # --- enqueue_items.lua -------------------------------------------------------------------

    def enqueue_items(
        self,
        items: Sequence[EncodedItem],
        max_in_queue: int,
        request_id: str,
        *,
        expected_highest: int = -1,
    ) -> list[int]:
        """Statuses per item (see scripts.enqueue_items)."""
        rid = request_id.encode()
        n = len(items)
        answer = self._answered(rid, n)
        if answer is not None:
            return answer
        acked = -1 if self._acked is None else self._acked
        floor = max(acked, -1 if self._offer is None else self._offer)
        highest = -1 if self._max is None else self._max
        if highest < expected_highest:
            return [LOST_WRITES] * n
        if n == 1:  # the embedded Manager's call: the fast path's steps for one item
            item = items[0]
            if len(self._accepted) < max_in_queue and item.offset > max(highest, floor):
                self._enqueue_one(item, rid)
                return [ACCEPTED]
        elif n and self._fast_path_applies(items, max_in_queue, max(highest, floor)):
            self._accepted += [item.offset for item in items]
            new = [
                (sub, entries[0])
                for sub, entries in _groups(items).items()
                if self._push(sub, entries) == len(entries)
            ]
            self._register_new_heads(new)
            self._max = items[-1].offset
            self._request = rid + b"|n%d" % n
            self._record_clock(items[-1].offset)
            return [ACCEPTED] * n
        return self._enqueue_one_by_one(
            items, max_in_queue, rid, acked=acked, floor=floor, highest=highest
        )

    def _enqueue_one(self, item: EncodedItem, rid: bytes) -> None:
        """The script's fast path for one item above every accepted offset, with room."""
        offset, sub = item.offset, item.sub
        self._accepted.append(offset)
        queue = self._queues.get(sub)
        if queue is None:  # a new head: runnable unless leased
            self._queues[sub] = deque((item.entry,))
            head = entry_offset(item.entry)
            if head is not None:
                self._set_head(sub, head)
            if sub not in self._owners:
                self._ready.append(sub)
        else:
            queue.append(item.entry)
        self._max = offset
        self._request = rid + b"|n1"
        self._samples[int(self._clock() * 1000)] = offset

    def _answered(self, rid: bytes, n: int) -> list[int] | None:
        """The first run's answer to a re-sent call (same request id), else None."""
        request = self._request
        if request is None or not request.startswith(rid + b"|"):
            return None
        answer = request[len(rid) + 1 :]
        if answer.startswith(b"n"):
            return [ACCEPTED] * n  # the script answers the count; scripts.py parses it so
        return [digit - 48 for digit in answer]

    def _fast_path_applies(
        self, items: Sequence[EncodedItem], max_in_queue: int, previous: int
    ) -> bool:
        if len(self._accepted) + len(items) > max_in_queue:
            return False
        for item in items:
            if item.offset <= previous:
                return False
            previous = item.offset
        return True

    def _enqueue_one_by_one(
        self,
        items: Sequence[EncodedItem],
        max_in_queue: int,
        rid: bytes,
        *,
        acked: int,
        floor: int,
        highest: int,
    ) -> list[int]:
        """The script's general path: each item decided in order."""
        accepted = self._accepted
        in_queue = len(accepted)
        statuses: list[int] = []
        taken: dict[bytes, list[bytes]] = {sub: [] for sub in _groups(items)}
        seen: set[int] = set()
        full = False
        max_before = self._max
        for item in items:
            offset = item.offset
            if full:
                status = FULL
            elif offset <= acked:
                status = ALREADY_ACKED
            elif offset <= floor:
                status = BEING_ACKED
            elif offset in seen or (offset <= highest and _contains(accepted, offset)):
                status = DUPLICATE
            elif in_queue >= max_in_queue:
                full, status = True, FULL
            elif offset > highest:
                status, highest = ACCEPTED, offset
                accepted.append(offset)
            else:  # a gap filled late: in order, and tracked so the watermark waits for it
                status = ACCEPTED
                bisect.insort(accepted, offset)
                self._late.add(offset)
            if status == ACCEPTED:
                seen.add(offset)
                in_queue += 1
                taken[item.sub].append(item.entry)
            statuses.append(status)
        new = [
            (sub, entries[0])
            for sub, entries in taken.items()
            if entries and self._push(sub, entries) == len(entries)
        ]
        self._register_new_heads(new)
        if highest >= 0 and highest != max_before:
            self._max = highest
        self._request = rid + b"|" + bytes(48 + s for s in statuses)
        if highest >= 0 and (new or highest != max_before):
            self._record_clock(highest)
        return statuses

    # --- claim_sub_keys.lua ------------------------------------------------------------------

    def claim_sub_keys(
        self,
        *,
        worker_id: str,
        request_id: str,
        max_leases: int,
        lease_ms: int,
        batch_size: int,
        max_attempts: int,
        exhausted_mode: str,
    ) -> tuple[int, list[Claimed]]:
        """(runnable sub keys left in the partition, the new leases)."""
        first_read = max(batch_size, 1)
        rid = request_id.encode()
        previous = self._claims.get(worker_id)
        if previous is not None and previous.request_id == rid:
            return self._claimed_again(previous, first_read)
        ready, owners = self._ready, self._owners
        popped = [ready[i] for i in range(min(max_leases, len(ready)))]
        subs = [sub for sub in popped if sub not in owners]
        attempts_read = bool(subs) and bool(self._attempts)
        attempts = [self._attempts.get(sub) for sub in subs] if attempts_read else []
        ready_left = len(ready) - len(popped)
        first_token = 0
        if subs:
            self._token = (self._token or 0) + len(subs)
            first_token = self._token - len(subs) + 1
        for _ in popped:
            ready.popleft()
        claims: list[Claimed] = []
        if subs:
            deadline = self._now_ms() + lease_ms
            suffix = self._owner_suffix(batch_size, max_attempts, exhausted_mode, worker_id)
            for j, sub in enumerate(subs):
                token = first_token + j
                self._leases[sub] = deadline
                owners[sub] = (token, suffix)
                queue = self._queues.get(sub)
                entries = [] if queue is None else _first(queue, first_read)
                record = attempts[j] if attempts_read else None
                claims.append(Claimed(sub, token, record or b"", 0, entries))
        self._claims[worker_id] = ClaimRecord(
            rid, ready_left, first_token, subs, attempts, attempts_read
        )
        return ready_left, claims

    def _owner_suffix(
        self, batch_size: int, max_attempts: int, exhausted_mode: str, worker_id: str
    ) -> bytes:
        """The owner record after its token: "|-|<batch>|<max_attempts>|<mode>|<worker>"."""
        key = (batch_size, max_attempts, exhausted_mode, worker_id)
        suffix = self._owner_suffixes.get(key)
        if suffix is None:
            suffix = self._owner_suffixes[key] = b"|-|%d|%d|%s|%s" % (
                batch_size,
                max_attempts,
                exhausted_mode.encode(),
                worker_id.encode(),
            )
        return suffix

    def _claimed_again(self, record: ClaimRecord, first_read: int) -> tuple[int, list[Claimed]]:
        """A re-sent claim: the first call's leases, their first batches read again now."""
        claims = []
        for j, sub in enumerate(record.subs):
            attempts = record.attempts[j] if record.attempts_read else None
            queue = self._queues.get(sub)
            entries = [] if queue is None else _first(queue, first_read)
            claims.append(Claimed(sub, record.first_token + j, attempts or b"", 0, entries))
        return record.ready_left, claims

    # --- complete_items.lua ------------------------------------------------------------------

    def complete_items(
        self, completions: Sequence[Completion], *, lease_ms: int, batch_size: int
    ) -> list[CompletionReply]:
        """One reply per lease (see scripts.CompletionReply)."""
        check_completions(completions, batch_size)
        ready_len = len(self._ready)
        had_attempts = bool(self._attempts)
        deadline = self._now_ms() + lease_ms
        replies: list[CompletionReply] = []
        requeued: list[bytes] = []
        for c in completions:
            if not self._holds(c.sub, c.token):
                replies.append(CompletionReply(-1, 0, b"", []))  # fenced: nothing written
                continue
            continues = c.action == "c" or (c.action == "y" and ready_len == 0)
            take = batch_size if continues else 1
            finished = self._finish_head(c.sub, c.offsets)
            queue = self._queues.get(c.sub)
            if c.action == "k":
                self._extend(c.sub, deadline)
                replies.append(CompletionReply(1, finished, b"", []))
            elif continues and (queue or c.held):
                # A worker holding entries ("c" only) keeps its lease even with nothing new: it
                # gets what follows them, at most batch - held.
                self._extend(c.sub, deadline)
                attempts = b""
                if finished == 0 and had_attempts:
                    attempts = self._attempts.get(c.sub, b"")
                entries = _first(queue, take)[c.held :] if queue else []
                replies.append(CompletionReply(1, finished, attempts, entries))
            else:
                self._release(c.sub)
                if queue:
                    requeued.append(c.sub)
                    ready_len += 1
                replies.append(CompletionReply(2, finished, b"", [], bool(queue)))
        self._ready.extend(requeued)
        return replies

    def _finish_head(self, sub: bytes, offsets: Sequence[int]) -> int:
        """Take the leading entries of ``sub``'s queue that match ``offsets`` (finished_run)
        off it, keeping `heads` in step: how many were taken."""
        queue = self._queues.get(sub)
        start, finished = finished_run(queue or (), offsets)
        if queue is None or not finished:
            return 0
        self._forget_late(offsets[start : start + finished])
        self._attempts.pop(sub, None)
        if finished == len(queue):
            del self._queues[sub]
            self._heads.pop(sub, None)
            return finished
        for _ in range(finished):
            queue.popleft()
        head = entry_offset(queue[0])
        if head is not None:  # a corrupt new head keeps the old score
            self._set_head(sub, head)
        return finished

    # --- fail_item.lua -----------------------------------------------------------------------

    def fail_item(
        self,
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
    ) -> tuple[int, int]:
        """(code, attempts): -1 fenced, 0 no longer at head, 1 retry, 2 dead-lettered,
        3 blocked."""
        if not self._holds(sub, token):
            return FENCED, 0
        queue = self._queues.get(sub)
        head = queue[0] if queue else None
        if head is None or not (
            head == head_prefix if offset is None else head.startswith(head_prefix)
        ):
            return NOT_AT_HEAD, 0
        now = self._now_ms()
        count = 0
        if offset is not None:
            record_offset, _, record_count = self._attempts.get(sub, b"").partition(b"|")
            if record_offset == b"%d" % offset and record_count.isdigit():
                count = int(record_count)  # attempts_of: a record of an earlier head is not it
            if attempt > count:
                count = attempt
                self._attempts[sub] = b"%d|%d" % (offset, count)
        error = error_json.encode()
        if force or count >= max_attempts:
            if exhausted_mode == "b" and not force:
                self._blocked[sub] = failure_record(error, count, now, head)
                self._release(sub)
                return BLOCKED, count
            self._dead_letter_head(sub, error, count, now)
            self._extend(sub, now + lease_ms)
            return DEAD_LETTERED, count
        self._extend(sub, now + lease_ms)
        return RETRY, count

    def _dead_letter_head(self, sub: bytes, error: bytes, attempts: int, now: int) -> None:
        """partition.lua's dead_letter_head: the head item leaves its queue, finished by giving
        up, its failure record kept under its offset."""
        queue = self._queues[sub]
        entry = queue.popleft()
        if not queue:
            del self._queues[sub]
        offset = entry_offset(entry)
        record = failure_record(with_sub_key(error, sub), attempts, now, entry)
        if offset is not None:  # filed under the entry's own digits
            self._dead[entry.partition(b"|")[0]] = record
        else:  # no offset to file it under: the first free "corrupt:<ms>:<n>"
            n = 1
            while b"corrupt:%d:%d" % (now, n) in self._dead:
                n += 1
            self._dead[b"corrupt:%d:%d" % (now, n)] = record
        self._refresh_head(sub)
        if offset is not None:
            self._forget_late([offset])
        self._attempts.pop(sub, None)

    # --- extend_leases.lua -------------------------------------------------------------------

    def extend_leases(self, leases: Sequence[tuple[bytes, int]], lease_ms: int) -> list[int]:
        """0-based indexes of the leases that were lost."""
        deadline = self._now_ms() + lease_ms
        lost = []
        for i, (sub, token) in enumerate(leases):
            if self._holds(sub, token):
                self._extend(sub, deadline)
            else:
                lost.append(i)
        return lost

    # --- offer_watermark.lua and commit_watermark.lua ------------------------------------------

    def offer_watermark(self, with_offsets: bool) -> Offer:
        acked = -1 if self._acked is None else self._acked
        accepted = self._accepted
        low = self._lowest_unfinished()
        finished = len(accepted) if low is None else bisect.bisect_left(accepted, low)
        if finished == 0:
            return Offer(acked, acked, len(accepted), [])
        top = accepted[finished - 1]
        if self._offer is None or self._offer < top:
            self._offer = top
        return Offer(acked, top, len(accepted), accepted[:finished] if with_offsets else [])

    def commit_watermark(self, watermark: int) -> int:
        """Accepted-but-not-acked items left in the partition."""
        if self._acked is None or self._acked < watermark:
            self._acked = watermark
            del self._accepted[: bisect.bisect_right(self._accepted, watermark)]
            for ms in [ms for ms, offset in self._samples.items() if offset <= watermark]:
                del self._samples[ms]
        if self._offer is not None and self._offer <= watermark:
            self._offer = None
        return len(self._accepted)

    # --- the state as Redis holds it ------------------------------------------------------------

    def render(self) -> dict[bytes, tuple[bytes, Any]]:
        """Every key of the partition that exists, as ``(type, value)`` the way redis-py reads
        it: b"string" -> bytes, b"list" -> list[bytes], b"hash" -> dict[bytes, bytes],
        b"zset" -> list[(member, score)] in ZRANGE order (score, then member)."""
        k = self.pkeys
        meta: dict[bytes, bytes] = {}
        for name, value in (
            (b"acked", self._acked),
            (b"offer", self._offer),
            (b"max", self._max),
            (b"token", self._token),
        ):
            if value is not None:
                meta[name] = b"%d" % value
        if self._request is not None:
            meta[b"request"] = self._request
        keys: dict[bytes, tuple[bytes, Any]] = {
            k.meta: (b"hash", meta),
            k.accepted: (b"list", [b"%d" % o for o in self._accepted]),
            k.heads: (b"zset", _zset((sub, float(o)) for sub, o in self._heads.items())),
            k.late: (b"zset", _zset((b"%d" % o, float(o)) for o in self._late)),
            k.ready: (b"list", list(self._ready)),
            k.leases: (b"zset", _zset((sub, float(d)) for sub, d in self._leases.items())),
            k.owners: (b"hash", {sub: b"%d%s" % owner for sub, owner in self._owners.items()}),
            k.attempts: (b"hash", dict(self._attempts)),
            k.blocked: (b"hash", dict(self._blocked)),
            k.dead: (b"hash", dict(self._dead)),
            k.clock: (b"zset", _zset((b"%d" % ms, float(o)) for ms, o in self._samples.items())),
        }
        for sub, queue in self._queues.items():
            keys[k.queue(sub)] = (b"list", list(queue))
        for worker, claim in self._claims.items():
            keys[k.claim_record(worker)] = (b"string", claim.encode())
        return {key: value for key, value in keys.items() if value[1]}  # Redis has no empty key


def _groups(items: Sequence[EncodedItem]) -> dict[bytes, list[bytes]]:
    """Each sub key's entries, in item order (the order of first appearance, as scripts.py
    sends the groups)."""
    groups: dict[bytes, list[bytes]] = {}
    for item in items:
        entries = groups.get(item.sub)
        if entries is None:
            groups[item.sub] = [item.entry]
        else:
            entries.append(item.entry)
    return groups


def _contains(ascending: list[int], value: int) -> bool:
    at = bisect.bisect_left(ascending, value)
    return at < len(ascending) and ascending[at] == value


def _first(queue: deque[bytes], count: int) -> list[bytes]:
    """LRANGE queue 0 count-1."""
    if count >= len(queue):
        return list(queue)
    return [queue[i] for i in range(count)]


def _zset(pairs: Any) -> list[tuple[bytes, float]]:
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))
