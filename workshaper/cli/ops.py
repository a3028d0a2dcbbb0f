"""The operator commands of ``workshaper``: status, dead-letters, blocked, unblock."""

from __future__ import annotations

import argparse

from workshaper.cli.common import DEFAULT_REDIS_URL, env, fail


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        cmd.add_argument("--redis", default=env("REDIS_URL", DEFAULT_REDIS_URL))
        cmd.add_argument("--namespace", default=env("NAMESPACE", "default"))


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


def run(args: argparse.Namespace) -> None:
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
