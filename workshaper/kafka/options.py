"""The bridge's settings: the record -> item functions, topic namespaces, the consumer config
the bridge needs, and the timings shared by its parts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Message

from workshaper import codec
from workshaper.errors import InvalidInput, InvalidType
from workshaper.hashing import sub_key_for

#: How often the records of a paused (full) partition are offered again. An ack of another
#: process frees room without telling us, so this is a timer, not a wake-up.
BACKLOG_RETRY = 0.05
#: Pause before offering a backlog again after Redis was unreachable.
REDIS_RETRY = 1.0
#: While a revoke or stop waits for acks, how often it checks Redis for acks made elsewhere.
DRAIN_CHECK = 0.1
#: What a revoke callback may take beyond ``revoke_timeout``: sending the commit (asynchronous)
#: and closing the producers of revoked topics (their ack loops stop).
REVOKE_ALLOWANCE = 1.0
#: How long stop() waits past its timeout for the consumer to close before it returns.
STOP_GRACE = 0.5
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


def check_consumer_config(config: dict[str, Any], revoke_timeout: float) -> dict[str, Any]:
    """The consumer config the bridge runs with: auto commit and offset store off."""
    if not isinstance(config, dict):
        raise InvalidType(f"consumer_config must be a dict, got {type(config).__name__}")
    out = dict(config)
    if not out.get("group.id"):
        raise InvalidInput("consumer_config needs a 'group.id': the bridge commits to a group")
    if "on_commit" in out:
        raise InvalidInput(
            "consumer_config sets on_commit: the bridge reads its commits' results itself"
        )
    for name in ("enable.auto.commit", "enable.auto.offset.store"):
        if name in out and str(out[name]).lower() not in ("false", "0"):
            raise InvalidInput(
                f"consumer_config sets {name}={out[name]!r}: the bridge commits offsets itself"
                " (only watermarks of finished records); leave it out or set it to false"
            )
        out[name] = False
    max_poll_ms = float(out.get("max.poll.interval.ms", 300_000))
    if (revoke_timeout + REVOKE_ALLOWANCE) * 1000 >= max_poll_ms:
        raise InvalidInput(
            f"revoke_timeout ({revoke_timeout}s) plus {REVOKE_ALLOWANCE:.0f}s to commit and close"
            f" producers must be below max.poll.interval.ms ({max_poll_ms:.0f} ms): a revoke"
            " waits that long inside the poll loop"
        )
    return out


def coords(msg: Message) -> tuple[str, int, int]:
    """A record's (topic, partition, offset)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def names(tps: Iterable[TP]) -> str:
    """``topic[partition]`` names for log lines."""
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))
