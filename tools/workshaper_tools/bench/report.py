"""Results as markdown tables and PNG charts (matplotlib, optional), and the profiled S1 run."""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any

from workshaper_tools.bench.common import plan_noop, private_redis, say


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _ms(value: float) -> str:
    return f"{value * 1e3:.2f}"


def missed_targets(results: dict[str, Any]) -> list[str]:
    missed = []
    if "s1" in results and not results["s1"]["met"]:
        missed.append(f"S1 {results['s1']['ratio']:.0%} of the raw queue (target >= 50%)")
    if "s2" in results and not results["s2"]["met"]:
        worst = max((r for r in results["s2"]["rows"] if r["in_target"]), key=lambda r: r["factor"])
        missed.append(f"S2 {worst['row']} keys at {worst['factor']:.2f}x ideal (target <= 1.1x)")
    if "s3" in results and not results["s3"]["met"]:
        s3 = results["s3"]
        limits = s3.get("targets", {})
        missed.append(
            f"S3 p99 enqueue->start {_ms(s3['enqueue_to_start']['p99'])} ms"
            f" (<= {_ms(limits.get('enqueue_to_start_p99', 0.005))}),"
            f" finish->ack {_ms(s3['finish_to_ack']['p99'])} ms"
            f" (<= {_ms(limits.get('finish_to_ack_p99', 0.005))})"
        )
    return missed


def _s3_markdown(s: dict[str, Any]) -> list[str]:
    targets = s.get("targets", {})
    out = [
        "",
        f"### S3 latency at {s['rate']:,.0f} items/s offered ({s['items']:,} items, one enqueue"
        f" call each, {s.get('producers', 1)} producer process(es), {s.get('sub_keys', '?')}"
        f" sub keys; achieved {s['achieved_rate']:,.0f}/s)",
        "",
        "| interval | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | target p99 |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, key in (
        ("enqueue -> start of work", "enqueue_to_start"),
        ("end of work -> ack call", "finish_to_ack"),
    ):
        d = s[key]
        limit = targets.get(f"{key}_p99", 0.005)
        ok = d["p99"] <= limit
        out.append(
            f"| {label} | {_ms(d['p50'])} | {_ms(d['p95'])} | {_ms(d['p99'])} |"
            f" {_ms(d.get('p99.9', math.nan))} | {_ms(d['max'])} |"
            f" <= {limit * 1e3:.0f} ms: {'met' if ok else '**missed**'} |"
        )
    raw = s.get("raw_queue")
    if raw:
        d = raw["enqueue_to_start"]
        out.append(
            f"| raw list queue, same schedule: RPUSH -> in a consumer's hand | {_ms(d['p50'])} |"
            f" {_ms(d['p95'])} | {_ms(d['p99'])} | {_ms(d['p99.9'])} | {_ms(d['max'])} |"
            " the machine's floor |"
        )
    if "enqueue_call" in s:
        out += [
            "",
            f"Offered {s['rate']:,.0f} items/s, achieved {s['achieved_rate']:,.0f} items/s"
            f" (producer schedule lag p99 {_ms(s['schedule_lag_p99'])} ms; one enqueue call"
            f" p50 {_ms(s['enqueue_call']['p50'])} ms, p99 {_ms(s['enqueue_call']['p99'])} ms)."
            f" Clock: {s.get('clock', 'CLOCK_MONOTONIC')}.",
        ]
    if "cpu_us_per_item" in s:
        cpu = ", ".join(f"{kind} {us:.0f} us" for kind, us in s["cpu_us_per_item"].items())
        out += [
            "",
            f"CPU per item: {cpu}; at {s['rate']:,.0f} items/s that is"
            f" {s['cores_at_offered_rate']:.2f} cores. Load average {s['load_before']:.2f}"
            f" before S3, {s['load_after']:.2f} after.",
        ]
    if raw:
        cpu = ", ".join(f"{kind} {us:.0f} us" for kind, us in raw["cpu_us_per_item"].items())
        out += [
            "",
            f"The raw list queue on the same schedule (one RPUSH per item, same producer"
            f" processes; no order, acks or dedupe) achieved {raw['achieved_rate']:,.0f}"
            f" items/s; CPU per item: {cpu}, {raw['cores_at_offered_rate']:.2f} cores at"
            f" {s['rate']:,.0f} items/s.",
        ]
    for key, title in (
        ("enqueue_to_start", "enqueue -> start"),
        ("finish_to_ack", "finish -> ack"),
    ):
        part = s.get("breakdown", {}).get(key)
        if not part:
            continue
        out += [
            "",
            f"Breakdown of {title} ({part['tail_items']:,} items above its p99 = the tail):",
            "",
            "| stage | p50 ms | p99 ms | mean ms | mean in the tail ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, d in part["stages"].items():
            out.append(
                f"| {name} | {_ms(d['p50'])} | {_ms(d['p99'])} | {_ms(d['mean'])} |"
                f" {_ms(d['tail_mean'])} |"
            )
    blocked = s.get("breakdown", {}).get("enqueue_to_start", {}).get("bell_out_of_slots")
    if blocked:
        out += [
            "",
            "Of the bell stage, time the waker had no free slot (not in BZPOPMIN): mean"
            f" {_ms(blocked['mean'])} ms, mean in the tail {_ms(blocked['tail_mean'])} ms.",
        ]
    gap = s.get("breakdown", {}).get("ack_tick_gap")
    if gap:
        out += [
            "",
            f"Gap between the ack loop tick that made an ack and the partition's previous tick:"
            f" p50 {_ms(gap['p50'])} ms, p99 {_ms(gap['p99'])} ms, max {_ms(gap['max'])} ms.",
        ]
    return out


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    m = results["machine"]
    out.append(
        f"Run {m['started']}, {'quick' if results['quick'] else 'full'} mode, {m['cpus']} CPUs,"
        f" Python {m['python']}, load average before {m['load_before'][0]:.2f}."
    )
    if results.get("lanes") is not None:
        out[-1] += (
            f" Every scenario's producers with lanes={results['lanes']} (S1 by key count: each"
            " row in today's mode and with lanes)."
        )
    if "s1" in results:
        s = results["s1"]
        out += [
            "",
            f"### S1 throughput ({s['items']:,} items, {s['partitions']} partitions,"
            f" {s['sub_keys']:,} sub keys, {s['workers']} workers x {s['concurrency']})",
            "",
            "| system | items/s (median) | runs | vs raw list queue |",
            "|---|---:|---|---:|",
            f"| raw Redis list queue (baseline) | {_fmt(s['baseline_rate'])} |"
            f" {', '.join(_fmt(r) for r in s['baseline_rates'])} | 100% |",
            f"| WorkShaper | {_fmt(s['workshaper_rate'])} |"
            f" {', '.join(_fmt(r) for r in s['workshaper_rates'])} | **{s['ratio']:.1%}**"
            f" (target >= 50%: {'met' if s['met'] else 'missed'}) |",
        ]
        if "peers" in results:
            for row in results["peers"]["rows"]:
                out.append(
                    f"| {row['name']} ({row['items']:,} jobs) | {_fmt(row['rate'])} | |"
                    f" {_fmt(100 * (row['vs_baseline'] or math.nan), '.2f')}% |"
                )
    elif "peers" in results:
        out += ["", "| peer | jobs/s |", "|---|---:|"]
        out += [f"| {r['name']} | {_fmt(r['rate'])} |" for r in results["peers"]["rows"]]
    if "s1keys" in results:
        from workshaper_tools.bench.manykeys import markdown as s1keys_markdown  # noqa: PLC0415

        out += s1keys_markdown(results["s1keys"])
    if "s2" in results:
        s = results["s2"]
        out += [
            "",
            f"### S2 Parallel Consumer's table ({s['items']:,} items, one partition, sleep 0-5"
            f" ms, {s['slots']} slots)",
            "",
            "| keys | WorkShaper s | ideal s | x ideal | efficiency | x bound of the work as run"
            " | x best chain schedule | Parallel Consumer s (published) | target |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in s["rows"]:
            target = "-" if r["met"] is None else ("met" if r["met"] else "**missed**")
            out.append(
                f"| {r['row']} | {r['seconds']:.3f} | {r['ideal']:.3f} | {r['factor']:.2f} |"
                f" {r['efficiency']:.0%} | {_fmt(r.get('measured_factor'), '.2f')} |"
                f" {_fmt(r.get('schedule_factor'), '.2f')} |"
                f" {_fmt(r['pc_published'], '.3f')} | {target} |"
            )
        out.append("")
        out.append(
            f"Total work {s['rows'][0]['total_work']:.2f} s (sum of planned sleeps);"
            " ideal = max(total / slots, longest key chain); best chain schedule = the"
            " longest-chain-first packing of whole key chains on the slots (a key's items"
            " cannot run side by side)."
        )
    if "s3" in results:
        out += _s3_markdown(results["s3"])
    if "s4" in results:
        s = results["s4"]
        ws, raw, mem = s["workshaper"], s["raw_queue"], s["memory"]
        out += [
            "",
            f"### S4 cost per item at saturation (S1 run, {s['items']:,} items)",
            "",
            "| per item | WorkShaper | raw list queue |",
            "|---|---:|---:|",
            f"| round trips (server socket reads) | {ws['round_trips']:.4f} |"
            f" {raw['round_trips']:.4f} |",
            f"| Lua scripts (EVALSHA) | {ws['scripts']:.4f} | {raw['scripts']:.4f} |",
            f"| Redis commands, incl. inside scripts | {ws['all_commands']:.2f} |"
            f" {raw['all_commands']:.2f} |",
            f"| Redis CPU us | {ws['redis_cpu_us']:.2f} | {raw['redis_cpu_us']:.2f} |",
            f"| bytes sent to Redis | {ws['net_in_bytes']:.0f} | {raw['net_in_bytes']:.0f} |",
            f"| Redis memory bytes per queued item ({mem['message_bytes']}-byte message) |"
            f" {mem['workshaper_bytes']:.0f} | {mem['raw_list_bytes']:.0f} |",
            "",
            "CPU per item by process: "
            + ", ".join(f"{k} {v:.1f} us" for k, v in s.get("cpu_us_by_process", {}).items())
            + f" (wall time per item {s.get('wall_us', 0):.1f} us on 2 cores). "
            + "Worker peak RSS: "
            + ", ".join(f"{m:.0f} MiB" for m in s["worker_peak_rss_mib"])
            + ". Commands per item inside WorkShaper's scripts: "
            + ", ".join(f"{k} {v:.2f}" for k, v in ws["commands"].items())
            + ". Memory per queued item by key: "
            + ", ".join(f"{k} {v:.0f} B" for k, v in mem["by_kind"].items())
            + ".",
        ]
    if "s5" in results:
        s = results["s5"]
        out += [
            "",
            "### S5 growth",
            "",
            "| partitions | sub keys (used) | items | items/s | Redis peak MiB | worker RSS MiB"
            " | Redis CPU us/item | round trips/item |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["by_sub_keys"] + s["by_partitions"]:
            out.append(
                f"| {r['partitions']} | {r['sub_keys']:,} ({r['distinct_sub_keys']:,}) |"
                f" {r['items']:,} | {_fmt(r['rate'])} | {r['redis_peak_mib']:.0f} |"
                f" {r['worker_peak_rss_mib']:.0f} | {r['redis_cpu_us']:.1f} |"
                f" {r['round_trips']:.3f} |"
            )
    if "peers" in results and results["peers"]["skipped"]:
        out.append("")
        out.append(f"Peers skipped (not installed): {', '.join(results['peers']['skipped'])}.")
    if "profile" in results:
        out += ["", "### Profile of an S1 run (py-spy --gil: Python CPU samples)"]
        for p in results["profile"]["summaries"]:
            out += [
                "",
                f"**{p['label']}** ({p['samples']} samples). By area: "
                + ", ".join(f"{a} {v:.0f}%" for a, v in p["areas"]),
                "",
                "| self time | % | inclusive | % |",
                "|---|---:|---|---:|",
            ]
            for (sf, sv), (inf, iv) in zip(p["self_top"], p["inclusive_top"], strict=False):
                out.append(f"| `{sf}` | {sv:.1f} | `{inf}` | {iv:.1f} |")
    return "\n".join(out) + "\n"


def charts(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per scenario; none (with a note) when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        say("matplotlib is not installed: no charts (scripts/bench installs it)")
        return []
    mpl: Any = importlib.import_module("matplotlib")
    mpl.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    img = out_dir / "img"
    img.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = img / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    if "s1" in results:
        s = results["s1"]
        names = ["raw list queue", "WorkShaper"]
        rates = [s["baseline_rate"], s["workshaper_rate"]]
        for row in results.get("peers", {}).get("rows", []):
            names.append(row["name"])
            rates.append(row["rate"])
        fig, ax = plt.subplots(figsize=(8, 4))
        bars = ax.barh(names[::-1], rates[::-1], color="#4878a8")
        ax.set_xscale("log")
        ax.set_xlabel("items/s (log scale), same run, same Redis")
        ax.set_title(
            f"S1 throughput, no-op work: WorkShaper = {s['ratio']:.1%} of the raw queue"
            " (target 50%)"
        )
        for bar, rate in zip(bars, rates[::-1], strict=True):
            ax.text(rate, bar.get_y() + bar.get_height() / 2, f" {rate:,.0f}", va="center")
        ax.set_xlim(right=max(rates) * 8)
        save(fig, "s1-throughput.png")
    if "s2" in results:
        rows = results["s2"]["rows"]
        labels = [r["row"] for r in rows]
        x = range(len(rows))
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.bar([i - 0.2 for i in x], [r["seconds"] for r in rows], 0.4, label="WorkShaper")
        ax.bar([i + 0.2 for i in x], [r["ideal"] for r in rows], 0.4, label="ideal bound")
        pcs = [(i, r["pc_published"]) for i, r in enumerate(rows) if r["pc_published"]]
        if pcs:
            ax.scatter(
                [i for i, _ in pcs],
                [v for _, v in pcs],
                marker="D",
                color="black",
                zorder=3,
                label="Parallel Consumer (published)",
            )
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("seconds (log scale)")
        ax.set_xlabel("keys")
        ax.set_title("S2 Parallel Consumer's table: 10k items x 0-5 ms sleep, 16 slots")
        for i, r in enumerate(rows):
            ax.text(i, r["seconds"] * 1.08, f"{r['factor']:.2f}x", ha="center", fontsize=8)
        ax.legend()
        save(fig, "s2-ordering.png")
    if "s3" in results:
        s = results["s3"]
        fig, ax = plt.subplots(figsize=(8, 4))
        for key, label in (
            ("_start_delays", "enqueue -> start"),
            ("_ack_delays", "end of work -> ack"),
        ):
            values = sorted(v * 1e3 for v in s.get(key, []))
            if values:
                ys = [100.0 * (i + 1) / len(values) for i in range(len(values))]
                ax.plot(values, ys, label=label)
        ax.axvline(5, color="C0", linestyle=":", label="p99 target 5 ms (both)")
        ax.axhline(99, color="grey", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
        ax.set_ylabel("percentile")
        ax.set_title(f"S3 latency at {s['rate']:,.0f} items/s offered")
        ax.legend()
        save(fig, "s3-latency.png")
    if "s4" in results:
        s = results["s4"]
        ws, raw, mem = s["workshaper"], s["raw_queue"], s["memory"]
        metrics = [
            ("round trips", ws["round_trips"], raw["round_trips"]),
            ("Redis commands", ws["all_commands"], raw["all_commands"]),
            ("Redis CPU us", ws["redis_cpu_us"], raw["redis_cpu_us"]),
            ("memory bytes queued", mem["workshaper_bytes"], mem["raw_list_bytes"]),
        ]
        fig, axes = plt.subplots(1, 4, figsize=(11, 3.5))
        for ax, (label, a, b) in zip(axes, metrics, strict=True):
            ax.bar(["WorkShaper", "raw queue"], [a, b], color=["#4878a8", "#a0a0a0"])
            ax.set_title(f"{label} per item", fontsize=10)
            ax.text(0, a, f"{a:.3g}", ha="center", va="bottom")
            ax.text(1, b, f"{b:.3g}", ha="center", va="bottom")
        fig.suptitle("S4 cost per item at saturation")
        save(fig, "s4-cost.png")
    if "s5" in results:
        s = results["s5"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, rows, key, label in (
            (axes[0], s["by_sub_keys"], "sub_keys", "sub keys (8 partitions)"),
            (axes[1], s["by_partitions"], "partitions", "partitions (1,000 sub keys)"),
        ):
            xs = [r[key] for r in rows]
            ax.plot(xs, [r["rate"] for r in rows], "o-", color="C0", label="items/s")
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("items/s", color="C0")
            ax.set_ylim(bottom=0)
            twin = ax.twinx()
            twin.plot(xs, [r["redis_peak_mib"] for r in rows], "s--", color="C3")
            twin.set_ylabel("Redis peak MiB", color="C3")
            twin.set_ylim(bottom=0)
        fig.suptitle("S5 growth: throughput (solid) and Redis peak memory (dashed)")
        save(fig, "s5-growth.png")
    return made


def profile_run(args: Any, log_dir: Path) -> dict[str, Any]:
    """One S1-sized WorkShaper run with py-spy on the producer and each worker process."""
    from workshaper_tools.bench.cost import per_item  # noqa: PLC0415
    from workshaper_tools.bench.throughput import RunConfig, run_workshaper  # noqa: PLC0415

    items = plan_noop(args.s1_items, args.partitions, args.sub_keys)
    config = RunConfig(
        workers=args.workers,
        concurrency=args.concurrency,
        max_in_queue=args.max_in_queue,
        lanes=getattr(args, "lanes", None),
    )
    say(f"Profile: S1 run of {len(items):,} items under py-spy (slower than unprofiled)")
    profile_dir = log_dir / "profiles"
    profile_dir.mkdir(exist_ok=True)
    with private_redis() as server:
        run = run_workshaper(server.url, items, config, log_dir, profile_dir=profile_dir)
    summaries = [
        {
            "label": p.label,
            "samples": p.samples,
            "self_top": p.self_top,
            "inclusive_top": p.inclusive_top,
            "areas": p.areas,
        }
        for p in run.profiles
    ]
    for p in summaries:
        say(f"  {p['label']}: " + ", ".join(f"{a} {v:.0f}%" for a, v in p["areas"][:6]))
    return {
        "rate": run.rate,
        "dir": str(profile_dir),
        "summaries": summaries,
        "cost": per_item(run.cost, run.items),
    }
