"""KafkaBridge: the public API, its lifecycle (start, run, stop) and the poll loop.

One poll thread does everything that touches the consumer: it polls batches, hands them to the
intake (one ``enqueue_many`` per topic and batch), runs the rebalance callbacks, pauses and
resumes full partitions, and commits offsets. The producers' ack loops only record what may be
committed; they never call the consumer.

Commits: ``enable.auto.commit`` and ``enable.auto.offset.store`` are forced off. Once a
producer's ack loop has recorded watermark W in Redis, its ``recorded(partition, W)`` callback
notes ``W + 1`` for the (topic, partition) if the bridge owns it, and the poll thread commits
what is noted every ``commit_interval`` seconds, and once more when partitions are revoked and
at stop: Kafka's committed offset never runs ahead of the acked watermark in Redis. W is a
contiguous watermark (every record at or below it finished), so the committed offset never
passes an unfinished record. Doing the commit in the poll thread, which is also the thread
that runs the revoke callback, makes "never commit a partition we no longer own" a plain check
instead of a race with librdkafka's auto-commit timer. Records found ALREADY_ACKED
(re-delivered after a crash between the Redis and the Kafka commit) prove their offset
finished, so ``offset + 1`` is committed too.

Topics: WorkShaper partitions are ints, so each topic gets its own namespace,
``f"{namespace}.{topic}"``, and its own Producer; the WorkShaper partition is the Kafka
partition. Payloads are never logged: log lines name topic, partition and offset only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import Consumer, KafkaException

from workshaper import codec
from workshaper.connection import Backend, connect
from workshaper.errors import InvalidInput, InvalidType
from workshaper.kafka.intake import Intake
from workshaper.kafka.offsets import OffsetTracker
from workshaper.kafka.options import (
    STOP_GRACE,
    TP,
    MessageFn,
    SubKeyFn,
    check_consumer_config,
    record_key,
    record_value,
    topic_namespace,
)
from workshaper.kafka.rebalance import Rebalancer
from workshaper.keys import NamespaceKeys
from workshaper.lanes import record_lane_count
from workshaper.options import check_positive
from workshaper.signals import install_stop_handlers

log = logging.getLogger(__name__)


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
        lanes: int | None = None,
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
        self.lanes = codec.check_lanes(lanes)
        self.topics = list(topics)
        self.namespace = namespace
        self.max_in_queue = max_in_queue
        self.batch_size = batch_size
        self.poll_timeout = float(poll_timeout)
        self.commit_interval = float(commit_interval)
        self.revoke_timeout = float(revoke_timeout)
        self.max_message_bytes = max_message_bytes
        self._config = check_consumer_config(consumer_config, self.revoke_timeout)
        self._redis = redis
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
                "rewinds",
                "commit_failures",
                "dead_letters",
            ),
            0,
        )
        self._tracker = OffsetTracker(self.stats)
        self._intake = Intake(
            redis,
            self.namespaces,
            self._tracker,
            self.stats,
            sub_key=sub_key,
            message=message or record_value,
            max_in_queue=max_in_queue,
            max_message_bytes=max_message_bytes,
            lanes=self.lanes,
        )
        self._rebalancer = Rebalancer(self._intake, self._tracker, self.revoke_timeout)
        self._config["on_commit"] = self._tracker.on_commit
        self._consumer: Consumer | None = None
        self._stop_requested = threading.Event()
        self._stop_deadline: float | None = None  # when a stop must be done (monotonic)
        self._drained = False
        self._running = False
        self._run_thread: threading.Thread | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: The exception that ended a bridge run by ``start()``, if any.
        self.error: BaseException | None = None

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
            self._claim_namespaces()  # fails now if Redis is unreachable, not at an assignment
            consumer = self._consumer = Consumer(self._config)
            try:
                self._loop(consumer)
            finally:
                self._shutdown(consumer)
        finally:
            restore()
            self._done.set()

    def request_stop(self, timeout: float | None = None) -> None:
        """Ask the bridge to stop, as SIGTERM does, without waiting: the stop has ``timeout``
        seconds (default ``revoke_timeout``) to drain and commit."""
        if self._stop_deadline is None:
            wait = self.revoke_timeout if timeout is None else timeout
            self._stop_deadline = time.monotonic() + wait
        self._stop_requested.set()

    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop_requested.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until run() returned (True) or ``timeout`` passed (False)."""
        return self._done.wait(timeout)

    def _claim_namespaces(self) -> None:
        """Record this bridge's consumer group in each topic's namespace, or refuse to run if
        another group's bridge feeds it: the namespace holds one group's dedupe state, and a
        second group would find its records done and commit past them, running nothing.
        The same for the lane count (``lanes``), which the producers check again at their
        first enqueue: a mismatch is refused here, before joining the group."""
        group = str(self._config["group.id"])
        backend = self._redis if isinstance(self._redis, Backend) else connect(self._redis)
        try:
            for topic, namespace in self.namespaces.items():
                key = NamespaceKeys(namespace).kafka
                backend.client.hsetnx(key, "group", group)
                raw = backend.client.hget(key, "group")
                owner = raw.decode() if isinstance(raw, bytes) else raw
                if owner is not None and owner != group:
                    raise InvalidInput(
                        f"namespace {namespace!r} (topic {topic!r}) is fed by consumer group"
                        f" {owner!r}, not {group!r}: use one namespace per consumer"
                        " group (a new namespace to reprocess a topic)"
                    )
                record_lane_count(backend, namespace, self.lanes)
        finally:
            if backend is not self._redis:
                backend.close()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop polling, wait up to ``timeout`` seconds (default ``revoke_timeout``) for the
        enqueued records to be acked and for the commit of them to be confirmed, leave the
        group. Returns by ``timeout`` (plus STOP_GRACE for the consumer to close) even when
        the broker is unreachable. True when everything enqueued was acked and committed;
        records still running, or not confirmed committed, come back to the next owner."""
        self.request_stop(timeout)
        assert self._stop_deadline is not None
        remaining = max(0.0, self._stop_deadline + STOP_GRACE - time.monotonic())
        me = threading.current_thread()
        if self._thread is not None and self._thread is not me:
            self._thread.join(remaining)
            if self._thread.is_alive():
                log.warning("kafka bridge: stop timed out (the broker may be unreachable)")
                return False
        elif self._running and self._run_thread is not me and not self._done.wait(remaining):
            log.warning("kafka bridge: stop timed out (the broker may be unreachable)")
            return False
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
            self.request_stop,
            self.stopping,
            forced_exit_note="uncommitted records come back",
        )

    # --- what tests and metrics read -------------------------------------------------------

    def assignment(self) -> set[TP]:
        """The (topic, partition) pairs this bridge owns now."""
        with self._tracker.cond:
            return set(self._tracker.owned)

    def paused(self) -> set[TP]:
        """The partitions paused because WorkShaper's queue for them is full."""
        with self._tracker.cond:
            return set(self._intake.paused)

    def committed(self) -> dict[TP, int]:
        """The offsets this bridge committed, for the partitions it owns."""
        return self._tracker.committed()

    # --- the poll loop ---------------------------------------------------------------------

    def _loop(self, consumer: Consumer) -> None:
        rebalancer, intake, tracker = self._rebalancer, self._intake, self._tracker
        consumer.subscribe(
            list(self.topics),
            on_assign=rebalancer.on_assign,
            on_revoke=rebalancer.on_revoke,
            on_lost=rebalancer.on_lost,
        )
        log.info(
            "kafka bridge started: topics %s, group %r, namespaces %s",
            self.topics,
            self._config["group.id"],
            sorted(self.namespaces.values()),
        )
        next_commit = time.monotonic() + self.commit_interval
        while not self._stop_requested.is_set():
            if intake.backlog:
                intake.retry_backlog(consumer)
            messages = consumer.consume(num_messages=self.batch_size, timeout=self.poll_timeout)
            if messages:
                intake.handle(consumer, messages)
            now = time.monotonic()
            if now >= next_commit:
                rebalancer.reconcile(tracker.owned)
                tracker.commit(consumer, tracker.owned)
                next_commit = now + self.commit_interval

    def _shutdown(self, consumer: Consumer) -> None:
        self.request_stop()  # sets the deadline when the loop ended otherwise
        assert self._stop_deadline is not None
        deadline = self._stop_deadline
        rebalancer = self._rebalancer
        try:
            rebalancer.sent.clear()
            drained = rebalancer.release(
                consumer,
                set(self._tracker.owned),
                drain=True,
                timeout=max(0.0, deadline - time.monotonic()),
            )
            self._drained = self._await_commits(consumer, deadline) and drained
        except Exception:
            log.exception("kafka bridge: draining on stop failed")
        finally:
            try:
                consumer.close()  # leaves the group; its revoke callback finds nothing owned
            finally:
                if not self._intake.close_producers(keep=set(), timeout=0.0):
                    self._drained = False
                log.info("kafka bridge stopped")

    def _await_commits(self, consumer: Consumer, deadline: float) -> bool:
        """Serve commit results until the broker confirmed the last commits or ``deadline``
        passed. Fetching is paused: records polled now would only come back to the next
        owner anyway."""
        tracker, wanted = self._tracker, dict(self._rebalancer.sent)
        try:
            consumer.pause(consumer.assignment())
        except KafkaException as exc:
            log.debug("pausing before the last commits failed: %s", exc)
        while not tracker.confirmed(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning(
                    "kafka bridge: the broker did not confirm the last commits in time;"
                    " the next owner gets those records back (not run again)"
                )
                return False
            consumer.poll(min(remaining, 0.05))
        return True
