"""Commit tracking: what each owned partition enqueued, what finished, what was committed.

The producers' ack loops call ``on_recorded`` (once a watermark is recorded in Redis) from
their own threads; everything else runs in the poll thread. All state is guarded by
``cond``; only the poll thread changes ``owned``, so it may read it without the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from workshaper.kafka.options import DRAIN_CHECK, TP, names

log = logging.getLogger(__name__)


class OffsetTracker:
    """Per (topic, partition): the highest offset enqueued, the finished watermark, the next
    offset to commit (watermark + 1) and the last offset committed."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.cond = threading.Condition()
        self.owned: set[TP] = set()
        self._stats = stats
        self._targets: dict[TP, int] = {}  # highest offset enqueued that must be acked
        self._acked: dict[TP, int] = {}  # highest watermark known finished
        self._to_commit: dict[TP, int] = {}  # next offset to commit (watermark + 1)
        self._committed: dict[TP, int] = {}  # last offset this bridge committed
        self._first: dict[TP, int] = {}  # first offset consumed since the assignment
        self._inflight: dict[TP, int] = {}  # offset of a commit sent and not answered yet
        #: The highest offset the broker confirmed per partition, kept after a release: stop
        #: reads it to know whether its last commits went through.
        self._confirmed: dict[TP, int] = {}

    # --- ownership ---------------------------------------------------------------------------

    def own(self, tps: set[TP]) -> None:
        """Start tracking ``tps`` afresh (consumption restarts from the committed offset)."""
        with self.cond:
            self._forget(tps)
            self.owned |= tps

    def disown(self, tps: set[TP]) -> None:
        """Stop tracking ``tps``: later acks of them are skipped."""
        with self.cond:
            self.owned -= tps
            self._forget(tps)

    def _forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            for state in (
                self._targets,
                self._acked,
                self._to_commit,
                self._committed,
                self._first,
            ):
                state.pop(tp, None)

    def committed(self) -> dict[TP, int]:
        """The offsets committed for the partitions owned now."""
        with self.cond:
            return {tp: o for tp, o in self._committed.items() if tp in self.owned}

    # --- enqueues and acks -------------------------------------------------------------------

    def consumed(self, tp: TP, offset: int) -> None:
        """A record of ``tp`` was consumed (poll thread)."""
        with self.cond:
            self._first.setdefault(tp, offset)

    def restart_offset(self, tp: TP) -> int | None:
        """Where to consume ``tp`` from again so that no record past the last commit is
        skipped: the last offset committed, else the first offset consumed."""
        with self.cond:
            return self._committed.get(tp, self._first.get(tp))

    def enqueued(self, tp: TP, offset: int) -> None:
        """``offset`` was enqueued (or found in flight) and must be acked (caller holds cond)."""
        if offset > self._targets.get(tp, -1):
            self._targets[tp] = offset

    def finished(self, tp: TP, watermark: int) -> None:
        """Every record of ``tp`` at or below ``watermark`` finished (caller holds cond)."""
        if watermark > self._acked.get(tp, -1):
            self._acked[tp] = watermark
        if watermark + 1 > self._to_commit.get(tp, -1):
            self._to_commit[tp] = watermark + 1
        self.cond.notify_all()

    def on_recorded(self, topic: str, partition: int, watermark: int) -> None:
        """The producers' ``recorded`` callback (their ack-loop threads): ``watermark`` is the
        acked watermark in Redis now; remember ``watermark + 1`` to commit."""
        tp = (topic, partition)
        with self.cond:
            if tp not in self.owned:
                self._stats["skipped_commits"] += 1
                log.debug("%s[%d]: ack %d after revoke: not committed", topic, partition, watermark)
                return
            self.finished(tp, watermark)

    def behind(self, tps: Iterable[TP]) -> set[TP]:
        """The partitions of ``tps`` with enqueued records not acked yet."""
        with self.cond:
            return {tp for tp in tps if self._acked.get(tp, -1) < self._targets.get(tp, -1)}

    def wait_acked(
        self, tps: set[TP], deadline: float, reconcile: Callable[[set[TP]], None]
    ) -> bool:
        """Wait until every enqueued record of ``tps`` is acked; False at ``deadline``.
        ``reconcile`` reads acks made elsewhere, every DRAIN_CHECK seconds."""
        while True:
            with self.cond:
                behind = {tp for tp in tps if self._acked.get(tp, -1) < self._targets.get(tp, -1)}
                remaining = deadline - time.monotonic()
                if not behind:
                    return True
                if remaining <= 0:
                    log.warning(
                        "%s: records still running; they stay uncommitted and the next owner"
                        " gets them back as duplicates (not run again)",
                        names(behind),
                    )
                    return False
                self.cond.wait(min(remaining, DRAIN_CHECK))
            reconcile(behind)

    # --- commits -----------------------------------------------------------------------------

    def commit(self, consumer: Consumer, tps: Iterable[TP]) -> dict[TP, int]:
        """Send an asynchronous commit of what the acks allow, for owned partitions only;
        returns the offsets it covers (or that are in flight already). Asynchronous, so an
        unreachable broker never blocks the poll thread (or a revoke, or stop); ``on_commit``
        gets the result inside a later poll."""
        with self.cond:
            wanted = {
                tp: self._to_commit[tp]
                for tp in tps
                if tp in self.owned and self._to_commit.get(tp, -1) > self._committed.get(tp, -1)
            }
            due = {tp: o for tp, o in wanted.items() if o > self._inflight.get(tp, -1)}
        if not due:
            return wanted
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in due.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.warning("committing %d partition(s) failed (%s); retrying", len(due), exc)
            return wanted
        with self.cond:
            self._inflight.update(due)
        return wanted

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit result (served inside a poll of the poll thread)."""
        failed = 0
        with self.cond:
            for tpo in partitions:
                tp = (tpo.topic, tpo.partition)
                if self._inflight.get(tp, -1) <= tpo.offset:
                    self._inflight.pop(tp, None)
                problem = tpo.error or error
                if problem is not None:
                    failed += 1
                    log.warning("%s[%d]: commit failed: %s", tp[0], tp[1], problem)
                    continue
                if tp in self.owned and tpo.offset > self._committed.get(tp, -1):
                    self._committed[tp] = tpo.offset
                if tpo.offset > self._confirmed.get(tp, -1):
                    self._confirmed[tp] = tpo.offset
            self._stats["commit_failures" if failed else "commits"] += 1
            self.cond.notify_all()

    def confirmed(self, wanted: dict[TP, int]) -> bool:
        """Whether the broker confirmed a commit of each ``wanted`` offset (or a later one)."""
        with self.cond:
            return all(self._confirmed.get(tp, -1) >= o for tp, o in wanted.items())

    def in_flight(self) -> bool:
        with self.cond:
            return bool(self._inflight)
