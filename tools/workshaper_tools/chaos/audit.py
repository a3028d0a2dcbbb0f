"""The audit after a run: the journal, the producer's acks and Redis's final state checked
against every invariant, re-runs counted against the items in flight at each fault, each
fault's recovery time, and fencing read from the workers' logs (``ChaosResult``)."""

from __future__ import annotations

import bisect
import itertools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from workshaper_tools.chaos.cluster import Cluster
from workshaper_tools.chaos.config import LOSSY_KINDS, WORKER_FAULTS, ChaosConfig
from workshaper_tools.chaos.faults import FaultRecord
from workshaper_tools.chaos.plan import PlanSpec, plan_items, read_acks, read_poison, read_progress
from workshaper_tools.testing.checker import Ack, PlannedItem, Report, check
from workshaper_tools.testing.journal import Event, read_journal


@dataclass
class ChaosResult:
    config: ChaosConfig
    kinds: tuple[str, ...]
    skipped: dict[str, str]
    elapsed: float
    faults: list[FaultRecord]
    report: Report
    issues: list[str]
    fences: dict[str, int]
    reaps: int
    stale_starts: int
    worker_exits: dict[str, int]
    poison: dict[str, int]
    dead_not_poison: int
    run_dir: str
    namespace: str

    @property
    def violations(self) -> int:
        r = self.report
        return (
            len(r.lost)
            + len(r.order_violations)
            + len(r.watermark_violations)
            + len(r.sub_key_violations)
            + len(self.issues)
        )

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "command": self.config.command(),
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()
            },
            "kinds": list(self.kinds),
            "skipped": self.skipped,
            "elapsed": self.elapsed,
            "ok": self.ok,
            "accepted": r.accepted,
            "finished": r.finished,
            "dead_lettered": r.dead_lettered,
            "lost": [list(x) for x in r.lost],
            "order_violations": r.order_violations,
            "watermark_violations": r.watermark_violations,
            "sub_key_violations": r.sub_key_violations,
            "starts": r.starts,
            "reruns": r.reruns,
            "reacks": r.reacks,
            "issues": self.issues,
            "fences": self.fences,
            "reaps": self.reaps,
            "stale_starts": self.stale_starts,
            "worker_exits": self.worker_exits,
            "poison": self.poison,
            "dead_not_poison": self.dead_not_poison,
            "faults": [asdict(f) for f in self.faults],
            "run_dir": self.run_dir,
        }


def audit(cluster: Cluster, faults: list[FaultRecord], elapsed: float) -> ChaosResult:
    """Check a finished run (its cluster stopped) against every invariant."""
    config = cluster.config
    count, _ = read_progress(cluster.run_dir / "producer.progress")
    plan = list(
        itertools.islice(
            plan_items(PlanSpec(config.seed, config.partitions, config.sub_keys)), count
        )
    )
    planned = [PlannedItem(sub, p, o) for sub, p, o in plan]
    events = read_journal(cluster.journal_dir)
    acks = read_acks(cluster.run_dir / "acks.log")
    poison_items = read_poison(cluster.run_dir / "poison.log")
    # The journal carries the sub key each handler saw (current_job().sub_key): with lanes,
    # Redis holds the lane and the handler must still see the item's own sub key.
    report = check(planned, events, acks, cluster.dead_letters, sub_keys=True)
    issues = list(cluster.issues)

    # Redis after the drain: nothing pending, leased, queued or blocked; acked at the top.
    top: dict[int, int] = {}
    for _, p, o in plan:
        top[p] = max(top.get(p, -1), o)
    for s in cluster.final_status:
        if s.pending or s.ready_sub_keys or s.leased_sub_keys or s.blocked_sub_keys:
            issues.append(
                f"partition {s.partition} not clean after the drain: pending {s.pending},"
                f" ready {s.ready_sub_keys}, leased {s.leased_sub_keys},"
                f" blocked {s.blocked_sub_keys}"
            )
        if s.partition in top and s.acked != top[s.partition]:
            issues.append(
                f"partition {s.partition}: acked watermark {s.acked} after the drain,"
                f" expected {top[s.partition]}"
            )
    if cluster.leftover_queues:
        issues.append(f"{cluster.leftover_queues} sub-key queue(s) left in Redis after the drain")

    # Poison: dead-lettered, after at most max_attempts + 1 starts.
    starts: dict[tuple[int, int], list[float]] = defaultdict(list)
    ends: dict[tuple[int, int], list[float]] = defaultdict(list)
    for e in events:
        if e.kind == "s":
            starts[(e.partition, e.offset)].append(e.at)
        elif e.kind == "e":
            ends[(e.partition, e.offset)].append(e.at)
    poison = {"items": len(poison_items), "dead_lettered": 0, "crashes": 0, "max_starts": 0}
    for key in poison_items:
        n = len(starts.get(key, []))
        poison["crashes"] += n
        poison["max_starts"] = max(poison["max_starts"], n)
        if key in cluster.dead_letters:
            poison["dead_lettered"] += 1
        elif key in ends:
            issues.append(f"poison item {key} ended successfully: it was not poison")
        else:
            issues.append(f"poison item {key} was not dead-lettered")
        if n > config.max_attempts + 1:
            issues.append(
                f"poison item {key} started {n} times (at most max_attempts + 1 ="
                f" {config.max_attempts + 1} allowed)"
            )
    dead_not_poison = len(set(cluster.dead_letters) - set(poison_items))
    if dead_not_poison and not ({"kill", "stop", "netns", "redis", "proxy"} & set(cluster.kinds)):
        issues.append(
            f"{dead_not_poison} item(s) dead-lettered that were not poison, without any"
            " fault that expires leases"
        )

    _measure_recovery(
        cluster, faults, events=events, acks=acks, poison_items=poison_items, starts=starts
    )
    fences, reaps = _fencing_from_logs(cluster)
    return ChaosResult(
        config=config,
        kinds=cluster.kinds,
        skipped=cluster.skipped,
        elapsed=elapsed,
        faults=faults,
        report=report,
        issues=issues,
        fences=fences,
        reaps=reaps,
        stale_starts=stale_token_starts(events),
        worker_exits=dict(cluster.worker_exits),
        poison=poison,
        dead_not_poison=dead_not_poison,
        run_dir=str(cluster.run_dir),
        namespace=cluster.namespace,
    )


def _measure_recovery(
    cluster: Cluster,
    faults: list[FaultRecord],
    *,
    events: list[Event],
    acks: list[Ack],
    poison_items: list[tuple[int, int]],
    starts: dict[tuple[int, int], list[float]],
) -> None:
    """Recovery time of each fault, from its injection:

    - kill, stop, netns: until every item in flight on the hit worker at the injection has
      ended where it can be recorded: run again by another worker, or ended by the hit
      worker once the fault was lifted (a cut host runs on but cannot report);
    - redis, proxy: until the first ack after the fault was lifted (the whole pipeline
      moves again: workers record, the ack loop offers and commits);
    - poison: until the poison item was dead-lettered;
    - producer: until the first ack by the restarted producer.
    """
    ended_by: dict[tuple[int, int], list[tuple[float, str]]] = defaultdict(list)
    for e in events:
        if e.kind == "e":
            ended_by[(e.partition, e.offset)].append((e.at, e.worker))
    queries: dict[str, list[float]] = defaultdict(list)
    for f in faults:
        for worker in f.workers:
            queries[worker].append(f.start)
        if f.kind in ("redis", "proxy", *LOSSY_KINDS):
            for worker in f.alive:
                queries[worker].append(f.start)
    snapshots = in_flight_at(events, queries)
    ack_times = sorted(a.at for a in acks)
    poison_iter = iter(poison_items)
    for f in faults:
        if f.kind in WORKER_FAULTS:
            flying: set[tuple[int, int]] = set()
            for w in f.workers:
                flying |= snapshots[(w, f.start)]
            f.in_flight = len(flying)
            done_at = []
            for key in flying:
                # An end on the hit worker counts once it could be recorded: after the
                # fault was lifted (a cut host runs its items but cannot report them).
                candidates = [
                    max(at, f.end) if worker in f.workers else at
                    for at, worker in ended_by.get(key, [])
                    if at > f.start
                ]
                if key in cluster.dead_letters:
                    candidates.append(cluster.dead_letters[key])
                if candidates:
                    done_at.append(min(candidates))
            if flying and len(done_at) == len(flying):
                f.recovery = max(done_at) - f.start
        elif f.kind in ("redis", "proxy", *LOSSY_KINDS):
            f.in_flight = sum(len(snapshots[(w, f.start)]) for w in f.alive)
            i = bisect.bisect_right(ack_times, f.end)
            if i < len(ack_times):
                f.recovery = ack_times[i] - f.start
        elif f.kind == "poison":
            item = next(poison_iter, None)
            if item is not None:
                f.target = f"p{item[0]} o{item[1]}"
                f.in_flight = 1
                first = starts.get(item)
                if item in cluster.dead_letters and first:
                    f.recovery = cluster.dead_letters[item] - min(first)
        else:  # producer
            later = [a.at for a in acks if a.at > f.start]
            if later:
                f.recovery = min(later) - f.start
    _stop_fencing(cluster, faults)


def _stop_fencing(cluster: Cluster, faults: list[FaultRecord]) -> None:
    """For stop faults: did the paused worker log a refused write after SIGCONT?"""
    lines_by_worker: dict[str, list[float]] = defaultdict(list)
    for slot in cluster.slots:
        for when, worker in _lease_lost_lines(slot.log_path, slot.names):
            lines_by_worker[worker].append(when)
    for f in faults:
        if f.kind != "stop" or not f.workers:
            continue
        wall_end = f.end + cluster.clock_offset
        f.fenced = any(t >= wall_end - 0.01 for t in lines_by_worker.get(f.workers[0], []))


def _fencing_from_logs(cluster: Cluster) -> tuple[dict[str, int], int]:
    fences = {"completion": 0, "failure record": 0, "lease renewal": 0}
    reaps = 0
    for slot in cluster.slots:
        try:
            text = slot.log_path.read_text(errors="replace")
        except OSError:
            continue
        for match in _FENCED.finditer(text):
            fences[match.group(1)] = fences.get(match.group(1), 0) + 1
        reaps += text.count("reclaimed an expired lease")
    return fences, reaps


_FENCED = re.compile(r"lease lost: (completion|failure record|lease renewal) rejected")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def _lease_lost_lines(path: Path, names: list[str]) -> Iterator[tuple[float, str]]:
    """(wall time, worker id) of each 'lease lost' line of a slot's log."""
    current = ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        if line.startswith("=== harness: start "):
            current = line.split()[3]
            continue
        if "lease lost:" not in line:
            continue
        match = _LOG_TIME.match(line)
        if match and current in names:
            moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
            yield moment.timestamp() + int(match.group(2)) / 1000, current


def in_flight_at(
    events: list[Event], queries: dict[str, list[float]]
) -> dict[tuple[str, float], set[tuple[int, int]]]:
    """For each (worker, time): the items that worker had started and not ended by then."""
    by_worker: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_worker[e.worker].append(e)
    out: dict[tuple[str, float], set[tuple[int, int]]] = {}
    for worker, times in queries.items():
        flying: set[tuple[int, int]] = set()
        worker_events = by_worker.get(worker, [])
        i = 0
        for t in sorted(times):
            while i < len(worker_events) and worker_events[i].at <= t:
                e = worker_events[i]
                key = (e.partition, e.offset)
                if e.kind == "s":
                    flying.add(key)
                else:
                    flying.discard(key)
                i += 1
            out[(worker, t)] = set(flying)
    return out


def stale_token_starts(events: list[Event]) -> int:
    """Starts by a worker whose lease had already been given to another (a smaller token than
    an earlier start of the same sub key): work that fencing keeps from being recorded."""
    highest: dict[tuple[int, Any], int] = {}
    stale = 0
    for e in events:
        if e.kind != "s" or e.sub_key is None:
            continue
        key = (e.partition, e.sub_key)
        if e.token < highest.get(key, -1):
            stale += 1
        else:
            highest[key] = e.token
    return stale
