"""The report of a run and of the soak: the summary table and docs/reliability.md's table."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from workshaper_tools.chaos.audit import ChaosResult
from workshaper_tools.chaos.config import KNOWN_KINDS
from workshaper_tools.chaos.faults import FaultRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


@dataclass
class KindRow:
    kind: str
    runs: int = 0
    faults: int = 0
    in_flight: int = 0
    recoveries: list[float] = field(default_factory=list)
    unmeasured: int = 0

    def add(self, f: FaultRecord) -> None:
        self.faults += 1
        self.in_flight += f.in_flight
        if f.recovery is None:
            self.unmeasured += 1
        else:
            self.recoveries.append(f.recovery)


def kind_rows(faults: Sequence[FaultRecord]) -> list[KindRow]:
    rows: dict[str, KindRow] = {}
    for f in faults:
        rows.setdefault(f.kind, KindRow(f.kind)).add(f)
    return [rows[k] for k in KNOWN_KINDS if k in rows]


def summary_table(result: ChaosResult) -> str:
    r = result.report
    lines = [
        f"{'fault':9} {'injected':>8} {'in flight':>9} {'recovery p50':>12} {'p99':>7}"
        f" {'max':>7} {'unmeasured':>10}"
    ]
    rows = kind_rows(result.faults)
    everything = KindRow("all")
    for f in result.faults:
        everything.add(f)
    for row in [*rows, everything]:
        lines.append(
            f"{row.kind:9} {row.faults:>8} {row.in_flight:>9}"
            f" {_secs(percentile(row.recoveries, 50)):>12}"
            f" {_secs(percentile(row.recoveries, 99)):>7}"
            f" {_secs(max(row.recoveries) if row.recoveries else None):>7} {row.unmeasured:>10}"
        )
    stops = [f for f in result.faults if f.kind == "stop"]
    fenced = sum(1 for f in stops if f.fenced)
    exits = ", ".join(f"{k} {v}" for k, v in sorted(result.worker_exits.items())) or "none"
    lines += [
        "",
        f"items      accepted {r.accepted}, finished {r.finished} (dead-lettered"
        f" {r.dead_lettered}: poison {result.poison['dead_lettered']}, other"
        f" {result.dead_not_poison}), lost {len(r.lost)}",
        f"order      violations {len(r.order_violations)}",
        f"sub key    violations {len(r.sub_key_violations)} (a handler saw a"
        " current_job().sub_key other than its item's own)",
        f"watermark  violations {len(r.watermark_violations)} (re-acks by a restarted producer"
        f" {r.reacks})",
        f"re-runs    {r.reruns} of {r.starts} starts; items in flight at faults"
        f" {everything.in_flight}; starts by a worker that had lost its lease"
        f" {result.stale_starts}",
        f"fencing    rejected: completions {result.fences.get('completion', 0)}, failure records"
        f" {result.fences.get('failure record', 0)}, renewals"
        f" {result.fences.get('lease renewal', 0)}; leases reaped {result.reaps}"
        + (f"; paused workers fenced after SIGCONT {fenced}/{len(stops)}" if stops else ""),
        f"poison     {result.poison['items']} items, {result.poison['crashes']} crashes, at most"
        f" {result.poison['max_starts']} starts per item",
        f"workers    exits: {exits}",
    ]
    for name, items in (
        ("lost", [str(x) for x in r.lost]),
        ("order", r.order_violations),
        ("watermark", r.watermark_violations),
        ("sub key", r.sub_key_violations),
        ("issue", result.issues),
    ):
        for text in items[:5]:
            lines.append(f"  {name}: {text}")
        if len(items) > 5:
            lines.append(f"  ... {len(items) - 5} more {name} entries")
    verdict = "PASS" if result.ok else f"FAIL ({result.violations} violations)"
    lines.append(
        f"RESULT     {verdict} in {result.elapsed:.0f}s; repeat: {result.config.command()}"
    )
    if not result.ok or result.dead_not_poison:
        lines.append(f"           run dir kept: {result.run_dir}")
    return "\n".join(lines)


def soak_table(results: Sequence[ChaosResult]) -> str:
    """The markdown table of docs/reliability.md: one row per kind, and all kinds together."""
    groups: dict[str, list[ChaosResult]] = defaultdict(list)
    for result in results:
        label = result.config.label or ",".join(result.kinds)
        groups[label].append(result)
    header = (
        "| faults | runs | injected | items | lost | order violations | watermark violations |"
        " re-runs (in flight at faults) | dead-lettered, not poison | other violations |"
        " recovery p50 | recovery p99 | reproduce |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [header]
    total = KindRow("total")
    totals: dict[str, int] = defaultdict(int)
    for label, group in groups.items():
        row = KindRow(label)
        for result in group:
            for f in result.faults:
                row.add(f)
                total.add(f)
        items = sum(r.report.accepted for r in group)
        lost = sum(len(r.report.lost) for r in group)
        order = sum(len(r.report.order_violations) for r in group)
        water = sum(len(r.report.watermark_violations) for r in group)
        reruns = sum(r.report.reruns for r in group)
        innocent = sum(r.dead_not_poison for r in group)
        other = sum(len(r.issues) + len(r.report.sub_key_violations) for r in group)
        for name, value in (
            ("runs", len(group)),
            ("items", items),
            ("lost", lost),
            ("order", order),
            ("water", water),
            ("reruns", reruns),
            ("innocent", innocent),
            ("other", other),
        ):
            totals[name] += value
        commands = "<br>".join(f"`{r.config.command()}`" for r in group)
        lines.append(
            f"| {label} | {len(group)} | {row.faults} | {items} | {lost} | {order} | {water} |"
            f" {reruns} ({row.in_flight}) | {innocent} | {other} |"
            f" {_secs(percentile(row.recoveries, 50))} |"
            f" {_secs(percentile(row.recoveries, 99))} | {commands} |"
        )
    lines.append(
        f"| **total** | {totals['runs']} | {total.faults} | {totals['items']} |"
        f" {totals['lost']} | {totals['order']} | {totals['water']} | {totals['reruns']}"
        f" ({total.in_flight}) | {totals['innocent']} | {totals['other']} |"
        f" {_secs(percentile(total.recoveries, 50))} |"
        f" {_secs(percentile(total.recoveries, 99))} | `./scripts/chaos --soak` |"
    )
    findings = [(r, issue) for r in results for issue in r.issues]
    if findings:
        lines += ["", "Other violations:", ""]
        for r, issue in findings[:40]:
            lines.append(f"- seed {r.config.seed} ({','.join(r.kinds)}): {issue}")
        if len(findings) > 40:
            lines.append(f"- ... {len(findings) - 40} more")
    by_kind = kind_rows([f for r in results for f in r.faults])
    lines += [
        "",
        "Recovery by fault kind over every run (from the injection):",
        "",
        "| fault kind | injected | recovery p50 | recovery p99 | max | not measurable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kr in by_kind:
        lines.append(
            f"| {kr.kind} | {kr.faults} | {_secs(percentile(kr.recoveries, 50))} |"
            f" {_secs(percentile(kr.recoveries, 99))} |"
            f" {_secs(max(kr.recoveries) if kr.recoveries else None)} | {kr.unmeasured} |"
        )
    return "\n".join(lines)
