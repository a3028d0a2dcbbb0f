"""Rebalances: assign, revoke and lost callbacks, and the release of partitions (also at stop).

On revoke the bridge stops enqueueing those partitions (their backlog is dropped: it was never
written, and nothing past it was committed), waits up to ``revoke_timeout`` seconds for their
enqueued records to be acked, commits, and only then drops ownership; an ack that arrives later
is skipped. A topic's producer is closed once the bridge owns none of its partitions, so its
ack loop stops with it. On assign, consumption starts from the committed offset; re-delivered
records that are in flight or finished come back DUPLICATE or ALREADY_ACKED and are not run
again. The callbacks run in the poll thread, inside ``consumer.consume``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from workshaper.kafka.intake import Intake
from workshaper.kafka.offsets import OffsetTracker
from workshaper.kafka.options import TP, names

log = logging.getLogger(__name__)


class Rebalancer:
    def __init__(self, intake: Intake, tracker: OffsetTracker, revoke_timeout: float) -> None:
        self._intake = intake
        self._tracker = tracker
        self.revoke_timeout = revoke_timeout
        #: Offsets the releases committed (sent, asynchronously): stop waits for the broker's
        #: answer to them before it reports a clean stop.
        self.sent: dict[TP, int] = {}

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        self._intake.open_producers(t for t, _ in tps)
        self._tracker.own(tps)
        log.info("assigned %s", names(tps))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions} & self._tracker.owned
        if tps:
            log.info("revoked %s: draining for up to %.1fs", names(tps), self.revoke_timeout)
            self.release(consumer, tps, drain=True, timeout=self.revoke_timeout)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions} & self._tracker.owned
        if tps:
            log.warning("lost %s (another member may own them): no commit", names(tps))
            self.release(consumer, tps, drain=False, timeout=0.0)

    def release(self, consumer: Consumer, tps: set[TP], *, drain: bool, timeout: float) -> bool:
        """Stop enqueueing ``tps``; if ``drain``, wait up to ``timeout`` for their records to
        be acked and send the commit of them; then drop ownership, so later acks are skipped.
        True when every enqueued record of ``tps`` was acked (the commit is asynchronous:
        ``sent`` keeps its offsets)."""
        tracker = self._tracker
        self._intake.drop(consumer, tps)
        done = not drain
        deadline = time.monotonic() + timeout
        if drain:
            done = tracker.wait_acked(tps, deadline, self.reconcile)
            self.sent.update(tracker.commit(consumer, tps))
        tracker.disown(tps)
        with tracker.cond:
            owned_topics = {t for t, _ in tracker.owned}
        closed = self._intake.close_producers(owned_topics, max(0.0, deadline - time.monotonic()))
        return done and closed

    def reconcile(self, tps: Iterable[TP]) -> None:
        """Take acks another process made: a partition's records may have been acked in Redis
        by a previous owner's producer (cooperative rebalances keep it open), which never
        calls our ``recorded``. For each partition with records not known acked, read the
        acked watermark from Redis (one read each, per commit tick; each partition on its own,
        so a busy sibling does not hold back an idle one)."""
        for t, partition in sorted(self._tracker.behind(tps)):
            producer = self._intake.producers.get(t)
            if producer is None:
                continue
            try:
                watermark = producer.watermark(partition)
            except Exception as exc:  # Redis down: the others would fail too; next tick
                log.warning("%s[%d]: reading the watermark failed: %s", t, partition, exc)
                return
            if watermark is not None:
                self._tracker.on_recorded(t, partition, watermark)
