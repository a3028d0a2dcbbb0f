"""The console entry: ``workshaper kafka-bridge``."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException

from workshaper import codec
from workshaper.cli.common import add_log_format, add_redis_options, redis_url
from workshaper.errors import BackendUnavailable, InvalidInput, LaneCountMismatch
from workshaper.kafka.bridge import KafkaBridge
from workshaper.kafka.options import hashed_key, record_key
from workshaper.signals import install_stop_handlers

log = logging.getLogger(__name__)

#: After a stop request, how long past ``revoke_timeout`` the process waits for the consumer
#: to leave the group before it exits anyway (the broker may be unreachable).
LEAVE_TIMEOUT = 10.0


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
    add_redis_options(p)
    p.add_argument("--namespace", default=env("WORKSHAPER_NAMESPACE", "default"))
    p.add_argument(
        "--key-hash",
        type=int,
        default=None,
        metavar="N",
        help="sub key = sub_key_for(record key, N) instead of the key itself (null stays null)",
    )
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        metavar="N",
        help="spread each partition's sub keys over N lanes (1 to"
        f" {codec.MAX_LANES}; fixed per namespace; default: no lanes)",
    )
    p.add_argument("--max-in-queue", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--commit-interval", type=float, default=1.0)
    p.add_argument("--revoke-timeout", type=float, default=10.0)
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=codec.DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help="largest record value enqueued; a larger one becomes a dead letter"
        f" (default {codec.DEFAULT_MAX_MESSAGE_BYTES})",
    )
    p.add_argument(
        "-X",
        dest="config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka consumer setting, e.g. -X auto.offset.reset=earliest",
    )
    p.add_argument("--log-level", default=env("WORKSHAPER_LOG_LEVEL", "INFO"))
    add_log_format(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env("WORKSHAPER_METRICS_PORT"),
        help="serve Prometheus metrics on this port at /metrics (default: off)",
    )
    p.add_argument("--metrics-host", default=env("WORKSHAPER_METRICS_HOST", "0.0.0.0"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from workshaper.cli.common import fail, setup_logging  # noqa: PLC0415 - command line only

    args = parser().parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_format, f"kafka-bridge:{args.group}")
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
            redis_url(args),
            args.namespace,
            sub_key=sub_key,
            max_in_queue=args.max_in_queue,
            batch_size=args.batch_size,
            commit_interval=args.commit_interval,
            revoke_timeout=args.revoke_timeout,
            max_message_bytes=args.max_message_bytes,
            lanes=args.lanes,
        )
    except InvalidInput as exc:
        fail(str(exc))
    if args.metrics_port is not None:
        _serve_metrics(bridge, args.group, args.metrics_host, int(args.metrics_port))
    return _run(bridge)


def _serve_metrics(bridge: KafkaBridge, group: str, host: str, port: int) -> None:
    from prometheus_client import REGISTRY  # noqa: PLC0415 - only with --metrics-port

    from workshaper.cli.common import fail  # noqa: PLC0415
    from workshaper.ops.metrics import BridgeMetrics, serve_metrics  # noqa: PLC0415

    BridgeMetrics(bridge, group).register(REGISTRY)
    try:
        serve_metrics(REGISTRY, port, host)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc}")


def _run(bridge: KafkaBridge) -> int:
    """Run the bridge in a thread and wait in the main thread, where signal handlers run: a
    main thread blocked in librdkafka (a close while the broker is unreachable) would hold
    back even the second signal that must exit at once."""
    bridge.start()
    restore = install_stop_handlers(
        bridge.request_stop, bridge.stopping, forced_exit_note="uncommitted records come back"
    )
    give_up: float | None = None
    try:
        while not bridge.wait(0.2):
            if bridge.stopping() and give_up is None:
                give_up = time.monotonic() + bridge.revoke_timeout + LEAVE_TIMEOUT
            if give_up is not None and time.monotonic() > give_up:
                log.error(
                    "kafka bridge did not leave the group in time (broker unreachable?);"
                    " exiting: uncommitted records come back"
                )
                return 1
    finally:
        restore()
    error = bridge.error
    if isinstance(error, (InvalidInput, LaneCountMismatch, BackendUnavailable, KafkaException)):
        from workshaper.cli.common import fail  # noqa: PLC0415 - command line only

        fail(str(error))
    if error is not None:
        raise error
    return 0
