"""What the differential tests share (tests/test_embedded_differential.py: the embedded
server's scripts; tests/test_engine_differential.py: PartitionEngine; both against the Lua scripts
on a private redis-server): the scripts behind methods of their names, reading a namespace's keys
and masking what depends on the server's clock, and a state machine with the rules both tests
draw (enqueue, the offer and commit of watermarks, claims, completions of one lease and of
several, completions of a worker holding entries past those it reports, retried completions
carrying more offsets than their applied first call, failures), its lease tracking and the
comparison of the state after every step. Each test's module has what is particular to its
side: how a call goes to both sides and is compared (both()), and the rules only it draws.

What depends on the server's clock is masked before comparing: lease deadlines (the scores of
the leases set), the clock samples' times and the time stamped into failure records. The JSON
of a failure record is compared decoded (cjson writes object keys in Lua's table order).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Protocol, cast

import pytest
import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis.statistics import collector, describe_statistics

from workshaper import codec, scripts
from workshaper.batch import run_one
from workshaper.connection import Backend
from workshaper.keys import NamespaceKeys, PartitionKeys
from workshaper.scripts import Claimed, Completion, EncodedItem, Offer

LEASE_MS = 60_000

#: The sub keys of the machine drawing (its ``subs``: each test has its own).
sub_keys = st.runner().flatmap(lambda machine: st.sampled_from(machine.subs))
offsets = st.integers(min_value=0, max_value=40)
item_lists = st.lists(st.tuples(sub_keys, offsets), min_size=1, max_size=8)
#: A stale token (a leaseholder that lost its lease) one call in five.
stale_tokens = st.integers(0, 4).map(lambda x: x == 0)
modes = st.sampled_from(["d", "b"])
actions = st.sampled_from(["k", "c", "y", "r"])
#: Entries a worker holds past the ones it reports (a lanes worker; 0, today's, the most often).
holds = st.sampled_from([0, 0, 0, 1, 2, 3])
acks = st.sampled_from(["none", "offer", "commit"])


def dump(client: redis.Redis, pkeys: PartitionKeys, pattern: str) -> dict[bytes, Any]:
    """Every key matching ``pattern``: its type and value, clock-dependent parts masked."""
    return masked(pkeys, read_keys(client, pattern))


def read_keys(client: redis.Redis, pattern: str) -> dict[bytes, tuple[bytes, Any]]:
    """Every key matching ``pattern``: its type and value as redis-py reads it (a set's
    members sorted, a sorted set's (member, score) pairs in ZRANGE order)."""
    state: dict[bytes, tuple[bytes, Any]] = {}
    for key in sorted(client.scan_iter(match=pattern, count=1000)):
        kind: Any = client.type(key)  # bytes: the client does not decode responses
        value: Any
        if kind == b"string":
            value = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        state[key] = (kind, value)
    return state


def masked(pkeys: PartitionKeys, state: dict[bytes, tuple[bytes, Any]]) -> dict[bytes, Any]:
    """``state`` (as read_keys reads it) with the clock-dependent parts of each value masked."""
    return {key: (kind, _mask(pkeys, key, kind, value)) for key, (kind, value) in state.items()}


def _mask(pkeys: PartitionKeys, key: bytes, kind: bytes, value: Any) -> Any:
    """What of a key's value (as redis-py reads it) is compared: its clock-dependent parts
    masked."""
    if kind == b"hash" and key in (pkeys.dead, pkeys.blocked):
        return _mask_failures(value)
    if kind == b"zset" and key == pkeys.leases:  # deadlines are server time + lease: members only
        return sorted(m for m, _ in value)
    if kind == b"zset" and key == pkeys.clock:  # server ms -> offset: the offsets only
        return sorted(score for _, score in value)
    return value


def _mask_failures(records: dict[bytes, bytes]) -> Any:
    """Failure records by field; corrupt entries (no offset) are filed under
    "corrupt:<server ms>:<n>": those are compared as a collection, without their field."""
    named = {f: _mask_failure(v) for f, v in records.items() if not f.startswith(b"corrupt:")}
    corrupt = sorted(
        repr(_mask_failure(v)) for f, v in records.items() if f.startswith(b"corrupt:")
    )
    return named, corrupt


def _mask_failure(record: bytes) -> Any:
    """A failure record is error JSON, attempts, server ms and the entry, one per line."""
    error_json, attempts, _now, entry = record.split(b"\n", 3)
    return (json.dumps(json.loads(error_json), sort_keys=True), attempts, entry)


def entry_offsets(entries: list[bytes]) -> list[int]:
    """The offsets of a lease's entries, up to the first corrupt one."""
    done: list[int] = []
    for entry in entries:
        try:
            done.append(codec.parse_entry(entry).offset)
        except codec.CorruptEntry:
            break
    return done


def outcome(reply: Any) -> str:
    """A coarse label of a reply, for coverage statistics."""
    if isinstance(reply, list) and reply and isinstance(reply[0], int):
        return "statuses " + ",".join(sorted({str(x) for x in reply}))
    if isinstance(reply, list) and reply and isinstance(reply[0], scripts.CompletionReply):
        return f"code {reply[0].code}"
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[1], list):
        return f"{min(len(reply[1]), 2)}+ leases"
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
        return f"code {reply[0]}"
    if isinstance(reply, scripts.Offer):
        return "advances" if reply.advances else "no advance"
    return type(reply).__name__ if not isinstance(reply, int | bool) else str(reply)


def encode_items(items: list[tuple[Any, int]]) -> list[EncodedItem]:
    """(sub key, offset) pairs as the producer sends them, message "m<offset>"."""
    return [
        EncodedItem(
            codec.encode_sub_key(sub, off),
            off,
            codec.make_entry(off, codec.encode_message(f"m{off}", 100)),
        )
        for sub, off in items
    ]


def held_for(hold: int, action: str, batch_size: int) -> int:
    """The held count a worker sends: above 0 only when keeping or continuing, within a
    batch."""
    return min(hold, batch_size) if action in ("k", "c") else 0


def is_error(reply: Any) -> bool:
    """An error answered by a call, as both() records it: ("error", the exception's type)."""
    return isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "error"


class ScriptsPartition:
    """Partition 0 of a namespace on a backend (the private redis-server, or the embedded
    server), behind PartitionEngine's methods: each operation is the typed call of scripts.py of
    the same name, in a batch of its own (``operations``: those allowed, when not all)."""

    operations: Collection[str] | None = None

    def __init__(
        self, backend: Backend, namespace: str, operations: Collection[str] | None = None
    ) -> None:
        self.backend = backend
        self.pkeys = NamespaceKeys(namespace).partition(0)
        # The whole namespace, not the partition alone: a write outside it shows up too.
        self.pattern = f"ws:{{{namespace}*"
        self.operations = operations

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or (self.operations is not None and name not in self.operations):
            raise AttributeError(name)
        typed = getattr(scripts, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return run_one(self.backend, lambda batch: typed(batch, self.pkeys, *args, **kwargs))

        return call

    def render(self) -> dict[bytes, tuple[bytes, Any]]:
        """The keys as PartitionEngine.render() gives them (unmasked)."""
        return read_keys(self.backend.client, self.pattern)

    # The client does not decode responses: its replies are bytes (the casts say so to mypy).

    def head(self, sub: bytes) -> bytes | None:
        return cast("bytes | None", self.backend.client.lindex(self.pkeys.queue(sub), 0))

    def entries(self, sub: bytes, count: int) -> list[bytes]:
        """The first ``count`` entries of the sub key's queue."""
        return cast("list[bytes]", self.backend.client.lrange(self.pkeys.queue(sub), 0, count - 1))

    def highest(self) -> int:
        """The highest accepted offset (-1: none), as the producer last saw it accepted."""
        value = cast("bytes | None", self.backend.client.hget(self.pkeys.meta, "max"))
        return -1 if value is None else int(value)

    def latest_clock_sample(self) -> int | None:
        """The server millisecond of the newest clock sample left, if any."""
        members = cast("list[bytes]", self.backend.client.zrange(self.pkeys.clock, 0, -1))
        return max((int(m) for m in members), default=None)

    def server_ms(self) -> int:
        seconds, micros = self.backend.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def close(self) -> None:
        keys = list(self.backend.client.scan_iter(match=self.pattern, count=1000))
        if keys:
            self.backend.client.delete(*keys)
        self.backend.close()


class Rendered(Protocol):
    """The side compared with the server: its keys, as read_keys reads them."""

    def render(self) -> dict[bytes, tuple[bytes, Any]]: ...


class PartitionDifferential(RuleBasedStateMachine):
    """The rules both differential tests draw, on ``real`` (the scripts on the private
    redis-server) and ``tested``, compared by the subclass's both() call by call and by
    same_state() after every step."""

    #: The sub keys the rules draw.
    subs: ClassVar[tuple[str | None, ...]]
    tested: Rendered

    def __init__(self, real: ScriptsPartition) -> None:
        super().__init__()
        self.real = real
        self.pkeys = real.pkeys
        self.leases: dict[bytes, tuple[int, bool]] = {}  # sub -> (token, exact), as claimed
        #: sub -> the offsets its lease was handed (by its claim, then by each continue)
        self.handed: dict[bytes, list[int]] = {}
        self.requests: dict[str, int] = {}  # per stream of request ids: the last one's number

    def both(self, what: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """``name`` with the same arguments on both sides: the server's reply, checked against
        the other side's (an error reply: as is_error() knows it)."""
        raise NotImplementedError

    def _request(self, stream: str, repeat: bool) -> str:
        """A new request id of ``stream`` (the partition's producer, a worker), or with
        ``repeat`` its last one again (a re-sent round trip)."""
        number = self.requests.get(stream, 0)
        if not repeat or number == 0:
            number = self.requests[stream] = number + 1
        return f"{stream}:{number}"

    # --- producer ---------------------------------------------------------------------------

    @rule(items=item_lists, max_in_queue=st.sampled_from([3, 8, 100]), repeat=st.booleans())
    def enqueue(self, items: list[tuple[Any, int]], max_in_queue: int, repeat: bool) -> None:
        rid = self._request("enqueue", repeat)
        self.both("enqueue", "enqueue_items", encode_items(items), max_in_queue, rid)

    @rule(with_offsets=st.booleans(), commit=st.booleans(), resend=st.booleans())
    def offer_and_commit(self, with_offsets: bool, commit: bool, resend: bool) -> None:
        """A watermark offered and, if it advances, committed (or not yet: its ack still runs,
        and enqueue answers "being acked", 4, for the offsets it covers)."""
        offer = self.both("offer", "offer_watermark", with_offsets)
        if commit and isinstance(offer, Offer) and offer.advances:
            self.both("commit", "commit_watermark", offer.watermark)
            if resend:  # the commit's round trip again: the watermark is already there
                self.both("commit again", "commit_watermark", offer.watermark)

    def _ack(self, ack: str) -> None:
        """The ack loop's turn after a completion ("none", "offer" or "commit"; offsets asked
        for when committing): without it watermarks would seldom move in a sequence
        (offer_and_commit is one rule of many)."""
        if ack != "none":
            commit = ack == "commit"
            self.offer_and_commit(with_offsets=commit, commit=commit, resend=False)

    # --- worker -----------------------------------------------------------------------------

    @rule(
        n=st.integers(1, 3),
        worker=st.sampled_from(["w1", "w2"]),
        batch_size=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=modes,
        repeat=st.booleans(),
    )
    def claim(
        self, n: int, worker: str, batch_size: int, max_attempts: int, mode: str, repeat: bool
    ) -> None:
        self._claim("claim", n, worker, batch_size, max_attempts, mode, repeat)

    def _claim(
        self,
        what: str,
        n: int,
        worker: str,
        batch_size: int,
        max_attempts: int,
        mode: str,
        repeat: bool = False,
    ) -> list[Claimed]:
        """Claim and track the leases: the claim's leases."""
        reply = self.both(
            what,
            "claim_sub_keys",
            worker_id=worker,
            request_id=self._request(worker, repeat),
            max_leases=n,
            lease_ms=LEASE_MS,
            batch_size=batch_size,
            max_attempts=max_attempts,
            exhausted_mode=mode,
        )
        if is_error(reply):
            return []
        claims: list[Claimed] = reply[1]
        for claimed in claims:
            self.leases[claimed.sub] = (claimed.token, claimed.exact > 0)
            self.handed[claimed.sub] = entry_offsets(claimed.entries)
            if claimed.attempts_record:
                event("claim: a head item with attempts")
        return claims

    def _lease(self, pick: int) -> tuple[bytes, int, bool]:
        subs = sorted(self.leases)
        sub = subs[pick % len(subs)]
        token, exact = self.leases[sub]
        return sub, token, exact

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        count=st.integers(0, 3),
        action=actions,
        stale=stale_tokens,
        batch_size=st.integers(1, 3),
        ack=acks,
        hold=holds,
    )
    def complete(
        self,
        pick: int,
        count: int,
        action: str,
        stale: bool,
        batch_size: int,
        ack: str,
        hold: int,
    ) -> None:
        """One lease: the offsets at the head of its queue now (what its holder finished), and
        sometimes entries it holds past them."""
        sub, token, exact = self._lease(pick)
        done = entry_offsets(self.real.entries(sub, count))
        held = held_for(hold, action, batch_size)
        completion = Completion(sub, token - 1 if stale else token, action, done, exact, held)
        replies = self.both(
            "complete",
            "complete_items",
            [completion],
            lease_ms=LEASE_MS,
            batch_size=batch_size,
        )
        self._completed([completion], replies, [stale])
        self._ack(ack)

    @precondition(lambda self: self.leases)
    @rule(
        picks=st.lists(
            st.tuples(st.integers(0, 10), st.integers(0, 4), actions, holds),
            min_size=1,
            max_size=4,
        ),
        stale=st.lists(stale_tokens, min_size=4, max_size=4),
        batch_size=st.integers(1, 3),
        ack=acks,
    )
    def complete_many(
        self,
        picks: list[tuple[int, int, str, int]],
        stale: list[bool],
        batch_size: int,
        ack: str,
    ) -> None:
        """One call for several leases of the partition, as the worker sends them: each its
        own action and the offsets it was handed (a prefix, as it finished them), sometimes
        with entries it holds past them, some fenced."""
        subs = sorted(self.leases)
        start = picks[0][0]
        completions: list[Completion] = []
        stales: list[bool] = []
        # Distinct sub keys (one entry per lease in a call): consecutive ones from `start`.
        for i, ((_, count, action, hold), is_stale) in enumerate(
            zip(picks[: len(subs)], stale, strict=False)
        ):
            sub = subs[(start + i) % len(subs)]
            token, exact = self.leases[sub]
            handed = self.handed.get(sub, [])
            done = handed[:count]
            # What it holds: at most what it was handed past the finished ones.
            held = min(held_for(hold, action, batch_size), len(handed[count:]))
            completions.append(
                Completion(sub, token - 1 if is_stale else token, action, done, exact, held)
            )
            stales.append(is_stale)
        replies = self.both(
            f"complete {len(completions)} leases",
            "complete_items",
            completions,
            lease_ms=LEASE_MS,
            batch_size=batch_size,
        )
        if len(completions) > 1 and not is_error(replies):
            codes = ",".join(sorted({str(r.code) for r in replies}))
            written = sum(r.finished > 0 for r in replies)
            event(f"complete_many: {len(completions)} leases, codes {codes}")
            event(f"complete_many: {min(written, 2)}+ leases finished items")
            if len({c.action for c in completions}) > 1:
                event("complete_many: mixed actions")
        self._completed(completions, replies, stales)
        self._ack(ack)

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        count=st.integers(0, 3),
        hold=st.integers(1, 3),
        action=st.sampled_from(["c", "c", "k"]),
        batch_size=st.integers(1, 3),
        ack=acks,
    )
    def complete_holding(
        self, pick: int, count: int, hold: int, action: str, batch_size: int, ack: str
    ) -> None:
        """A worker that holds a window of its lease's entries and finishes them out of order:
        the first ``count`` at the head finished (reported), the next ones (up to ``hold``,
        within a batch) held, and it reads on past them ("c") or keeps its lease ("k")."""
        sub, token, exact = self._lease(pick)
        window = entry_offsets(self.real.entries(sub, count + hold))
        done = window[:count]
        held = min(hold, batch_size, len(window) - len(done))
        completion = Completion(sub, token, action, done, exact, held)
        replies = self.both(
            "complete holding", "complete_items", [completion], lease_ms=LEASE_MS,
            batch_size=batch_size,
        )  # fmt: skip
        self._completed([completion], replies, [False])
        self._ack(ack)

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        first=st.integers(1, 2),
        more=st.integers(1, 2),
        action=actions,
        batch_size=st.integers(1, 3),
        hold=holds,
    )
    def complete_retried(
        self, pick: int, first: int, more: int, action: str, batch_size: int, hold: int
    ) -> None:
        """A completion applied but its reply lost, sent again rebuilt from the worker's state,
        by when more of what the lease was handed finished: the retry carries more offsets
        than the call applied (those were taken off the head already), sometimes with entries
        held past them."""
        sub, token, exact = self._lease(pick)
        done = entry_offsets(self.real.entries(sub, first + more))
        applied = Completion(sub, token, "k", done[:first], exact)
        self.both("complete, reply lost", "complete_items", [applied], lease_ms=LEASE_MS,
                  batch_size=batch_size)  # fmt: skip
        held = held_for(hold, action, batch_size)
        retried = Completion(sub, token, action, done, exact, held)
        replies = self.both(
            "complete retried", "complete_items", [retried], lease_ms=LEASE_MS,
            batch_size=batch_size,
        )  # fmt: skip
        if not is_error(replies) and replies[0].code != -1 and len(retried.offsets) > first:
            event(f"complete retried: finished {min(replies[0].finished, 2)}")
        self._completed([retried], replies, [False])

    def _completed(self, completions: list[Completion], replies: Any, stales: list[bool]) -> None:
        """Track each lease after a completion call: released, or what it holds now."""
        if is_error(replies):
            return
        for completion, reply, is_stale in zip(completions, replies, stales, strict=True):
            if is_stale or reply.code == -1:
                continue
            if completion.action == "y":  # gave way (others waiting) or went on
                event(f"yield: {'gave way' if reply.requeued else f'code {reply.code}'}")
            sub = completion.sub
            if reply.code == 2:
                self.leases.pop(sub, None)
                self.handed.pop(sub, None)
            elif completion.held and completion.action == "c":
                # It holds entries past the finished ones, and reads on after them.
                event(f"continue holding entries: handed {min(len(reply.next_entries), 2)}")
                kept = self.handed.get(sub, [])[reply.finished :][: completion.held]
                self.handed[sub] = kept + entry_offsets(reply.next_entries)
            elif reply.next_entries:
                self.handed[sub] = entry_offsets(reply.next_entries)
                if reply.attempts_record:
                    event("continue: a head item with attempts")
            else:
                self.handed[sub] = self.handed.get(sub, [])[reply.finished :]

    @precondition(lambda self: self.leases)
    @rule(
        pick=st.integers(0, 10),
        attempt=st.integers(1, 3),
        max_attempts=st.integers(1, 3),
        mode=modes,
        force=st.booleans(),
        stale=stale_tokens,
    )
    def fail(
        self, pick: int, attempt: int, max_attempts: int, mode: str, force: bool, stale: bool
    ) -> None:
        """The head item of a lease failed (a blocked sub key's lease is kept here on purpose:
        its holder does not know yet, and its next calls must be fenced)."""
        sub, token, _ = self._lease(pick)
        self._fail(sub, token - 1 if stale else token, attempt, max_attempts, mode, force)

    def _fail(
        self, sub: bytes, token: int, attempt: int, max_attempts: int, mode: str, force: bool
    ) -> Any:
        """The head item of ``sub`` (as the server has it) failed: the reply, or None when
        there is no item to fail."""
        head = self.real.head(sub)
        if head is None:
            return None
        try:
            offset: int | None = codec.parse_entry(head).offset
        except codec.CorruptEntry:  # a corrupt head (test_embedded_differential's corrupt_head)
            offset = None
        return self.both(
            "fail",
            "fail_item",
            sub=sub,
            token=token,
            head_prefix=codec.head_prefix(head),
            offset=offset,
            attempt=attempt,
            max_attempts=max_attempts,
            exhausted_mode=mode,
            force=force,
            error_json='{"type":"Boom","message":"x/y"}',
            lease_ms=LEASE_MS,
        )

    # --- the whole state ------------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert masked(self.pkeys, self.tested.render()) == masked(self.pkeys, self.real.render())

    def teardown(self) -> None:
        self.real.close()


def run_machine(
    machine: Callable[[], PartitionDifferential], examples: int, steps: int, node: pytest.Item
) -> None:
    """``examples`` sequences of ``steps`` steps of the machine, seeded."""

    # The state machine runs inside a plain test: hand its events to the pytest item, so that
    # --hypothesis-show-statistics lists what the sequences covered.
    def note(stats: Any) -> None:
        stats["nodeid"] = node.nodeid
        node.hypothesis_statistics = describe_statistics(stats)  # type: ignore[attr-defined]

    # Both take what their annotations do not say: a callable, and a factory of the machine.
    with collector.with_value(note):  # type: ignore[arg-type]
        run_state_machine_as_test(
            machine,  # type: ignore[arg-type]
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                derandomize=True,  # seeded: the same sequences on every run
                database=None,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
