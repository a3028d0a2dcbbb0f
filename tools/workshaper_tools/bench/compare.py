"""``--compare REF``: the same scenarios on git revision REF and on the working tree, in one run.

REF's files are exported (``git archive``) to a temp dir, and this bench runs in a subprocess
with that dir first on ``sys.path`` and this ``workshaper_tools`` after it: the workshaper of
REF, measured by the bench of the working tree (so both sides are measured the same way, and a
REF from before the bench moved out of ``workshaper/`` works too). Then it runs on the working
tree. Each side measures its own baselines, so the before/after table compares ratios as well
as raw numbers. This is how an optimization's before/after numbers come from one run
(docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from workshaper_tools.bench.common import BenchFailure, say

HERE = Path(__file__).resolve().parent
#: The folder that holds the ``workshaper_tools`` package (``tools/`` of the clone).
TOOLS_ROOT = HERE.parents[1]
#: The clone: ``tools/`` sits in it.
REPO = TOOLS_ROOT.parent


def export(ref: str, repo: Path) -> Path:
    """REF's tree in a temp dir."""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchFailure(f"git archive {ref} failed: {archive.stderr.decode().strip()}")
    target = Path(tempfile.mkdtemp(prefix="ws-bench-ref-"))
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def run_ref(ref: str, argv: list[str], out: Path) -> dict[str, Any]:
    tree = export(ref, REPO)
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(TOOLS_ROOT)]))
        say(f"=== before: {ref} (exported to {tree})")
        proc = subprocess.run(
            [sys.executable, "-m", "workshaper_tools.bench", *argv, "--out", str(out)],
            cwd=tree,
            env=env,
            check=False,
        )
        if proc.returncode == 1:
            raise BenchFailure(f"the run of {ref} broke an invariant or failed")
        data: dict[str, Any] = json.loads((out / "results.json").read_text())
        return data
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def _metrics(results: dict[str, Any]) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    if "s1" in results:
        s = results["s1"]
        rows += [
            ("S1 WorkShaper items/s", s["workshaper_rate"]),
            ("S1 raw queue items/s", s["baseline_rate"]),
            ("S1 ratio to raw queue %", 100 * s["ratio"]),
        ]
    if "s1keys" in results:
        from workshaper_tools.bench.manykeys import metrics  # noqa: PLC0415

        rows += metrics(results["s1keys"])
    if "s2" in results:
        rows += [(f"S2 {r['row']} keys, x ideal", r["factor"]) for r in results["s2"]["rows"]]
    if "s3" in results:
        s = results["s3"]
        rows += [
            ("S3 enqueue->start p50 ms", 1e3 * s["enqueue_to_start"]["p50"]),
            ("S3 enqueue->start p99 ms", 1e3 * s["enqueue_to_start"]["p99"]),
            ("S3 finish->ack p50 ms", 1e3 * s["finish_to_ack"]["p50"]),
            ("S3 finish->ack p99 ms", 1e3 * s["finish_to_ack"]["p99"]),
            ("S3 achieved items/s", s["achieved_rate"]),
        ]
        if "cpu_us_per_item" in s:
            rows.append(("S3 CPU us per item, all processes", sum(s["cpu_us_per_item"].values())))
    if "s4" in results:
        ws = results["s4"]["workshaper"]
        rows += [
            ("S4 round trips/item", ws["round_trips"]),
            ("S4 Redis commands/item", ws["all_commands"]),
            ("S4 Redis CPU us/item", ws["redis_cpu_us"]),
            ("S4 memory bytes/queued item", results["s4"]["memory"]["workshaper_bytes"]),
        ]
    if "s5" in results:
        for r in results["s5"]["by_sub_keys"] + results["s5"]["by_partitions"]:
            rows.append((f"S5 {r['partitions']} p x {r['sub_keys']:,} keys items/s", r["rate"]))
    return rows


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table(ref: str, before: dict[str, Any], after: dict[str, Any]) -> str:
    old = dict(_metrics(before))
    lines = [
        f"| metric | before ({ref}) | after (working tree) | after / before |",
        "|---|---:|---:|---:|",
    ]
    for name, value in _metrics(after):
        if old.get(name):
            lines.append(
                f"| {name} | {_num(old[name])} | {_num(value)} | {value / old[name]:.2f} |"
            )
    return "\n".join(lines) + "\n"
