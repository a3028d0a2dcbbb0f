"""``./scripts/chaos`` (``python -m workshaper_tools.chaos``): one run, or the soak."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from workshaper_tools.chaos.audit import ChaosResult
from workshaper_tools.chaos.config import (
    FAULT_KINDS,
    KNOWN_KINDS,
    LOSSY_KINDS,
    ChaosConfig,
    soak_configs,
)
from workshaper_tools.chaos.producer import producer_main
from workshaper_tools.chaos.report import soak_table, summary_table
from workshaper_tools.chaos.run import run_once
from workshaper_tools.testing.lanes import NO_LANES, producer_takes_lanes


def parse_kinds(text: str) -> tuple[str, ...]:
    if text == "all":
        return FAULT_KINDS
    if text == "kafka":  # its own fleet: bridges, a broker and workers (chaos/kafka.py)
        return ("kafka",)
    if text == "cluster":  # its own fleet on a Redis Cluster (chaos/rediscluster.py)
        return ("cluster",)
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in KNOWN_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown fault kind {kind!r}; choose from {', '.join(KNOWN_KINDS)} or all,"
                " or kafka or cluster alone"
            )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    d = ChaosConfig()
    p = argparse.ArgumentParser(
        prog="scripts/chaos",
        description="Inject real faults into a WorkShaper fleet and audit the invariants.",
        epilog=f"fault kinds: {', '.join(FAULT_KINDS)} (all), and outside the guarantees"
        f" {', '.join(LOSSY_KINDS)}; kafka and cluster run alone, each on its own fleet."
        " Exit status 1 on any violation.",
    )
    p.add_argument("--faults", type=parse_kinds, default=d.faults, help="kinds, comma separated")
    p.add_argument("--fault-count", type=int, default=d.fault_count, help="faults to inject")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--lease", type=float, default=d.lease)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument(
        "--producer-batch",
        type=int,
        default=d.producer_batch,
        help="items per enqueue_many call of the producer",
    )
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--sub-keys", type=int, default=d.sub_keys)
    p.add_argument("--rate", type=float, default=d.rate, help="items per second offered")
    p.add_argument("--max-in-queue", type=int, default=d.max_in_queue)
    p.add_argument("--work-delay", type=float, default=d.work_delay, help="max seconds per item")
    p.add_argument("--gap", type=float, nargs=2, default=d.gap, metavar=("MIN", "MAX"))
    p.add_argument("--appendfsync", choices=["always", "everysec"], default=d.appendfsync)
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout)
    p.add_argument(
        "--lanes",
        type=int,
        default=None,
        metavar="N",
        help="the producer spreads each partition's sub keys over N lanes (docs/lanes.md);"
        " default: today's mode",
    )
    p.add_argument("--run-dir", type=Path, default=None, help="keep the run's files here")
    p.add_argument("--keep", action="store_true", help="keep the run dir even when it passes")
    p.add_argument("--json", type=Path, default=None, help="write the result(s) as JSON")
    p.add_argument("--quiet", action="store_true", help="only the final table")
    p.add_argument(
        "--soak",
        action="store_true",
        help="every kind alone and all together, over 1,000 faults (about an hour)",
    )
    p.add_argument("--soak-scale", type=float, default=1.0, help="multiply the soak's faults")
    p.add_argument("--markdown", type=Path, default=None, help="--soak: write the table here")
    return p


def _config_from(args: argparse.Namespace) -> ChaosConfig:
    return ChaosConfig(
        faults=args.faults,
        fault_count=args.fault_count,
        max_seconds=args.max_seconds,
        seed=args.seed,
        workers=args.workers,
        concurrency=args.concurrency,
        lease=args.lease,
        max_attempts=args.max_attempts,
        batch_size=args.batch_size,
        producer_batch=args.producer_batch,
        partitions=args.partitions,
        sub_keys=args.sub_keys,
        rate=args.rate,
        max_in_queue=args.max_in_queue,
        work_delay=args.work_delay,
        gap=(args.gap[0], args.gap[1]),
        appendfsync=args.appendfsync,
        drain_timeout=args.drain_timeout,
        run_dir=args.run_dir,
        keep=args.keep,
        lanes=args.lanes,
    )


def _kafka_main(args: argparse.Namespace) -> int:
    """``--faults kafka``: bridges, Redis and the broker under faults (chaos/kafka.py); odd
    seeds use the range assignor, even ones cooperative-sticky."""
    from workshaper_tools.chaos.kafka import KafkaChaosConfig, run_kafka_chaos  # noqa: PLC0415

    logging.getLogger("workshaper_tools.chaos.kafka").setLevel(
        logging.WARNING if args.quiet else logging.INFO
    )
    config = KafkaChaosConfig(
        fault_count=args.fault_count,
        seed=args.seed,
        partitions=args.partitions,
        rate=args.rate,
        workers=args.workers,
        concurrency=args.concurrency,
        work_delay=args.work_delay,
        gap=(args.gap[0], args.gap[1]),
        assignment="range" if args.seed % 2 else "cooperative-sticky",
        drain_timeout=args.drain_timeout,
    )
    result = run_kafka_chaos(config, args.run_dir)
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


def _cluster_main(args: argparse.Namespace) -> int:
    """``--faults cluster``: a fleet on 3 masters + 3 replicas under slot migrations and master
    kills (chaos/rediscluster.py)."""
    from workshaper_tools.chaos.rediscluster import (  # noqa: PLC0415
        ClusterChaosConfig,
        run_cluster_chaos,
    )

    logging.getLogger("workshaper_tools.chaos.rediscluster").setLevel(
        logging.WARNING if args.quiet else logging.INFO
    )
    d = ChaosConfig()
    config = ClusterChaosConfig(
        fault_count=args.fault_count,
        seed=args.seed,
        rate=args.rate,
        max_in_queue=args.max_in_queue,
        workers=args.workers,
        concurrency=args.concurrency,
        lease=args.lease,
        work_delay=args.work_delay,
        gap=(args.gap[0], args.gap[1]),
        drain_timeout=args.drain_timeout,
        lanes=args.lanes,
    )
    if args.partitions != d.partitions:  # else the cluster default: spread over the masters
        config.partitions = args.partitions
    if args.sub_keys != d.sub_keys:
        config.sub_keys = args.sub_keys
    result = run_cluster_chaos(config, args.run_dir)
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["producer"]:
        return producer_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.lanes is not None:
        if args.lanes < 1:
            print(f"chaos: --lanes must be at least 1, got {args.lanes}", file=sys.stderr)
            return 2
        if not producer_takes_lanes():
            print(f"chaos: --lanes: {NO_LANES}", file=sys.stderr)
            return 2
        if args.faults == ("kafka",):
            print(
                "chaos: --lanes does not apply to --faults kafka: the Kafka bridge builds"
                " its own producer, which has no lanes option",
                file=sys.stderr,
            )
            return 2
    if args.faults == ("kafka",):
        return _kafka_main(args)
    if args.faults == ("cluster",):
        return _cluster_main(args)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_on_signal)
    progress = None if args.quiet else sys.stdout
    results: list[ChaosResult] = []
    if args.soak:
        configs = soak_configs(args.seed, args.soak_scale, args.faults, args.lanes)
        print(
            f"chaos soak: {len(configs)} runs, {sum(c.fault_count for c in configs)} faults",
            flush=True,
        )
        crashed = 0
        for config in configs:
            try:
                result = run_once(config, progress)
            except Exception:  # a harness failure must not cost the runs done so far
                crashed += 1
                print(f"chaos: run {config.command()} crashed:", flush=True)
                traceback.print_exc()
                continue
            if result is None:
                continue
            results.append(result)
            print(summary_table(result), flush=True)
            table = soak_table(results)
            if args.markdown is not None:
                args.markdown.write_text(table + "\n")
            if args.json is not None:
                args.json.write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
        print(soak_table(results))
        if crashed:
            print(f"chaos: {crashed} run(s) crashed")
            return 1
    else:
        result = run_once(_config_from(args), progress)
        if result is not None:
            results.append(result)
            print(summary_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1
