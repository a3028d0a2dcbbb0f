"""``workshaper-worker MODULE:FUNCTION``: run one worker process of the fleet.

Every setting can come from the environment (``WORKSHAPER_REDIS_URL``,
``WORKSHAPER_NAMESPACE``, ``WORKSHAPER_CONCURRENCY``, ``WORKSHAPER_LEASE``,
``WORKSHAPER_MAX_ATTEMPTS``, ``WORKSHAPER_RETRY_BACKOFF``, ``WORKSHAPER_ON_EXHAUSTED``,
``WORKSHAPER_BATCH_SIZE``, ``WORKSHAPER_LOG_LEVEL``, ``WORKSHAPER_METRICS_PORT``,
``WORKSHAPER_TLS_CA``, ``_CERT``, ``_KEY``, ``_VERIFY``); a flag wins over the environment.
Setup errors (a wrong handler path, an unreachable Redis, a bad password, an ACL denial, a bad
TLS file) exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from workshaper.cli.common import (
    SetupError,
    add_log_format,
    add_redis_options,
    env,
    fail,
    load_callable,
    number,
    redis_url,
    setup_logging,
)
from workshaper.connection import mask_url
from workshaper.errors import BackendUnavailable, InvalidInput
from workshaper.ops.logjson import set_log_worker

if TYPE_CHECKING:
    from workshaper.worker import Worker


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workshaper-worker",
        description="Run a WorkShaper worker: MODULE:FUNCTION is called as "
        "work(message, partition, offset) for each item, in sub-key order.",
    )
    p.add_argument("handler", help="the work function, as MODULE:FUNCTION (async def allowed)")
    add_redis_options(p)
    p.add_argument("--namespace", default=env("NAMESPACE", "default"))
    p.add_argument(
        "--concurrency", type=number(int, "--concurrency"), default=env("CONCURRENCY", "8")
    )
    p.add_argument(
        "--lease",
        type=number(float, "--lease"),
        default=env("LEASE", "30"),
        help="lease seconds: a crashed worker's sub keys move on after this",
    )
    p.add_argument(
        "--max-attempts", type=number(int, "--max-attempts"), default=env("MAX_ATTEMPTS", "3")
    )
    p.add_argument(
        "--retry-backoff",
        type=number(float, "--retry-backoff"),
        default=env("RETRY_BACKOFF", "0.2"),
    )
    p.add_argument(
        "--on-exhausted",
        choices=["dead_letter", "block"],
        default=env("ON_EXHAUSTED", "dead_letter"),
    )
    p.add_argument(
        "--batch-size", type=number(int, "--batch-size"), default=env("BATCH_SIZE", "100")
    )
    p.add_argument(
        "--prefetch",
        type=number(int, "--prefetch"),
        default=env("PREFETCH"),
        help="most leases read ahead beyond --concurrency (default 8 x concurrency; 0: none)",
    )
    p.add_argument("--on-done", default=env("ON_DONE"), help="MODULE:FUNCTION after success")
    p.add_argument("--on-error", default=env("ON_ERROR"), help="MODULE:FUNCTION per failure")
    p.add_argument("--name", default=env("WORKER_NAME"), help="worker id (default host-pid-rand)")
    p.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    add_log_format(p)
    p.add_argument(
        "--metrics-port",
        type=number(int, "--metrics-port"),
        default=env("METRICS_PORT"),
        help="serve Prometheus metrics on this port at /metrics (default: off)",
    )
    p.add_argument(
        "--metrics-host",
        default=env("METRICS_HOST", "0.0.0.0"),
        help="address the metrics endpoint listens on (default 0.0.0.0)",
    )
    return p


def _convert_defaults(args: argparse.Namespace) -> None:
    """Environment defaults arrive as strings: convert them like the flags."""
    for name, kind in (
        ("concurrency", int),
        ("lease", float),
        ("max_attempts", int),
        ("retry_backoff", float),
        ("batch_size", int),
        ("prefetch", int),
        ("metrics_port", int),
    ):
        value = getattr(args, name)
        if isinstance(value, str):
            try:
                setattr(args, name, kind(value))
            except ValueError:
                fail(f"WORKSHAPER_{name.upper()} must be a number, got {value!r}")


def worker_main(argv: Sequence[str] | None = None) -> None:
    from workshaper.worker import Worker  # noqa: PLC0415 - keep `--help` fast

    args = worker_parser().parse_args(argv)
    _convert_defaults(args)
    try:
        setup_logging(args.log_level, args.log_format, args.name)
    except ValueError:
        fail(f"unknown log level {args.log_level!r}")
    try:
        work = load_callable(args.handler)
        on_done = load_callable(args.on_done) if args.on_done else None
        on_error = load_callable(args.on_error) if args.on_error else None
        worker = Worker(
            redis_url(args),
            args.namespace,
            work=work,
            on_done=on_done,
            on_error=on_error,
            concurrency=args.concurrency,
            lease=args.lease,
            max_attempts=args.max_attempts,
            retry_backoff=args.retry_backoff,
            on_exhausted=args.on_exhausted,
            batch_size=args.batch_size,
            prefetch=args.prefetch,
            name=args.name,
        )
    except (SetupError, BackendUnavailable, InvalidInput) as exc:
        fail(
            f"{exc} (redis {mask_url(args.redis)})"
            if isinstance(exc, BackendUnavailable)
            else str(exc)
        )
    set_log_worker(worker.id)
    if args.metrics_port is not None:
        _serve_metrics(worker, args.metrics_host, args.metrics_port)
    worker.run()


def _serve_metrics(worker: Worker, host: str, port: int) -> None:
    from prometheus_client import REGISTRY  # noqa: PLC0415 - only with --metrics-port

    from workshaper.ops.metrics import WorkerMetrics, serve_metrics  # noqa: PLC0415

    WorkerMetrics(worker).register(REGISTRY)
    try:
        serve_metrics(REGISTRY, port, host)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port}: {exc}")
