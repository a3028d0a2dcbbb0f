"""The Kafka bridge: a confluent-kafka consumer that feeds WorkShaper producers.

One poll thread does everything that touches the consumer: it polls batches, enqueues each
batch with one ``enqueue_many`` call per topic (one call per batch for a one-topic bridge),
runs the rebalance callbacks, pauses and resumes full partitions, and commits offsets. The
producers' ack loops only record what may be committed; they never call the consumer.

Decisions (docs/kafka.md explains them for operators):

- **Commits.** ``enable.auto.commit`` and ``enable.auto.offset.store`` are forced off. The ack
  callback ``ack(partition, W)`` records ``W + 1`` for the (topic, partition) if the bridge
  owns it, and the poll thread commits what is recorded every ``commit_interval`` seconds
  with a synchronous ``commit(offsets=...)``, and once more when partitions are revoked and
  at stop. W is a contiguous watermark (every record at or below it finished), so the
  committed offset never passes an unfinished record. Doing the commit in the poll thread,
  which is also the thread that runs the revoke callback, makes "never commit a partition we
  no longer own" a plain check instead of a race with librdkafka's auto-commit timer.
- **Records found ALREADY_ACKED** (re-delivered after a crash that happened between the ack
  and the Kafka commit) prove their offset finished, so ``offset + 1`` is committed too;
  otherwise an idle partition's committed offset would lag until its next record finished.
- **Topics.** WorkShaper partitions are ints, so each topic gets its own namespace,
  ``f"{namespace}.{topic}"``, and its own Producer; the WorkShaper partition is the Kafka
  partition. Run workers with ``--namespace NS.TOPIC`` for each topic.
- **Backpressure.** Enqueue never blocks the poll thread (``timeout=0``): the records of a
  full partition that did not fit stay in a local backlog, that partition alone is paused
  (``consumer.pause``), the backlog is offered again every ``BACKLOG_RETRY`` seconds, and the
  partition is resumed once its backlog is written. The consumer keeps polling, so
  ``max.poll.interval.ms`` is never at risk and the other partitions go on.
- **Rebalances.** On revoke the bridge stops enqueueing those partitions (their backlog is
  dropped: it was never written, and nothing past it was committed), waits up to
  ``revoke_timeout`` seconds for their enqueued records to be acked, commits, and only then
  drops ownership; an ack that arrives later is skipped. A topic's producer is closed once the
  bridge owns none of its partitions, so its ack loop stops with it. On assign, consumption
  starts from the committed offset; re-delivered records that are in flight or finished come
  back DUPLICATE or ALREADY_ACKED and are not run again.

Payloads are never logged: log lines name topic, partition and offset only.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from workshaper import codec
from workshaper.connection import Backend, connect
from workshaper.errors import BackendUnavailable, InvalidInput, InvalidType, QueueFull
from workshaper.hashing import sub_key_for
from workshaper.options import check_positive
from workshaper.producer import Enqueued, Producer
from workshaper.signals import install_stop_handlers

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "workshaper.kafka needs confluent-kafka: pip install 'workshaper[kafka]'"
    ) from exc

log = logging.getLogger(__name__)

#: How often the records of a paused (full) partition are offered again. An ack of another
#: process frees room without telling us, so this is a timer, not a wake-up.
BACKLOG_RETRY = 0.05
#: Pause before offering a backlog again after Redis was unreachable.
REDIS_RETRY = 1.0
#: While a revoke or stop waits for acks, how often it checks Redis for acks made elsewhere.
DRAIN_CHECK = 0.1
#: Kafka's own limit on topic names: these characters, 1 to 249 of them.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

TP = tuple[str, int]  # (topic, kafka partition)
SubKeyFn = Callable[[Message], codec.SubKey]
MessageFn = Callable[[Message], Any]


def record_key(msg: Message) -> codec.SubKey:
    """The default sub key: the record key's bytes; a null key gives None (no order)."""
    return msg.key()


def record_value(msg: Message) -> Any:
    """The default message: the record value's bytes (None for a tombstone)."""
    return msg.value()


def hashed_key(max_sub_keys: int) -> SubKeyFn:
    """A sub key function: ``sub_key_for(record key, max_sub_keys)``; a null key stays None."""

    def sub_key(msg: Message) -> codec.SubKey:
        key = msg.key()
        return None if key is None else sub_key_for(key, max_sub_keys)

    return sub_key


def topic_namespace(namespace: str, topic: str) -> str:
    """The WorkShaper namespace of ``topic``'s records: ``f"{namespace}.{topic}"``."""
    if not isinstance(topic, str) or not _TOPIC_NAME.fullmatch(topic):
        raise InvalidInput(
            f"topic {topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-';"
            " 1 to 249 of them); regex subscriptions are not supported"
        )
    full = f"{namespace}.{topic}"
    try:
        return codec.check_namespace(full)
    except InvalidInput as exc:
        raise type(exc)(f"namespace {full!r} of topic {topic!r}: {exc}") from None


def _coords(msg: Message) -> tuple[str, int, int]:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _consumer_config(config: dict[str, Any], revoke_timeout: float) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InvalidType(f"consumer_config must be a dict, got {type(config).__name__}")
    out = dict(config)
    if not out.get("group.id"):
        raise InvalidInput("consumer_config needs a 'group.id': the bridge commits to a group")
    for name in ("enable.auto.commit", "enable.auto.offset.store"):
        if name in out and str(out[name]).lower() not in ("false", "0"):
            raise InvalidInput(
                f"consumer_config sets {name}={out[name]!r}: the bridge commits offsets itself"
                " (only watermarks of finished records); leave it out or set it to false"
            )
        out[name] = False
    max_poll_ms = float(out.get("max.poll.interval.ms", 300_000))
    if revoke_timeout * 1000 >= max_poll_ms:
        raise InvalidInput(
            f"revoke_timeout ({revoke_timeout}s) must be below max.poll.interval.ms"
            f" ({max_poll_ms:.0f} ms): a revoke waits that long inside the poll loop"
        )
    return out


class KafkaBridge:
    """Consume ``topics`` with confluent-kafka and enqueue every record into WorkShaper.

    ``run()`` blocks until ``stop()`` (or SIGTERM/SIGINT when called from the main thread);
    ``start()`` runs it in a background thread; the context manager starts and stops it.
    Offsets are committed only as ``watermark + 1`` of finished records (see the module doc).
    """

    def __init__(
        self,
        consumer_config: dict[str, Any],
        topics: Sequence[str],
        redis: Any,
        namespace: str = "default",
        *,
        sub_key: SubKeyFn = record_key,
        message: MessageFn | None = None,
        max_in_queue: int = 1000,
        batch_size: int = 500,
        poll_timeout: float = 0.1,
        commit_interval: float = 1.0,
        revoke_timeout: float = 10.0,
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if redis is None:
            raise InvalidType("redis must be a URL or a redis-py client (workers must reach it)")
        codec.check_namespace(namespace)
        if isinstance(topics, str) or not topics:
            raise InvalidInput(f"topics must be a non-empty list of topic names, got {topics!r}")
        if len(set(topics)) != len(topics):
            raise InvalidInput(f"topics has duplicates: {list(topics)!r}")
        self.namespaces = {t: topic_namespace(namespace, t) for t in topics}
        for label, fn in (("sub_key", sub_key), ("message", message)):
            if fn is not None and not callable(fn):
                raise InvalidType(f"{label} must be callable, got {type(fn).__name__}")
        check_positive("max_in_queue", max_in_queue)
        check_positive("batch_size", batch_size)
        check_positive("poll_timeout", poll_timeout, allow_float=True)
        check_positive("commit_interval", commit_interval, allow_float=True)
        check_positive("revoke_timeout", revoke_timeout, allow_float=True)
        self.topics = list(topics)
        self.namespace = namespace
        self.max_in_queue = max_in_queue
        self.batch_size = batch_size
        self.poll_timeout = float(poll_timeout)
        self.commit_interval = float(commit_interval)
        self.revoke_timeout = float(revoke_timeout)
        self.max_message_bytes = max_message_bytes
        self._config = _consumer_config(consumer_config, self.revoke_timeout)
        self._redis = redis
        self._sub_key = sub_key
        self._message = message or record_value
        self._consumer: Consumer | None = None
        self._producers: dict[str, Producer] = {}  # poll thread only
        self._backlog: dict[TP, deque[Message]] = {}  # poll thread only
        self._next_retry = 0.0
        # Shared with the ack loops' threads: everything below is guarded by _cond. Only the
        # poll thread changes _owned and _paused, so it may read them without the lock.
        self._cond = threading.Condition()
        self._owned: set[TP] = set()
        self._paused: set[TP] = set()
        self._targets: dict[TP, int] = {}  # highest offset enqueued that must be acked
        self._acked: dict[TP, int] = {}  # highest watermark known finished
        self._to_commit: dict[TP, int] = {}  # next offset to commit (watermark + 1)
        self._committed: dict[TP, int] = {}  # last offset this bridge committed
        self._stop_requested = threading.Event()
        self._drain_timeout: float | None = None
        self._drained = False
        self._running = False
        self._run_thread: threading.Thread | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: The exception that ended a bridge run by ``start()``, if any.
        self.error: BaseException | None = None
        #: Counters for tests, metrics and logs.
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "records",
                "accepted",
                "duplicate",
                "already_acked",
                "commits",
                "skipped_commits",
                "pauses",
                "resumes",
            ),
            0,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> KafkaBridge:
        """Run the bridge in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("this KafkaBridge was started already")
        self._thread = threading.Thread(
            target=self._run_in_thread, name="workshaper-kafka", daemon=True
        )
        self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.error = exc
            log.exception("kafka bridge stopped by an error")

    def run(self) -> None:
        """Consume and enqueue until stop() (or SIGTERM/SIGINT in the main thread)."""
        if self._running:
            raise RuntimeError("this KafkaBridge is running already")
        self._running = True
        self._run_thread = threading.current_thread()
        restore = self._install_signal_handlers()
        try:
            if not isinstance(self._redis, Backend):
                connect(self._redis).close()  # fail now, not at the first assignment
            consumer = self._consumer = Consumer(self._config)
            try:
                self._loop(consumer)
            finally:
                self._shutdown(consumer)
        finally:
            restore()
            self._done.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop polling, wait up to ``timeout`` seconds (default ``revoke_timeout``) for the
        enqueued records to be acked, commit, leave the group. True when everything enqueued
        was acked and committed; records still running are re-delivered to the next owner."""
        self._drain_timeout = timeout
        self._stop_requested.set()
        me = threading.current_thread()
        if self._thread is not None and self._thread is not me:
            self._thread.join()
        elif self._running and self._run_thread is not me:
            self._done.wait()
        return self._drained

    def __enter__(self) -> KafkaBridge:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _install_signal_handlers(self) -> Callable[[], None]:
        return install_stop_handlers(
            self._stop_requested.set,
            self._stop_requested.is_set,
            forced_exit_note="uncommitted records come back",
        )

    # --- what tests and metrics read -------------------------------------------------------

    def assignment(self) -> set[TP]:
        """The (topic, partition) pairs this bridge owns now."""
        with self._cond:
            return set(self._owned)

    def paused(self) -> set[TP]:
        """The partitions paused because WorkShaper's queue for them is full."""
        with self._cond:
            return set(self._paused)

    def committed(self) -> dict[TP, int]:
        """The offsets this bridge committed, for the partitions it owns."""
        with self._cond:
            return {tp: o for tp, o in self._committed.items() if tp in self._owned}

    # --- the poll loop ---------------------------------------------------------------------

    def _loop(self, consumer: Consumer) -> None:
        consumer.subscribe(
            list(self.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "kafka bridge started: topics %s, group %r, namespaces %s",
            self.topics,
            self._config["group.id"],
            sorted(self.namespaces.values()),
        )
        next_commit = time.monotonic() + self.commit_interval
        while not self._stop_requested.is_set():
            if self._backlog:
                self._retry_backlog(consumer)
            messages = consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout)
            if messages:
                self._handle(consumer, messages)
            now = time.monotonic()
            if now >= next_commit:
                self._reconcile(self._owned)
                self._commit(consumer, self._owned)
                next_commit = now + self.commit_interval

    def _shutdown(self, consumer: Consumer) -> None:
        timeout = self.revoke_timeout if self._drain_timeout is None else self._drain_timeout
        try:
            self._drained = self._release(consumer, set(self._owned), drain=True, timeout=timeout)
        except Exception:
            log.exception("kafka bridge: draining on stop failed")
        finally:
            try:
                consumer.close()  # leaves the group; its revoke callback finds nothing owned
            finally:
                for producer in self._producers.values():
                    producer.close()
                self._producers.clear()
                log.info("kafka bridge stopped")

    def _handle(self, consumer: Consumer, messages: list[Message]) -> None:
        by_topic: dict[str, list[Message]] = {}
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._consumer_error(error)
                continue
            topic, partition, _ = _coords(msg)
            tp = (topic, partition)
            if tp not in self._owned:
                continue  # revoked inside this poll: the next owner gets it from Kafka
            self.stats["records"] += 1
            backlog = self._backlog.get(tp)
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
        topic, partition, offset = _coords(msg)
        try:
            return self._sub_key(msg), self._message(msg), partition, offset
        except Exception as exc:
            exc.add_note(f"while mapping record {topic}[{partition}] offset {offset}")
            raise

    def _send(self, consumer: Consumer, topic: str, batch: list[Message]) -> None:
        """One enqueue_many for the batch; what a full partition did not take is backlogged."""
        producer = self._producers[topic]
        items = [self._item(msg) for msg in batch]
        statuses: list[object]
        try:
            statuses = list(producer.enqueue_many(items, timeout=0))
        except QueueFull as exc:
            statuses = list(exc.statuses)
        except BackendUnavailable as exc:
            log.warning("topic %r: %s; pausing and retrying %d record(s)", topic, exc, len(batch))
            statuses = [None] * len(batch)
            self._next_retry = time.monotonic() + REDIS_RETRY
        except InvalidInput as exc:
            raise self._bad_record(topic, items, exc) from None
        self._record(consumer, batch, statuses)

    def _bad_record(
        self,
        topic: str,
        items: list[tuple[codec.SubKey, Any, int, int]],
        exc: InvalidInput,
    ) -> InvalidInput:
        """Name the record that could not be enqueued (never its payload)."""
        for sub, value, partition, offset in items:
            try:
                codec.encode_item(sub, value, partition, offset, self.max_message_bytes)
            except InvalidInput as bad:
                return type(bad)(f"record {topic}[{partition}] offset {offset}: {bad}")
        return exc

    def _record(self, consumer: Consumer, batch: list[Message], statuses: list[object]) -> None:
        stats = self.stats
        with self._cond:
            for msg, status in zip(batch, statuses, strict=True):
                topic, partition, offset = _coords(msg)
                tp = (topic, partition)
                if status is None:
                    self._backlog.setdefault(tp, deque()).append(msg)
                elif status is Enqueued.ALREADY_ACKED:
                    # At or below the acked watermark: finished, so offset + 1 may be committed.
                    stats["already_acked"] += 1
                    self._note_finished(tp, offset)
                else:
                    stats["accepted" if status is Enqueued.ACCEPTED else "duplicate"] += 1
                    if offset > self._targets.get(tp, -1):
                        self._targets[tp] = offset
        for tp in self._backlog:
            if tp not in self._paused:
                self._pause(consumer, tp)

    def _pause(self, consumer: Consumer, tp: TP) -> None:
        consumer.pause([TopicPartition(tp[0], tp[1])])
        with self._cond:
            self._paused.add(tp)
            self.stats["pauses"] += 1
        log.info(
            "%s[%d]: WorkShaper queue full (max_in_queue=%d); partition paused",
            tp[0],
            tp[1],
            self.max_in_queue,
        )

    def _resume(self, consumer: Consumer, tp: TP) -> None:
        with self._cond:
            self._paused.discard(tp)
            self.stats["resumes"] += 1
        try:
            consumer.resume([TopicPartition(tp[0], tp[1])])
        except KafkaException as exc:  # e.g. no longer assigned: nothing to resume
            log.debug("%s[%d]: resume failed: %s", tp[0], tp[1], exc)
            return
        log.info("%s[%d]: room in the WorkShaper queue; partition resumed", tp[0], tp[1])

    def _retry_backlog(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now < self._next_retry:
            return
        self._next_retry = now + BACKLOG_RETRY
        by_topic: dict[str, list[Message]] = {}
        for tp, backlog in self._backlog.items():
            by_topic.setdefault(tp[0], []).extend(backlog)
        self._backlog.clear()
        for topic, batch in by_topic.items():
            self._send(consumer, topic, batch)
        for tp in list(self._paused):
            if tp not in self._backlog:
                self._resume(consumer, tp)

    # --- acks and commits ------------------------------------------------------------------

    def _note_finished(self, tp: TP, watermark: int) -> None:
        """Every record of ``tp`` at or below ``watermark`` finished (caller holds _cond)."""
        if watermark > self._acked.get(tp, -1):
            self._acked[tp] = watermark
        if watermark + 1 > self._to_commit.get(tp, -1):
            self._to_commit[tp] = watermark + 1
        self._cond.notify_all()

    def _on_ack(self, topic: str, partition: int, watermark: int) -> None:
        """The producers' ack callback (their ack-loop threads): remember what to commit."""
        tp = (topic, partition)
        with self._cond:
            if tp not in self._owned:
                self.stats["skipped_commits"] += 1
                log.debug("%s[%d]: ack %d after revoke: not committed", topic, partition, watermark)
                return
            self._note_finished(tp, watermark)

    def _reconcile(self, tps: Iterable[TP]) -> None:
        """Take acks another process made: when a producer is caught up but a partition's
        records were acked without calling our ack (a previous owner acked them in Redis),
        read the acked watermark from Redis. Rare, and one read per such partition."""
        with self._cond:
            behind = [tp for tp in tps if self._acked.get(tp, -1) < self._targets.get(tp, -1)]
        for topic in {t for t, _ in behind}:
            producer = self._producers.get(topic)
            if producer is None or not producer.flush(timeout=0):
                continue
            for t, partition in behind:
                if t != topic:
                    continue
                try:
                    watermark = producer.watermark(partition)
                except Exception as exc:
                    log.warning("%s[%d]: reading the watermark failed: %s", t, partition, exc)
                    continue
                if watermark is not None:
                    self._on_ack(t, partition, watermark)

    def _commit(self, consumer: Consumer, tps: Iterable[TP]) -> bool:
        """Commit what the acks allow, for owned partitions only. True when nothing is left."""
        with self._cond:
            due = {
                tp: self._to_commit[tp]
                for tp in tps
                if tp in self._owned and self._to_commit.get(tp, -1) > self._committed.get(tp, -1)
            }
        if not due:
            return True
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in due.items()]
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("committing %d partition(s) failed (%s); retrying", len(due), exc)
            return False
        ok = True
        with self._cond:
            self.stats["commits"] += 1
            for tpo in result:
                tp = (tpo.topic, tpo.partition)
                if tpo.error is not None:
                    ok = False
                    log.warning("%s[%d]: commit failed: %s", tp[0], tp[1], tpo.error)
                elif tpo.offset > self._committed.get(tp, -1):
                    self._committed[tp] = tpo.offset
        return ok

    # --- rebalances ------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        for topic in sorted({t for t, _ in tps} - set(self._producers)):
            self._producers[topic] = Producer(
                self._redis,
                self.namespaces[topic],
                max_in_queue=self.max_in_queue,
                ack=partial(self._on_ack, topic),
                max_message_bytes=self.max_message_bytes,
            )
        with self._cond:
            for tp in tps:
                for state in (self._targets, self._acked, self._to_commit, self._committed):
                    state.pop(tp, None)
            self._owned |= tps
        log.info("assigned %s", _names(tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions} & self._owned
        if tps:
            log.info("revoked %s: draining for up to %.1fs", _names(tps), self.revoke_timeout)
            self._release(consumer, tps, drain=True, timeout=self.revoke_timeout)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions} & self._owned
        if tps:
            log.warning("lost %s (another member may own them): no commit", _names(tps))
            self._release(consumer, tps, drain=False, timeout=0.0)

    def _release(self, consumer: Consumer, tps: set[TP], *, drain: bool, timeout: float) -> bool:
        """Stop enqueueing ``tps``; if ``drain``, wait up to ``timeout`` for their records to
        be acked and commit them; then drop ownership, so later acks are skipped. True when
        every enqueued record of ``tps`` was acked and committed."""
        for tp in tps:
            self._backlog.pop(tp, None)  # never written, and no commit passed it
            if tp in self._paused:
                self._resume(consumer, tp)  # so a later assignment of it fetches again
        done = not drain
        if drain:
            done = self._wait_acked(tps, time.monotonic() + timeout)
            done = self._commit(consumer, tps) and done
        with self._cond:
            self._owned -= tps
            for tp in tps:
                for state in (self._targets, self._acked, self._to_commit, self._committed):
                    state.pop(tp, None)
            owned_topics = {t for t, _ in self._owned}
        for topic in [t for t in self._producers if t not in owned_topics]:
            self._producers.pop(topic).close()  # its ack loop ends: no acks for others' work
        return done

    def _wait_acked(self, tps: set[TP], deadline: float) -> bool:
        while True:
            with self._cond:
                behind = {tp for tp in tps if self._acked.get(tp, -1) < self._targets.get(tp, -1)}
                remaining = deadline - time.monotonic()
                if not behind:
                    return True
                if remaining <= 0:
                    log.warning(
                        "%s: records still running; they stay uncommitted and the next owner"
                        " gets them back as duplicates (not run again)",
                        _names(behind),
                    )
                    return False
                self._cond.wait(min(remaining, DRAIN_CHECK))
            self._reconcile(behind)


def _names(tps: Iterable[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))


# --- console entry: workshaper kafka-bridge ------------------------------------------------


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="workshaper kafka-bridge",
        description="Consume Kafka topics into WorkShaper (namespace NS.TOPIC per topic); "
        "commit each partition's finished watermark + 1.",
    )
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, HOST:PORT[,...]")
    p.add_argument("--group", required=True, help="consumer group id")
    p.add_argument("--topic", action="append", required=True, help="topic (repeat for more)")
    p.add_argument("--redis", default=env("WORKSHAPER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--namespace", default=env("WORKSHAPER_NAMESPACE", "default"))
    p.add_argument(
        "--key-hash",
        type=int,
        default=None,
        metavar="N",
        help="sub key = sub_key_for(record key, N) instead of the key itself (null stays null)",
    )
    p.add_argument("--max-in-queue", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--commit-interval", type=float, default=1.0)
    p.add_argument("--revoke-timeout", type=float, default=10.0)
    p.add_argument(
        "-X",
        dest="config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka consumer setting, e.g. -X auto.offset.reset=earliest",
    )
    p.add_argument("--log-level", default=env("WORKSHAPER_LOG_LEVEL", "INFO"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from workshaper.cli import fail, setup_logging  # noqa: PLC0415 - cli imports us lazily

    args = parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
    except ValueError:
        fail(f"unknown log level {args.log_level!r}")
    config: dict[str, Any] = {"bootstrap.servers": args.bootstrap, "group.id": args.group}
    for setting in args.config:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            fail(f"-X {setting!r} must look like KEY=VALUE")
        config[key] = value
    if args.key_hash is not None and args.key_hash < 1:
        fail(f"--key-hash must be >= 1, got {args.key_hash}")
    sub_key = record_key if args.key_hash is None else hashed_key(args.key_hash)
    try:
        bridge = KafkaBridge(
            config,
            args.topic,
            args.redis,
            args.namespace,
            sub_key=sub_key,
            max_in_queue=args.max_in_queue,
            batch_size=args.batch_size,
            commit_interval=args.commit_interval,
            revoke_timeout=args.revoke_timeout,
        )
        bridge.run()
    except (InvalidInput, BackendUnavailable, KafkaException) as exc:
        fail(str(exc))
    return 0
