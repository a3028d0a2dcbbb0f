"""The Kafka bridge: a confluent-kafka consumer that feeds WorkShaper producers.

One module per role (docs/kafka.md explains the behaviour for operators):

    bridge.py     KafkaBridge: the public API, its lifecycle and the poll loop
    options.py    record -> item functions, topic namespaces, the consumer config, timings
    intake.py     records into producers; backlog, pause and resume of full partitions
    offsets.py    what each partition enqueued, finished and committed; the commits
    rebalance.py  assign, revoke and lost; releasing partitions (also at stop)
    cli.py        the console entry, ``workshaper kafka-bridge``
"""

try:
    import confluent_kafka  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "workshaper.kafka needs confluent-kafka: pip install 'workshaper[kafka]'"
    ) from exc

from workshaper.kafka.bridge import KafkaBridge
from workshaper.kafka.cli import main, parser
from workshaper.kafka.options import (
    BACKLOG_RETRY,
    DRAIN_CHECK,
    REDIS_RETRY,
    MessageFn,
    SubKeyFn,
    hashed_key,
    record_key,
    record_value,
    topic_namespace,
)

__all__ = [
    "BACKLOG_RETRY",
    "DRAIN_CHECK",
    "REDIS_RETRY",
    "KafkaBridge",
    "MessageFn",
    "SubKeyFn",
    "hashed_key",
    "main",
    "parser",
    "record_key",
    "record_value",
    "topic_namespace",
]
