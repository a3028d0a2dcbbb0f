"""Records into WorkShaper: one ``enqueue_many`` per topic and batch, a backlog and a paused
partition for what a full partition did not take, the producers of the owned topics.

Enqueue never blocks the poll thread (``timeout=0``): the records of a full partition that did
not fit stay in a local backlog, that partition alone is paused (``consumer.pause``), the
backlog is offered again every ``BACKLOG_RETRY`` seconds, and the partition is resumed once its
backlog is written. The consumer keeps polling, so ``max.poll.interval.ms`` is never at risk
and the other partitions go on. Everything here runs in the poll thread.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from workshaper import codec
from workshaper.errors import (
    BackendUnavailable,
    InvalidInput,
    QueueFull,
    RedisLostWrites,
    RedisOutOfMemory,
)
from workshaper.kafka.offsets import OffsetTracker
from workshaper.kafka.options import BACKLOG_RETRY, REDIS_RETRY, TP, MessageFn, SubKeyFn, coords
from workshaper.keys import NamespaceKeys
from workshaper.producer import Enqueued, Producer

log = logging.getLogger(__name__)


class Intake:
    def __init__(
        self,
        redis: Any,
        namespaces: dict[str, str],
        tracker: OffsetTracker,
        stats: dict[str, int],
        *,
        sub_key: SubKeyFn,
        message: MessageFn,
        max_in_queue: int,
        max_message_bytes: int,
        lanes: int | None = None,
    ) -> None:
        self._redis = redis
        self.lanes = lanes
        self._namespaces = namespaces
        self._tracker = tracker
        self._stats = stats
        self._sub_key = sub_key
        self._message = message
        self.max_in_queue = max_in_queue
        self.max_message_bytes = max_message_bytes
        self.producers: dict[str, Producer] = {}
        self.backlog: dict[TP, deque[Message]] = {}
        #: Partitions paused because their queue is full; changed by the poll thread only,
        #: under the tracker's lock (``KafkaBridge.paused()`` reads it from other threads).
        self.paused: set[TP] = set()
        self._next_retry = 0.0

    # --- producers ---------------------------------------------------------------------------

    def open_producers(self, topics: Iterable[str]) -> None:
        """A producer for each of ``topics`` that has none. It has no ``ack``: its ack loop
        records each watermark in Redis first and then tells the tracker (``recorded``), so
        a Kafka commit never runs ahead of the acked watermark in Redis. Were it the other
        way round, a Redis crash between the two would leave finished items counted against
        ``max_in_queue`` behind a Kafka offset no record will come back from."""
        for topic in sorted(set(topics) - set(self.producers)):
            try:
                self.producers[topic] = Producer(
                    self._redis,
                    self._namespaces[topic],
                    max_in_queue=self.max_in_queue,
                    recorded=partial(self._tracker.on_recorded, topic),
                    max_message_bytes=self.max_message_bytes,
                    lanes=self.lanes,
                )
            except BackendUnavailable as exc:
                # Runs inside a rebalance callback: raising would end the bridge. The topic's
                # records wait in the backlog (partitions paused) until a producer opens.
                log.warning("topic %r: %s; its records wait until Redis is back", topic, exc)
                self._next_retry = time.monotonic() + REDIS_RETRY

    def close_producers(self, keep: set[str], timeout: float) -> bool:
        """Close the producers of topics not in ``keep``: their ack loops end with them, so
        no acks arrive for work another member owns now. False when a producer was left
        with a watermark it could not record in Redis within ``timeout``."""
        ok = True
        for topic in [t for t in self.producers if t not in keep]:
            ok = self.producers.pop(topic).close(timeout) and ok
        return ok

    # --- records -----------------------------------------------------------------------------

    def handle(self, consumer: Consumer, messages: list[Message]) -> None:
        by_topic: dict[str, list[Message]] = {}
        owned = self._tracker.owned
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._consumer_error(error)
                continue
            topic, partition, offset = coords(msg)
            tp = (topic, partition)
            if tp not in owned:
                continue  # revoked inside this poll: the next owner gets it from Kafka
            self._stats["records"] += 1
            self._tracker.consumed(tp, offset)
            backlog = self.backlog.get(tp)
            if backlog is not None:
                backlog.append(msg)  # behind records that did not fit yet: keep the order
            else:
                by_topic.setdefault(topic, []).append(msg)
        for topic, batch in by_topic.items():
            self._send(consumer, topic, batch)

    @staticmethod
    def _consumer_error(error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise KafkaException(error)
        log.warning("kafka consumer error: %s", error)

    def _item(self, msg: Message) -> tuple[codec.SubKey, Any, int, int]:
        topic, partition, offset = coords(msg)
        try:
            return self._sub_key(msg), self._message(msg), partition, offset
        except Exception as exc:
            exc.add_note(f"while mapping record {topic}[{partition}] offset {offset}")
            raise

    def _send(self, consumer: Consumer, topic: str, batch: list[Message]) -> None:
        """One enqueue_many for the batch; what a full partition did not take, or what could
        not be written while Redis is unreachable, is backlogged (its partition paused)."""
        items = [self._item(msg) for msg in batch]
        statuses: list[object]
        if topic not in self.producers:
            self.open_producers([topic])
        producer = self.producers.get(topic)
        try:
            if producer is None:
                raise BackendUnavailable(f"no producer for topic {topic!r} yet")
            statuses = list(producer.enqueue_many(items, timeout=0))
        except QueueFull as exc:
            statuses = list(exc.statuses)
        except RedisLostWrites as exc:
            statuses = list(exc.statuses)
            statuses += [None] * (len(batch) - len(statuses))
            lost = {(topic, p) for p in exc.partitions}
            self._rewind(consumer, lost)
            kept = [i for i, msg in enumerate(batch) if coords(msg)[:2] not in lost]
            batch = [batch[i] for i in kept]
            statuses = [statuses[i] for i in kept]
        except RedisOutOfMemory as exc:  # what was written stays; the rest waits for memory
            log.warning("topic %r: %s; pausing and retrying", topic, exc)
            statuses = list(exc.statuses)
            statuses += [None] * (len(batch) - len(statuses))
            self._next_retry = time.monotonic() + REDIS_RETRY
        except (BackendUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
            # Never fatal: an outage of any length pauses these partitions, then resumes.
            log.warning("topic %r: %s; pausing and retrying %d record(s)", topic, exc, len(batch))
            statuses = [None] * len(batch)
            self._next_retry = time.monotonic() + REDIS_RETRY
        except InvalidInput:
            # Nothing was written: dead-letter what WorkShaper refuses, send the rest again.
            assert producer is not None
            self._send_refusing(consumer, producer, topic, batch, items)
            return
        self._record(consumer, batch, statuses)

    def _send_refusing(
        self,
        consumer: Consumer,
        producer: Producer,
        topic: str,
        batch: list[Message],
        items: list[tuple[codec.SubKey, Any, int, int]],
    ) -> None:
        """A batch enqueue_many refused: the records WorkShaper cannot take (a message over
        ``max_message_bytes``, a value it cannot encode) become dead letters, so one bad
        record neither stops the bridge nor holds back the records around it."""
        refused: dict[int, InvalidInput] = {}
        for index, (sub, value, partition, offset) in enumerate(items):
            try:
                codec.encode_item(sub, value, partition, offset, self.max_message_bytes)
            except InvalidInput as bad:
                refused[index] = bad
        if not refused:  # pragma: no cover - enqueue_many refused what encode_item takes
            raise InvalidInput(f"topic {topic!r}: a batch was refused; no record is to blame")
        try:
            self._dead_letter(
                producer, topic, [(batch[i], items[i], e) for i, e in refused.items()]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("topic %r: dead-lettering failed (%s); pausing and retrying", topic, exc)
            self._next_retry = time.monotonic() + REDIS_RETRY
            self._record(consumer, batch, [None] * len(batch))
            return
        rest = [msg for i, msg in enumerate(batch) if i not in refused]
        if rest:
            self._send(consumer, topic, rest)

    def _dead_letter(
        self,
        producer: Producer,
        topic: str,
        refused: list[tuple[Message, tuple[codec.SubKey, Any, int, int], InvalidInput]],
    ) -> None:
        """Write each refused record as a dead letter of its partition (field: its offset),
        in the workers' format: the reason, the offset and the record key, not the payload
        (it is what could not be stored). Its offset is never accepted, so the watermark and
        the Kafka commit pass it once the records around it finish."""
        keys = NamespaceKeys(self._namespaces[topic])
        now_ms = int(time.time() * 1000)
        pipe = producer.backend.client.pipeline(transaction=False)
        for msg, (sub, _, partition, offset), error in refused:
            key = msg.key()
            key_hex = key.hex() if isinstance(key, bytes) else None
            try:
                sub_hex: str | None = codec.encode_sub_key(codec.check_sub_key(sub), offset).hex()
            except InvalidInput:
                sub_hex = None
            reason = (
                f"record {topic}[{partition}] offset {offset} (key {key_hex or 'null'} in hex)"
                f" refused by WorkShaper: {error}"
            )
            failure = {"type": type(error).__name__, "message": reason, "traceback": ""}
            failure["worker"] = "kafka-bridge"
            if sub_hex is not None:
                failure = {"sub_hex": sub_hex, **failure}
            marker = {
                "dead_letter": "record refused by the Kafka bridge",
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key_hex": key_hex,
            }
            entry = codec.make_entry(offset, codec.encode_message(marker, 1 << 20))
            record = b"%s\n0\n%d\n%s" % (json.dumps(failure).encode(), now_ms, entry)
            pipe.hset(keys.partition(partition).dead, str(offset), record)
            log.warning(
                "%s[%d] offset %d: refused (%s); dead-lettered", topic, partition, offset, error
            )
        pipe.execute()
        with self._tracker.cond:
            self._stats["dead_letters"] += len(refused)

    def _record(self, consumer: Consumer, batch: list[Message], statuses: list[object]) -> None:
        stats = self._stats
        tracker = self._tracker
        with tracker.cond:
            for msg, status in zip(batch, statuses, strict=True):
                topic, partition, offset = coords(msg)
                tp = (topic, partition)
                if status is None:
                    self.backlog.setdefault(tp, deque()).append(msg)
                elif status is Enqueued.ALREADY_ACKED:
                    # At or below the acked watermark: finished, so offset + 1 may be committed.
                    stats["already_acked"] += 1
                    tracker.finished(tp, offset)
                else:
                    stats["accepted" if status is Enqueued.ACCEPTED else "duplicate"] += 1
                    tracker.enqueued(tp, offset)
        for tp in self.backlog:
            if tp not in self.paused:
                self._pause(consumer, tp)

    # --- pause, resume, backlog ------------------------------------------------------------

    def _pause(self, consumer: Consumer, tp: TP) -> None:
        consumer.pause([TopicPartition(tp[0], tp[1])])
        with self._tracker.cond:
            self.paused.add(tp)
            self._stats["pauses"] += 1
        log.info(
            "%s[%d]: records not written (queue full at max_in_queue=%d, or Redis"
            " unreachable); partition paused",
            tp[0],
            tp[1],
            self.max_in_queue,
        )

    def resume(self, consumer: Consumer, tp: TP) -> None:
        with self._tracker.cond:
            self.paused.discard(tp)
        try:
            consumer.resume([TopicPartition(tp[0], tp[1])])
        except KafkaException as exc:  # e.g. no longer assigned: nothing to resume
            log.debug("%s[%d]: resume failed: %s", tp[0], tp[1], exc)
            return
        with self._tracker.cond:
            self._stats["resumes"] += 1
        log.info("%s[%d]: backlog written; partition resumed", tp[0], tp[1])

    def retry_backlog(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now < self._next_retry:
            return
        self._next_retry = now + BACKLOG_RETRY
        by_topic: dict[str, list[Message]] = {}
        for tp, backlog in self.backlog.items():
            by_topic.setdefault(tp[0], []).extend(backlog)
        self.backlog.clear()
        for topic, batch in by_topic.items():
            self._send(consumer, topic, batch)
        for tp in list(self.paused):
            if tp not in self.backlog:
                self.resume(consumer, tp)

    def _rewind(self, consumer: Consumer, tps: set[TP]) -> None:
        """Redis lost records of ``tps`` it had accepted: consume them again from the last
        commit (the Kafka commit never passed an unfinished record, and nothing after the
        loss was written), so the lost records are enqueued again and run."""
        for tp in sorted(tps):
            self.backlog.pop(tp, None)
            offset = self._tracker.restart_offset(tp)
            self._stats["rewinds"] += 1
            if offset is None:
                continue
            log.error(
                "%s[%d]: Redis lost records it had accepted; consuming again from offset %d",
                tp[0],
                tp[1],
                offset,
            )
            consumer.seek(TopicPartition(tp[0], tp[1], offset))

    def drop(self, consumer: Consumer, tps: Iterable[TP]) -> None:
        """Forget the backlog of ``tps`` (never written, and no commit passed it) and resume
        them, so a later assignment of them fetches again."""
        for tp in tps:
            self.backlog.pop(tp, None)
            if tp in self.paused:
                self.resume(consumer, tp)
