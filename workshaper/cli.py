"""Console scripts: ``workshaper-worker`` (the fleet) and ``workshaper`` (demo, status, ops).

Every setting of ``workshaper-worker`` can come from the environment (``WORKSHAPER_REDIS_URL``,
``WORKSHAPER_NAMESPACE``, ``WORKSHAPER_CONCURRENCY``, ``WORKSHAPER_LEASE``,
``WORKSHAPER_MAX_ATTEMPTS``, ``WORKSHAPER_RETRY_BACKOFF``, ``WORKSHAPER_ON_EXHAUSTED``,
``WORKSHAPER_BATCH_SIZE``, ``WORKSHAPER_LOG_LEVEL``); a flag wins over the environment.
Setup errors (a wrong handler path, an unreachable Redis, a bad password) exit with status 2
and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from workshaper.connection import mask_url
from workshaper.errors import BackendUnavailable, InvalidInput

EXIT_SETUP_ERROR = 2
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class SetupError(Exception):
    """A problem the operator must fix before the process can run (exit status 2)."""


def fail(message: str) -> NoReturn:
    print(f"workshaper: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_SETUP_ERROR)


def load_callable(path: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (attribute may be dotted), as gunicorn and rq do."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise SetupError(f"handler {path!r} must look like MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SetupError(
            f"cannot import module {module_name!r} of handler {path!r}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SetupError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise SetupError(f"handler {path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"WORKSHAPER_{name}", default)


def _number(kind: type, flag: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, got {text!r}") from None

    return parse


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workshaper-worker",
        description="Run a WorkShaper worker: MODULE:FUNCTION is called as "
        "work(message, partition, offset) for each item, in sub-key order.",
    )
    p.add_argument("handler", help="the work function, as MODULE:FUNCTION (async def allowed)")
    p.add_argument("--redis", default=_env("REDIS_URL", DEFAULT_REDIS_URL), help="Redis URL")
    p.add_argument("--namespace", default=_env("NAMESPACE", "default"))
    p.add_argument(
        "--concurrency", type=_number(int, "--concurrency"), default=_env("CONCURRENCY", "8")
    )
    p.add_argument(
        "--lease",
        type=_number(float, "--lease"),
        default=_env("LEASE", "30"),
        help="lease seconds: a crashed worker's sub keys move on after this",
    )
    p.add_argument(
        "--max-attempts", type=_number(int, "--max-attempts"), default=_env("MAX_ATTEMPTS", "3")
    )
    p.add_argument(
        "--retry-backoff",
        type=_number(float, "--retry-backoff"),
        default=_env("RETRY_BACKOFF", "0.2"),
    )
    p.add_argument(
        "--on-exhausted",
        choices=["dead_letter", "block"],
        default=_env("ON_EXHAUSTED", "dead_letter"),
    )
    p.add_argument(
        "--batch-size", type=_number(int, "--batch-size"), default=_env("BATCH_SIZE", "100")
    )
    p.add_argument(
        "--prefetch",
        type=_number(int, "--prefetch"),
        default=_env("PREFETCH"),
        help="most leases read ahead beyond --concurrency (default 2 x concurrency; 0: none)",
    )
    p.add_argument("--on-done", default=_env("ON_DONE"), help="MODULE:FUNCTION after success")
    p.add_argument("--on-error", default=_env("ON_ERROR"), help="MODULE:FUNCTION per failure")
    p.add_argument("--name", default=_env("WORKER_NAME"), help="worker id (default host-pid-rand)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
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
    ):
        value = getattr(args, name)
        if isinstance(value, str):
            try:
                setattr(args, name, kind(value))
            except ValueError:
                fail(f"WORKSHAPER_{name.upper()} must be a number, got {value!r}")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


def worker_command() -> list[str]:
    """argv that starts ``workshaper-worker`` with this interpreter (no PATH lookup)."""
    return [
        sys.executable,
        "-c",
        "import sys; from workshaper.cli import worker_main; worker_main(sys.argv[1:])",
    ]


def worker_main(argv: Sequence[str] | None = None) -> None:
    from workshaper.worker import Worker  # noqa: PLC0415 - keep `--help` fast

    args = worker_parser().parse_args(argv)
    _convert_defaults(args)
    try:
        setup_logging(args.log_level)
    except ValueError:
        fail(f"unknown log level {args.log_level!r}")
    try:
        work = load_callable(args.handler)
        on_done = load_callable(args.on_done) if args.on_done else None
        on_error = load_callable(args.on_error) if args.on_error else None
        worker = Worker(
            args.redis,
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
    worker.run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="workshaper", description="WorkShaper tools")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the seed-style demo (embedded, or --redis URL)")
    demo.add_argument("--redis", default=None, help="Redis URL (default: embedded backend)")
    demo.add_argument(
        "--workers",
        type=int,
        default=None,
        help="workshaper-worker processes to start with --redis (default 2; 0: use running ones)",
    )
    demo.add_argument("--items", type=int, default=None)
    demo.add_argument("--partitions", type=int, default=4)
    demo.add_argument("--sub-keys", type=int, default=50)
    demo.add_argument("--max-in-queue", type=int, default=None)
    demo.add_argument("--namespace", default=None)

    sub.add_parser("bench", help="run the benchmark suite (arguments: workshaper bench --help)")
    sub.add_parser("kafka-bridge", help="consume Kafka into WorkShaper (kafka-bridge --help)")
    status = sub.add_parser("status", help="per-partition queue, lease and watermark counts")
    dead = sub.add_parser("dead-letters", help="list the dead letters of a partition")
    dead.add_argument("partition", type=int)
    blocked = sub.add_parser("blocked", help="list blocked sub keys of a partition")
    blocked.add_argument("partition", type=int)
    unblock = sub.add_parser(
        "unblock", help="run a blocked sub key's head item again (or --dead-letter it)"
    )
    unblock.add_argument("partition", type=int)
    unblock.add_argument("sub_key", help="the sub key, as text (see --int, --hex)")
    kind = unblock.add_mutually_exclusive_group()
    kind.add_argument("--int", action="store_true", help="the sub key is an int")
    kind.add_argument("--hex", action="store_true", help="the sub key is bytes, given as hex")
    unblock.add_argument(
        "--dead-letter", action="store_true", help="give the head item up instead of retrying"
    )
    for cmd in (status, dead, blocked, unblock):
        cmd.add_argument("--redis", default=_env("REDIS_URL", DEFAULT_REDIS_URL))
        cmd.add_argument("--namespace", default=_env("NAMESPACE", "default"))

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from workshaper.bench.__main__ import main as bench_main  # noqa: PLC0415

        bench_main(argv[1:])
    if argv[:1] == ["kafka-bridge"]:
        from workshaper.kafka import main as kafka_main  # noqa: PLC0415

        raise SystemExit(kafka_main(argv[1:]))
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    try:
        if args.command == "demo":
            from workshaper.demo import run_demo  # noqa: PLC0415

            raise SystemExit(run_demo(args))
        _ops(args)
    except (BackendUnavailable, InvalidInput) as exc:
        fail(str(exc))


def _sub_key_argument(args: argparse.Namespace) -> str | int | bytes:
    text: str = args.sub_key
    try:
        if args.int:
            return int(text)
        if args.hex:
            return bytes.fromhex(text)
    except ValueError:
        fail(f"sub key {text!r} is not {'an int' if args.int else 'hex'}")
    return text


def _ops(args: argparse.Namespace) -> None:
    from workshaper.admin import Admin  # noqa: PLC0415

    admin = Admin(args.redis, args.namespace)
    if args.command == "status":
        print(
            f"{'partition':>9} {'acked':>10} {'pending':>8} {'unacked':>8} {'ready':>6} "
            f"{'leased':>6} {'blocked':>7} {'dead':>6}"
        )
        for s in admin.status():
            acked = "-" if s.acked is None else str(s.acked)
            print(
                f"{s.partition:>9} {acked:>10} {s.pending:>8} {s.finished_unacked:>8} "
                f"{s.ready_sub_keys:>6} {s.leased_sub_keys:>6} {s.blocked_sub_keys:>7} "
                f"{s.dead_letters:>6}"
            )
    elif args.command == "dead-letters":
        for r in admin.dead_letters(args.partition):
            print(f"offset {r.offset} attempts {r.attempts} {r.error_type}: {r.error_message}")
    elif args.command == "unblock":
        sub_key = _sub_key_argument(args)
        act = admin.dead_letter_blocked if args.dead_letter else admin.retry_blocked
        if not act(args.partition, sub_key):
            admin.close()
            fail(f"sub key {sub_key!r} of partition {args.partition} is not blocked")
        print(
            f"sub key {sub_key!r} of partition {args.partition}: "
            f"{'head item dead-lettered' if args.dead_letter else 'head item will run again'}"
        )
    elif args.command == "blocked":
        for r in admin.blocked(args.partition):
            print(
                f"sub key {r.sub_key!r} offset {r.offset} attempts {r.attempts} "
                f"{r.error_type}: {r.error_message}"
            )
    admin.close()
