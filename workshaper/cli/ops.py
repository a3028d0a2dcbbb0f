"""The operator commands of ``workshaper``: status, stuck, dead-letters, purge, exporter,
dashboard, blocked, unblock and acl.

Every command that reaches Redis takes ``--redis URL``, the TLS files (``--tls-ca``,
``--tls-cert``, ``--tls-key``, ``--tls-verify``) and ``--namespace NS`` (or
``WORKSHAPER_REDIS_URL``, ``WORKSHAPER_TLS_*``, ``WORKSHAPER_NAMESPACE``). ``--json`` prints one
JSON document instead of tables. Bad input exits with status 2 and one line naming it;
``dead-letters replay`` exits 1 when an item failed again. The reading and the actions live in
``workshaper.ops``; this module parses and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from workshaper import codec
from workshaper.access import ROLES, acl_setuser
from workshaper.cli.common import add_redis_options, env, fail, redis_url
from workshaper.errors import InvalidInput

log = logging.getLogger(__name__)

#: Commands this module owns (the CLI dispatches these names to ``run``).
COMMANDS = ("status", "stuck", "dead-letters", "purge", "exporter", "dashboard")


def _duration(flag: str) -> Callable[[str], float]:
    from workshaper.ops.render import parse_duration  # noqa: PLC0415 - rich loads lazily

    def parse(text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc}") from None

    return parse


def _count(flag: str, minimum: int = 0) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {value}")
        return value

    return parse


def _connection(cmd: argparse.ArgumentParser) -> None:
    add_redis_options(cmd)
    cmd.add_argument("--namespace", default=env("NAMESPACE", "default"))


def _filters(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--partition", type=_count("--partition"), help="only this partition")
    cmd.add_argument("--sub-key", help="only this sub key (text; see --int, --hex)")
    kind = cmd.add_mutually_exclusive_group()
    kind.add_argument("--int", action="store_true", help="the sub key is an int")
    kind.add_argument("--hex", action="store_true", help="the sub key is bytes, given as hex")
    cmd.add_argument("--error-type", help="only dead letters of this exception type")
    cmd.add_argument("--offset", type=_count("--offset"), help="only this offset")
    cmd.add_argument("--min-offset", type=_count("--min-offset"), help="offsets >= this")
    cmd.add_argument("--max-offset", type=_count("--max-offset"), help="offsets <= this")
    cmd.add_argument("--json", action="store_true", help="print JSON")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator subcommands to the ``workshaper`` parser's subcommands."""
    status = sub.add_parser(
        "status", help="per-partition watermark, lag and counts, workers and stuck sub keys"
    )
    _connection(status)
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument("--watch", action="store_true", help="redraw live (rich)")
    status.add_argument(
        "--interval",
        type=_duration("--interval"),
        default=1.0,
        help="seconds between samples: throughput is measured over it (default 1s; 0: no rate)",
    )
    status.add_argument(
        "--stall-after",
        type=_duration("--stall-after"),
        default=60.0,
        help="warn about a partition whose watermark has not moved this long (default 60s)",
    )
    status.add_argument(
        "--stuck-after",
        type=_duration("--stuck-after"),
        default=60.0,
        help="list sub keys whose head item is older than this (default 60s)",
    )
    status.add_argument("--stuck-limit", type=_count("--stuck-limit", 1), default=10)

    stuck = sub.add_parser("stuck", help="sub keys whose head item has not finished in time")
    _connection(stuck)
    stuck.add_argument(
        "--older-than",
        type=_duration("--older-than"),
        default=60.0,
        help="head item unfinished at least this long (default 60s; 0: every head)",
    )
    stuck.add_argument("--limit", type=_count("--limit", 1), default=20, help="top K (20)")
    stuck.add_argument("--partition", type=_count("--partition"), help="only this partition")
    stuck.add_argument("--json", action="store_true", help="print JSON")

    dead = sub.add_parser("dead-letters", help="list, show, replay or drop dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="dead letters matching the filters")
    _connection(listing)
    _filters(listing)
    listing.add_argument("--limit", type=_count("--limit", 1), help="at most this many")
    show = dead_sub.add_parser("show", help="one dead letter with its traceback and message")
    _connection(show)
    show.add_argument("partition", type=_count("partition"))
    show.add_argument("offset", type=_count("offset"))
    show.add_argument("--json", action="store_true", help="print JSON")
    replay = dead_sub.add_parser(
        "replay", help="run matching dead letters again, in their sub key's order"
    )
    _connection(replay)
    _filters(replay)
    replay.add_argument(
        "--wait",
        type=_duration("--wait"),
        default=30.0,
        help="how long to wait for each outcome (default 30s; 0: do not wait)",
    )
    drop = dead_sub.add_parser("drop", help="delete matching dead letters (asks unless --yes)")
    _connection(drop)
    _filters(drop)
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    purge = sub.add_parser(
        "purge", help="delete a namespace's (or one partition's) keys (asks unless --yes)"
    )
    add_redis_options(purge)
    purge.add_argument("--namespace", required=True, help="the namespace to delete")
    purge.add_argument("--partition", type=_count("--partition"), help="only this partition")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    blocked = sub.add_parser("blocked", help="list blocked sub keys of a partition")
    blocked.add_argument("partition", type=int)
    unblock = sub.add_parser(
        "unblock", help="run a blocked sub key's head item again (or --dead-letter it)"
    )
    unblock.add_argument("partition", type=int)
    unblock.add_argument("sub_key", help="the sub key, as text (see --int, --hex, --lane)")
    kind = unblock.add_mutually_exclusive_group()
    kind.add_argument("--int", action="store_true", help="the sub key is an int")
    kind.add_argument("--hex", action="store_true", help="the sub key is bytes, given as hex")
    kind.add_argument(
        "--lane", action="store_true", help="a lane's number (a producer with lanes blocks lanes)"
    )
    unblock.add_argument(
        "--dead-letter", action="store_true", help="give the head item up instead of retrying"
    )
    for cmd in (blocked, unblock):
        _connection(cmd)
    acl = sub.add_parser(
        "acl", help="print the ACL SETUSER line of a role in a namespace (docs/security.md)"
    )
    acl.add_argument("--namespace", default=env("NAMESPACE", "default"))
    acl.add_argument("--role", required=True, choices=ROLES)
    acl.add_argument("--user", default=None, help="the Redis user (default ws-ROLE-NAMESPACE)")

    exporter = sub.add_parser(
        "exporter", help="serve per-partition Prometheus metrics of namespaces on /metrics"
    )
    add_redis_options(exporter)
    exporter.add_argument(
        "--namespace",
        action="append",
        help="namespace to export (repeat for more; default WORKSHAPER_NAMESPACE or default)",
    )
    exporter.add_argument(
        "--port", type=_count("--port"), default=int(env("EXPORTER_PORT", "9120") or 9120)
    )
    exporter.add_argument("--host", default=env("EXPORTER_HOST", "0.0.0.0"))

    dashboard = sub.add_parser("dashboard", help="the web dashboard (extra workshaper[dashboard])")
    add_redis_options(dashboard)
    dashboard.add_argument(
        "--namespace", default=env("NAMESPACE"), help="namespace shown first (default: found)"
    )
    dashboard.add_argument(
        "--port", type=_count("--port"), default=int(env("DASHBOARD_PORT", "8000") or 8000)
    )
    dashboard.add_argument(
        "--host", default=env("DASHBOARD_HOST", "127.0.0.1"), help="address (127.0.0.1)"
    )
    dashboard.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow replay, drop and unblock from the page (default: read-only)",
    )
    dashboard.add_argument(
        "--interval",
        type=_duration("--interval"),
        default=1.0,
        help="seconds between live updates (default 1s)",
    )


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    print(f"{question} [y/N] ", end="", flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _filter_of(args: argparse.Namespace) -> Any:
    from workshaper.ops.inspection import DeadLetterFilter, parse_sub_key  # noqa: PLC0415

    low, high = args.min_offset, args.max_offset
    if args.offset is not None:
        low = high = args.offset
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"--min-offset {low} is above --max-offset {high}")
    if args.sub_key is None and (args.int or args.hex):
        raise InvalidInput("--int and --hex describe --sub-key, which is missing")
    kind = "int" if args.int else "bytes" if args.hex else "str"
    return DeadLetterFilter(
        partition=args.partition,
        sub_key=None if args.sub_key is None else parse_sub_key(args.sub_key, kind),
        any_sub_key=args.sub_key is None,
        error_type=args.error_type,
        min_offset=low,
        max_offset=high,
    )


def _console() -> Any:
    """A rich console; piped output gets wide lines instead of cut-off cells."""
    from rich.console import Console  # noqa: PLC0415

    return Console() if sys.stdout.isatty() else Console(width=200)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def run(args: argparse.Namespace) -> None:
    """Run a parsed operator command (exits with its status)."""
    if args.command == "acl":
        print(acl_setuser(args.role, args.namespace, args.user))
        return
    if args.command in ("blocked", "unblock"):
        _blocked_commands(args)
        return
    raise SystemExit(_run(args))


def _run(args: argparse.Namespace) -> int:
    if args.command == "exporter":
        from workshaper.ops.exporter import serve_exporter  # noqa: PLC0415

        serve_exporter(
            redis_url(args), args.namespace or [env("NAMESPACE", "default")], args.host, args.port
        )
        return 0
    if args.command == "dashboard":
        try:
            from workshaper.ops.dashboard import serve_dashboard  # noqa: PLC0415
        except ImportError as exc:  # the extra is not installed: say which
            fail(str(exc))

        serve_dashboard(
            redis_url(args),
            namespace=args.namespace,
            host=args.host,
            port=args.port,
            allow_actions=args.allow_actions,
            interval=args.interval,
        )
        return 0
    from workshaper.ops.inspection import Inspector  # noqa: PLC0415

    inspector = Inspector(redis_url(args), args.namespace)
    try:
        if args.command == "status":
            return _status(inspector, args)
        if args.command == "stuck":
            return _stuck(inspector, args)
        if args.command == "purge":
            return _purge(inspector, args)
        return _dead_letters(inspector, args)
    finally:
        inspector.close()


def _status(inspector: Any, args: argparse.Namespace) -> int:
    from rich.live import Live  # noqa: PLC0415

    from workshaper.ops.render import Rates, status_view, visible_stuck  # noqa: PLC0415

    rates = Rates()

    def sample() -> Any:
        # Stuck rows down to the stall threshold name the sub key holding a watermark back;
        # the table then shows only those past --stuck-after (blocked ones always).
        snapshot = inspector.snapshot(min(args.stuck_after, args.stall_after), args.stuck_limit)
        rates.update(snapshot)
        return snapshot

    snapshot = sample()
    if args.interval > 0 and not args.watch:
        time.sleep(args.interval)
        snapshot = sample()
    if args.json:
        from workshaper.ops.render import stall_warnings  # noqa: PLC0415

        warnings = stall_warnings(snapshot, args.stall_after, rates)
        out = snapshot.to_json()
        out["stuck"] = [s.to_json() for s in visible_stuck(snapshot.stuck, args.stuck_after)]
        for p in out["partitions"]:
            p["acked_per_second"] = rates.rates.get(p["partition"])
        out["warnings"] = warnings
        _print_json(out)
        return 0
    console = _console()
    if not args.watch:
        console.print(status_view(snapshot, args.stall_after, args.stuck_after, rates))
        return 0
    interval = args.interval or 1.0
    try:  # Ctrl-C ends the watch at any point, the first draw included
        with Live(
            status_view(snapshot, args.stall_after, args.stuck_after, rates),
            console=console,
            auto_refresh=False,
            screen=False,
        ) as live:
            while True:
                time.sleep(interval)
                snapshot = sample()
                live.update(
                    status_view(snapshot, args.stall_after, args.stuck_after, rates),
                    refresh=True,
                )
    except KeyboardInterrupt:
        pass
    return 0


def _stuck(inspector: Any, args: argparse.Namespace) -> int:
    parts = None if args.partition is None else [args.partition]
    rows = inspector.stuck(args.older_than, args.limit, parts)
    if args.json:
        _print_json([r.to_json() for r in rows])
        return 0
    from workshaper.ops.render import stuck_table  # noqa: PLC0415

    if not rows:
        print(f"no sub key has a head item older than {args.older_than:g}s")
        return 0
    _console().print(stuck_table(rows, args.older_than))
    return 0


def _purge(inspector: Any, args: argparse.Namespace) -> int:
    what = (
        f"partition {args.partition} of namespace {args.namespace!r}"
        if args.partition is not None
        else f"every key of namespace {args.namespace!r}"
    )
    if not _confirm(f"Delete {what}? Stop its workers and producers first.", args.yes):
        print("nothing deleted", file=sys.stderr)
        return 1
    removed = inspector.purge(args.partition)
    log.warning("purge: deleted %d key(s): %s", removed, what)  # operator actions leave a trace
    print(f"deleted {removed} key(s): {what}")
    return 0


def _dead_letters(inspector: Any, args: argparse.Namespace) -> int:
    from workshaper.ops.render import dead_letters_table  # noqa: PLC0415

    if args.action == "show":
        letter = inspector.dead_letter(args.partition, args.offset)
        if letter is None:
            raise InvalidInput(
                f"partition {args.partition} has no dead letter at offset {args.offset}"
            )
        if args.json:
            _print_json(letter.to_json(with_message=True))
            return 0
        doc = letter.to_json(with_message=True)
        for name in ("partition", "offset", "sub_key", "sub_key_kind", "attempts", "worker"):
            print(f"{name}: {doc[name]}")
        print(f"error: {doc['error_type']}: {doc['error_message']}")
        print(f"message: {json.dumps(doc['message'])}")
        print(doc["traceback"].rstrip())
        return 0
    where = _filter_of(args)
    letters = inspector.dead_letters(where, getattr(args, "limit", None))
    if args.action == "list":
        if args.json:
            _print_json([d.to_json() for d in letters])
        else:
            _console().print(dead_letters_table(letters))
        return 0
    if args.action == "drop":
        if not letters:
            print("no dead letter matches", file=sys.stderr)
            return 0
        if not _confirm(
            f"Drop {len(letters)} dead letter(s) of namespace {args.namespace!r}?", args.yes
        ):
            print("nothing dropped", file=sys.stderr)
            return 1
        dropped = inspector.drop(letters)
        log.warning("dropped %d dead letter(s) of namespace %s", dropped, args.namespace)
        if args.json:
            _print_json({"dropped": dropped})
        else:
            print(f"dropped {dropped} dead letter(s)")
        return 0
    # replay, in (partition, offset) order: a sub key's letters run again in their order
    outcomes = []
    for letter in letters:
        if letter.offset is None:
            continue
        outcome = inspector.replay(letter.partition, letter.offset, args.wait)
        log.warning(
            "replayed dead letter: partition %d offset %d %s",
            outcome.partition,
            outcome.offset,
            outcome.outcome,
        )
        outcomes.append(outcome)
        if not args.json:
            line = f"partition {outcome.partition} offset {outcome.offset}: {outcome.outcome}"
            if outcome.dead_letter is not None:
                d = outcome.dead_letter
                line += f" ({d.error_type}: {d.error_message}, {d.attempts} attempt(s))"
            print(line)
    if args.json:
        _print_json([o.to_json() for o in outcomes])
    elif not outcomes:
        print("no dead letter matches", file=sys.stderr)
    return 0 if all(o.outcome in ("succeeded", "pending") for o in outcomes) else 1


def _sub_key_argument(args: argparse.Namespace) -> codec.StoredSubKey:
    text: str = args.sub_key
    try:
        if args.int:
            return int(text)
        if args.hex:
            return bytes.fromhex(text)
        if getattr(args, "lane", False):
            return codec.Lane(int(text))
    except ValueError:
        fail(f"sub key {text!r} is not {'hex' if args.hex else 'an int'}")
    return text


def _named(sub_key: codec.StoredSubKey) -> str:
    """How the blocked commands name what is blocked: "sub key 'a'", or "lane 3"."""
    return str(sub_key) if isinstance(sub_key, codec.Lane) else f"sub key {sub_key!r}"


def _blocked_commands(args: argparse.Namespace) -> None:
    from workshaper.admin import Admin  # noqa: PLC0415

    admin = Admin(redis_url(args), args.namespace)
    if args.command == "unblock":
        sub_key = _sub_key_argument(args)
        act = admin.dead_letter_blocked if args.dead_letter else admin.retry_blocked
        if not act(args.partition, sub_key):
            admin.close()
            fail(f"{_named(sub_key)} of partition {args.partition} is not blocked")
        print(
            f"{_named(sub_key)} of partition {args.partition}: "
            f"{'head item dead-lettered' if args.dead_letter else 'head item will run again'}"
        )
    elif args.command == "blocked":
        for r in admin.blocked(args.partition):
            print(
                f"{_named(r.sub_key)} offset {r.offset} attempts {r.attempts} "
                f"{r.error_type}: {r.error_message}"
            )
    admin.close()
