"""``workshaper``: the demo, the operator commands (``ops.py``), the benchmark suite (from the
separate ``workshaper-tools`` distribution) and the Kafka bridge."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import redis

from workshaper.cli import ops
from workshaper.cli.common import add_log_format, fail, setup_logging
from workshaper.errors import BackendUnavailable, InvalidInput, ScriptError

#: What to install when ``workshaper bench`` finds no benchmark suite (one line, exit 2).
TOOLS_MISSING = (
    "workshaper bench needs the workshaper-tools package, which is not installed: "
    "from a clone, pip install -e tools -e '.[tools]' (or run ./scripts/bench)"
)


def _bench(argv: list[str]) -> None:
    try:
        from workshaper_tools.bench.__main__ import main as bench_main  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name != "workshaper_tools":
            raise
        fail(TOOLS_MISSING)
    bench_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The ``workshaper`` parser (bench and kafka-bridge parse their own arguments)."""
    parser = argparse.ArgumentParser(prog="workshaper", description="WorkShaper tools")
    add_log_format(parser)
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
    ops.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        _bench(argv[1:])
    if argv[:1] == ["kafka-bridge"]:
        from workshaper.kafka import main as kafka_main  # noqa: PLC0415

        raise SystemExit(kafka_main(argv[1:]))
    args = parser.parse_args(argv)
    # Operator commands log warnings only; the exporter and the dashboard say where they serve.
    setup_logging("WARNING", args.log_format)
    try:
        if args.command == "demo":
            from workshaper.demo import run_demo  # noqa: PLC0415

            raise SystemExit(run_demo(args))
        ops.run(args)
    except (BackendUnavailable, InvalidInput) as exc:
        fail(str(exc))
    except (redis.exceptions.NoPermissionError, ScriptError) as exc:
        # An ACL denial, also inside a script (e.g. the read-only user unblocking).
        denial = exc if isinstance(exc, redis.exceptions.NoPermissionError) else exc.__cause__
        if not isinstance(denial, redis.exceptions.NoPermissionError):
            raise
        fail(f"Redis denied access: {denial} (check the user's ACL: `workshaper acl --help`)")
