"""Run the scenarios: ``python -m workshaper_tools.bench``, ``scripts/bench``, ``workshaper bench``.

    --quick          small sizes, finishes in under 2 minutes (the CI smoke test)
    --only S1,S3     run a subset (s1 s1keys s2 s3 s4 s5 peers)
    --out DIR        write results.json, results.md and one PNG chart per scenario (matplotlib)
    --profile        also run S1 once under py-spy (producer and each worker) and summarize
    --compare REF    first run the same scenarios on git revision REF (exported, with this
                     bench), then on the working tree; print a before/after table
    --lanes N        the producer(s) of every scenario spread each partition's sub keys over N
                     lanes (docs/lanes.md); S1 by key count runs each row both ways

Exit status: 1 when a run broke an invariant or lost items (always checked), 2 with
``--strict`` when a target was missed; timing alone never fails a run otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workshaper_tools.bench.common import BenchFailure, say
from workshaper_tools.testing.lanes import NO_LANES, producer_takes_lanes

SCENARIOS = ("s1", "s1keys", "s2", "s3", "s4", "s5", "peers")

#: (quick, full) sizes.
SIZES: dict[str, tuple[float, float]] = {
    "s1_items": (20_000, 200_000),
    "s1keys_items": (10_000, 200_000),  # each row of S1 by key count (--s1keys-items)
    "repeats": (1, 3),
    "s2_items": (600, 10_000),
    "s3_seconds": (0.5, 10.0),
    "s4_memory_items": (10_000, 100_000),
    "s5_items": (10_000, 200_000),
    "dramatiq_items": (2_000, 50_000),
    "rq_items": (300, 10_000),
    "rq_fork_items": (100, 500),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workshaper bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    p.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    p.add_argument("--out", type=Path, default=None, help="directory for results and charts")
    p.add_argument("--profile", action="store_true", help="profile an S1 run with py-spy")
    p.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    p.add_argument("--compare", metavar="REF", default=None, help="before/after vs git REF")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--sub-keys", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--concurrency", type=int, default=8, help="slots per worker (S1, S3, S5)")
    p.add_argument("--max-in-queue", type=int, default=5000)
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        metavar="N",
        help="producers use lanes=N (docs/lanes.md); S1 by key count runs each row without"
        " and with lanes; default: today's mode",
    )
    p.add_argument(
        "--s2-rows",
        default=None,
        help="S2 rows, comma-separated (key counts, 'unordered', 'partition order');"
        " default: all (quick: a few)",
    )
    p.add_argument(
        "--s2-enqueue-batch",
        type=int,
        default=None,
        metavar="N",
        help="S2 items per enqueue_many call (default 500, a Kafka poll's max.poll.records)",
    )
    p.add_argument("--s3-rate", type=float, default=10_000.0, help="S3 items/s offered")
    p.add_argument(
        "--s3-producers",
        type=int,
        default=4,
        help="S3 producer processes (one enqueue call per item each, partitions split)",
    )
    p.add_argument(
        "--s3-ack-interval",
        type=float,
        default=None,
        help="S3 producers' ack_interval in seconds (default: the Producer's)",
    )
    p.add_argument(
        "--s3-trace",
        action="store_true",
        help="S3: record round trips and ack loop ticks, split the latency by hand-off",
    )
    for name in SIZES:
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=None)
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    for name, (quick, full) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if name != "s3_seconds":
            setattr(args, name, int(getattr(args, name)))
    chosen = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = chosen
    if args.s2_enqueue_batch is not None and args.s2_enqueue_batch < 1:
        print(
            f"workshaper bench: --s2-enqueue-batch must be at least 1, got {args.s2_enqueue_batch}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if args.lanes is not None:
        refusal = None
        if args.lanes < 1:
            refusal = f"--lanes must be at least 1, got {args.lanes}"
        elif not producer_takes_lanes():
            refusal = f"--lanes: {NO_LANES}"
        if refusal is not None:
            print(f"workshaper bench: {refusal}", file=sys.stderr)
            raise SystemExit(2)
    return args


def machine() -> dict[str, Any]:
    import os  # noqa: PLC0415

    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": load,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def public(value: Any) -> Any:
    """Drop the in-memory parts of results (keys starting with "_") for JSON."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [public(v) for v in value]
    return value


def _without_compare(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in {"--compare", "--out"}:
            skip = True
        elif not arg.startswith(("--compare=", "--out=")) and arg != "--profile":
            out.append(arg)
    return out


def run(argv: Sequence[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = resolve(parser().parse_args(raw_argv))
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    if args.lanes is not None:
        results["lanes"] = args.lanes
    log_dir = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    before: dict[str, Any] | None = None
    if args.compare:
        from workshaper_tools.bench.compare import run_ref  # noqa: PLC0415

        try:
            before = run_ref(args.compare, _without_compare(raw_argv), log_dir / "before")
        except BenchFailure as exc:
            say(f"COMPARE FAILED: {exc}")
            return 1
        say("=== after: the working tree")
    lanes = "" if args.lanes is None else f", producers with {args.lanes} lanes"
    say(f"WorkShaper bench ({'quick' if args.quick else 'full'}{lanes}); logs in {log_dir}")
    say(f"machine: {results['machine']}")
    started = time.monotonic()
    failures: list[str] = []
    # Imported here so `--help` stays fast and each scenario's module loads only when run.
    from workshaper_tools.bench import (  # noqa: PLC0415
        cost,
        growth,
        latency,
        manykeys,
        ordering,
        peers,
        throughput,
    )

    steps: list[tuple[str, Any]] = [
        ("s1", lambda: throughput.scenario_s1(args, log_dir)),
        ("s1keys", lambda: manykeys.scenario_s1keys(args, log_dir)),
        ("s2", lambda: ordering.scenario_s2(args, log_dir)),
        ("s3", lambda: latency.scenario_s3(args, log_dir)),
        ("s4", lambda: cost.scenario_s4(args, log_dir, results.get("s1"))),
        ("s5", lambda: growth.scenario_s5(args, log_dir)),
        ("peers", lambda: peers.scenario_peers(args, log_dir, results.get("s1"))),
    ]
    for name, step in steps:
        if name not in args.scenarios:
            continue
        try:
            results[name] = step()
        except BenchFailure as exc:
            say(f"{name.upper()} FAILED: {exc}")
            failures.append(f"{name}: {exc}")
    if args.profile:
        from workshaper_tools.bench.report import profile_run  # noqa: PLC0415

        try:
            results["profile"] = profile_run(args, log_dir)
        except (BenchFailure, RuntimeError) as exc:
            say(f"PROFILE FAILED: {exc}")
            failures.append(f"profile: {exc}")
    results["seconds"] = time.monotonic() - started
    from workshaper_tools.bench import report  # noqa: PLC0415

    missed = report.missed_targets(results)
    markdown = report.markdown(results)
    say("")
    say(markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(public(results), indent=1))
        (args.out / "results.md").write_text(markdown)
        charts = report.charts(results, args.out)
        say(f"wrote {args.out / 'results.json'}, results.md and {len(charts)} chart(s)")
    if before is not None:
        from workshaper_tools.bench.compare import table  # noqa: PLC0415

        comparison = table(args.compare, before, public(results))
        say(comparison)
        if args.out is not None:
            (args.out / "compare.md").write_text(comparison)
    say(f"total {results['seconds']:.0f} s")
    if failures:
        say("INVARIANT OR RUN FAILURES:\n  " + "\n  ".join(failures))
        return 1
    if missed:
        say("targets missed: " + "; ".join(missed))
        if args.strict:
            return 2
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
