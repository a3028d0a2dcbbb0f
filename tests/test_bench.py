"""The benchmark suite as a CI smoke test: quick mode runs end to end (no timing assertions),
and its invariant checks fail when fed an order, watermark or loss violation."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from workshaper_tools.bench import __main__ as bench_main
from workshaper_tools.bench import ordering, throughput
from workshaper_tools.bench.common import BenchFailure, Items, plan_noop
from workshaper_tools.bench.handlers import Record
from workshaper_tools.bench.lanes.__main__ import check as lanes_check
from workshaper_tools.bench.throughput import RunConfig, WsRun, run_workshaper
from workshaper_tools.bench.verify import AckCall, Plan, Verdict, ack_delays, verify
from workshaper_tools.testing import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def _run_module(module: str, argv: list[str]) -> str:
    """Run ``python -m module *argv`` in a child process; its stdout (exit 0 asserted)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _run_bench(argv: list[str], out: Path) -> dict[str, Any]:
    """Run the bench in a child process with ``--out out``; its results.json (exit 0 asserted)."""
    _run_module("workshaper_tools.bench", [*argv, "--out", str(out)])
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.mark.parametrize("lanes", [None, 4], ids=["today", "lanes-4"])
def test_quick_mode_runs_every_scenario_and_checks_invariants(
    redis_server: RedisServer, tmp_path: Path, lanes: int | None
) -> None:
    # redis_server: skip (locally) or fail (CI) without redis-server; the bench starts its own.
    results = _run_bench(["--quick", *([] if lanes is None else ["--lanes", str(lanes)])], tmp_path)
    assert {"s1", "s1keys", "s2", "s3", "s4", "s5", "peers"} <= results.keys()
    verdicts = [*results["s1"]["verdicts"], results["s3"]["verdict"]]
    verdicts += [r["verdict"] for r in results["s2"]["rows"]]
    assert results["s2"]["enqueue_batch"] == ordering.ENQUEUE_BATCH == 500
    verdicts += [r["verdict"] for r in results["s5"]["by_sub_keys"]]
    verdicts += [r["verdict"] for r in results["s1keys"]["rows"]]
    assert [r["row"] for r in results["s1keys"]["rows"]] == ["10", "1,000", "one per item"]
    # Every process's share of the cost per item: Redis, the producer, the workers.
    for row in results["s1keys"]["rows"]:
        costs = row["workshaper"]
        assert min(costs["redis_cpu_us"], costs["producer_cpu_us"], costs["workers_cpu_us"]) > 0
        # The ceiling the enqueue sets: the producer alone, with no worker running.
        assert row["enqueue_alone_rate"] > 0
    if lanes is None:
        assert "lanes" not in results and "lanes" not in results["s1keys"]["rows"][0]
    else:
        # Every scenario's producers took the lanes; S1 by key count ran each row both ways.
        for name in ("s1", "s1keys", "s2", "s3", "s4", "s5"):
            assert results[name]["lanes"] == lanes, name
        for row in results["s1keys"]["rows"]:
            assert row["lanes"]["lanes"] == lanes and row["lanes"]["ratio"] > 0
            assert row["lanes"]["workshaper"]["redis_cpu_us"] > 0
            verdicts.append(row["lanes"]["verdict"])
        assert f"| {lanes} lanes: x raw queue |" in (tmp_path / "results.md").read_text()
    for verdict in verdicts:
        assert " 0 lost, 0 order violations, 0 watermark violations" in verdict, verdict
    assert (tmp_path / "results.md").read_text().startswith("Run ")


PLANS: dict[int, Plan] = {}


@pytest.fixture(scope="module")
def real_run(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> WsRun:
    """A small real run (2 worker processes) whose records the tests below tamper with."""
    items = plan_noop(3000, partitions=4, sub_keys=40)
    run = run_workshaper(
        redis_server.url,
        items,
        RunConfig(workers=2, concurrency=4),
        tmp_path_factory.mktemp("bench"),
    )
    PLANS[id(run)] = items.plan
    return run


def _plan(run: WsRun) -> Plan:
    return PLANS[id(run)]


def test_a_real_run_passes_the_check(real_run: WsRun) -> None:
    verdict = verify(_plan(real_run), real_run.records, real_run.ack_calls)
    assert verdict.ok and verdict.finished == 3000, verdict.summary()
    assert len(ack_delays(_plan(real_run), real_run.records, real_run.ack_calls)) == 3000


def _chain_pair(plan: Plan) -> tuple[tuple[int, int], tuple[int, int]]:
    """(partition, offset) of two consecutive items of one sub key."""
    last: dict[tuple[int, object], int] = {}
    for sub, partition, offset in zip(plan.sub_keys, plan.partitions, plan.offsets, strict=True):
        if (partition, sub) in last:
            return (partition, last[(partition, sub)]), (partition, offset)
        last[(partition, sub)] = offset
    raise AssertionError("no sub key with two items")


def test_order_violation_is_caught(real_run: WsRun) -> None:
    plan = _plan(real_run)
    (p, first), (_, second) = _chain_pair(plan)
    ended = next(r[4] for r in real_run.records if (r[0], r[2]) == (p, first))
    records: list[Record] = [
        (r[0], r[1], r[2], ended - 0.001, r[4]) if (r[0], r[2]) == (p, second) else r
        for r in real_run.records
    ]
    verdict = verify(plan, records, real_run.ack_calls)
    assert not verdict.ok and verdict.order_violations >= 1, verdict.summary()


def test_wrong_sub_key_is_caught(real_run: WsRun) -> None:
    records = list(real_run.records)
    p, sub, o, start, end = records[0]
    records[0] = (p, f"{sub}-other", o, start, end)
    verdict = verify(_plan(real_run), records, real_run.ack_calls)
    assert verdict.order_violations == 1, verdict.summary()


def test_watermark_passing_an_unfinished_offset_is_caught(real_run: WsRun) -> None:
    plan = _plan(real_run)
    first = real_run.ack_calls[0]
    end_of_all = max(r[4] for r in real_run.records if r[0] == first.partition)
    last_offset = max(
        o for p, o in zip(plan.partitions, plan.offsets, strict=True) if p == first.partition
    )
    early = AckCall(first.partition, last_offset, end_of_all - 0.5)  # before the work ended
    verdict = verify(plan, real_run.records, [early, *real_run.ack_calls[1:]])
    assert not verdict.ok and verdict.watermark_violations >= 1, verdict.summary()


def test_acks_that_do_not_increase_are_caught(real_run: WsRun) -> None:
    calls = list(real_run.ack_calls)
    repeated = dataclasses.replace(calls[0], at=calls[-1].at + 1)
    verdict = verify(_plan(real_run), real_run.records, [*calls, repeated])
    assert verdict.watermark_violations == 1, verdict.summary()


def test_lost_item_is_caught(real_run: WsRun) -> None:
    verdict = verify(_plan(real_run), real_run.records[1:], real_run.ack_calls)
    assert verdict.lost >= 1 and not verdict.ok, verdict.summary()


def test_a_broken_verdict_fails_the_bench(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        throughput, "verify", lambda *args: Verdict(items=1, finished=1, order_violations=1)
    )
    status = bench_main.run(["--quick", "--only", "s1", "--s1-items", "2000"])
    assert status == 1


def test_schedule_bound_packs_whole_chains() -> None:
    """Three 1 s chains on two slots cannot end before 2 s, though total / slots is 1.5 s;
    unordered items are chains of one."""
    subs = ["a", "a", "b", "c", None, None]
    sleeps = [500_000, 500_000, 1_000_000, 1_000_000, 250_000, 250_000]
    items = Items(Plan(subs, [0] * 6, list(range(6))), [])
    assert ordering.schedule_bound(items, sleeps, 2) == 2.0
    assert ordering.schedule_bound(items, sleeps, 4) == 1.0
    assert ordering.ideal_seconds(items, sleeps, 2)[0] == 1.75


def test_backpressure_run_holds_room_until_the_watermark_passes() -> None:
    """Two slots, max_in_queue 2, three items of distinct keys taking 10, 1 and 1 s: the third
    waits for the first (the watermark), not for the second, so the run takes 11 s where
    the ideal is 6 s. Costs per item and per ack add where they fall (the run ends with the
    last ack, as the bench's clock does)."""
    items = Items(Plan(["a", "b", "c"], [0] * 3, [0, 1, 2]), [])
    sleeps = [10_000_000, 1_000_000, 1_000_000]
    assert ordering.backpressure_run(items, sleeps, 2, 2) == 11.0
    assert ordering.backpressure_run(items, sleeps, 2, 3) == 10.0
    assert ordering.backpressure_run(items, sleeps, 2, 2, ack_us=500_000) == 12.0
    assert ordering.backpressure_run(items, sleeps, 2, 2, start_us=1_000_000) == 13.0
    # One at a time: every item waits for the one before it to be acked.
    assert ordering.backpressure_run(items, sleeps, 3, 1) == 12.0
    with pytest.raises(ValueError, match="max_in_queue 0 admits nothing"):
        ordering.backpressure_run(items, sleeps, 2, 0)


def test_backpressure_run_keeps_key_order_and_partitions_apart() -> None:
    """A key's items run one after another; each partition has its own room; unordered
    items (None) run wherever a slot is free."""
    items = Items(Plan(["a", "a", None, None], [0, 0, 1, 1], [0, 1, 0, 1]), [])
    sleeps = [1_000_000] * 4
    assert ordering.backpressure_run(items, sleeps, 4, 10) == 2.0  # a's chain
    # max_in_queue 1: one producer waits at the first full partition (item 1 until item 0 is
    # acked at 1 s); then partition 1's items go one at a time: 1-2 s and 2-3 s.
    assert ordering.backpressure_run(items, sleeps, 4, 1) == 3.0
    assert ordering.backpressure_run(items, sleeps, 4, 2) == 2.0  # each partition its own room
    assert ordering.backpressure_run(items, sleeps, 1, 10) == 4.0  # one slot: one at a time
    plan, s2 = ordering.plan_sleeps(2000, "1000")
    ideal = ordering.ideal_seconds(plan, s2, 16)[0]
    tight, loose = (ordering.backpressure_run(plan, s2, 16, m) for m in (25, 2000))
    assert ideal <= loose <= tight


def test_the_reference_scheduler_keeps_order_acks_and_backpressure() -> None:
    """The yardstick of the embedded rows gives the Manager's guarantees of order, acks and
    backpressure: each sub key's items in order, each partition acked at contiguous
    watermarks up to its last offset, and no item started while max_in_queue items above the
    watermark were ahead of it."""
    from workshaper_tools.bench.reference import MinimalScheduler, run_minimal

    rng = random.Random(7)
    offsets = {0: 0, 1: 0}
    items = []
    for _ in range(400):
        partition = rng.randrange(2)
        sub = None if rng.random() < 0.1 else f"k{rng.randrange(20)}"
        items.append((sub, rng.randrange(300), partition, offsets[partition]))
        offsets[partition] += 1
    last = {p: n - 1 for p, n in offsets.items()}
    lock = threading.Lock()
    started: list[tuple[int, int]] = []
    acks: list[tuple[int, int]] = []
    watermark = {0: -1, 1: -1}
    max_in_queue = 5

    overruns: list[tuple[int, int]] = []

    def work(message: int, partition: int, offset: int) -> None:
        with lock:
            started.append((partition, offset))
            if offset - watermark[partition] > max_in_queue:
                overruns.append((partition, offset))
        time.sleep(message / 1e6)

    def ack(partition: int, offset: int) -> None:
        with lock:
            acks.append((partition, offset))
            watermark[partition] = offset

    scheduler = MinimalScheduler(work, ack, max_in_queue, slots=4)
    try:
        for item in items:
            scheduler.enqueue(*item)
        assert scheduler.flush(timeout=60)
    finally:
        scheduler.close()
    assert not overruns
    assert sorted(started) == sorted((p, o) for _, _, p, o in items)
    position = {run: i for i, run in enumerate(started)}
    by_key: dict[Any, list[int]] = {}
    for sub, _, partition, offset in items:
        if sub is not None:
            by_key.setdefault(sub, []).append(position[(partition, offset)])
    assert all(runs == sorted(runs) for runs in by_key.values())
    for partition, end in last.items():
        marks = [o for p, o in acks if p == partition]
        assert marks == sorted(set(marks)) and marks[-1] == end
    # run_minimal: the same, timed, with the last watermark of each partition.
    seconds, cpu, acked = run_minimal(items, lambda *_: None, max_in_queue, 4)
    assert acked == last and seconds > 0 and cpu >= 0


def test_lane_read_micro_reads_takes_and_decodes_every_entry_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lanes worker's per-item read: every entry decoded exactly once (one_round checks
    the count), in runs of one sub key and of several."""
    from workshaper_tools.bench import lane_read_micro

    entries = lane_read_micro.entries_of(300, 7, seed=3)
    assert lane_read_micro.one_round(entries, 1) > 0
    assert lane_read_micro.one_round(entries, 4) > 0
    lane_read_micro.main(["--entries", "200", "--sub-keys", "5", "--rounds", "2"])
    assert "us per item (200 entries, 5 sub keys" in capsys.readouterr().out


def test_cycle_micro_times_one_items_calls_and_compares_two_trees(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The single-thread cost of an item's enqueue, claim, completion and offer: each run's best
    timing, and with --compare alternating runs of two trees in fresh processes."""
    from workshaper_tools.bench import cycle_micro

    assert cycle_micro.run(20, chunks=2) > 0
    assert cycle_micro.main(["--cycles", "20", "--runs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("best of 2: ")
    assert cycle_micro.main(["--cycles", "20", "--runs", "1", "--compare", str(ROOT)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:2]] == ["before", "after"]
    assert lines[2].startswith("before best of 1: ") and lines[3].startswith("after  best of 1: ")


def test_embedded_bench_names_what_backpressure_alone_costs_s2() -> None:
    """The line printed before the embedded S2 rows: the seeded S2 plan with no overhead at
    all is 1.13x its ideal at the seed's max_in_queue of 25, and at the ideal at 1,000."""
    from workshaper_tools.bench import embedded

    line = embedded.describe_floors([25, 1000])
    assert line == (
        "S2 with no overhead at all (ideal 1.56 s): max_in_queue 25: 1.76 s = 1.13x;"
        " max_in_queue 1000: 1.57 s = 1.00x"
    )


def test_s3_trace_splits_both_latencies_by_hand_off(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """S3 with several producer processes and the trace on: every item is checked, and the
    breakdown names each stage of both intervals (no timing is asserted)."""
    argv = ["--quick", "--only", "s3", "--s3-producers", "2", "--s3-trace"]
    argv += ["--s3-rate", "2000"]
    s3 = _run_bench(argv, tmp_path)["s3"]
    assert s3["producers"] == 2
    assert " 0 lost, 0 order violations, 0 watermark violations" in s3["verdict"]
    assert s3["enqueue_to_start"]["count"] == s3["items"]
    # The raw queue's floor ran on the same schedule: every item handed out once (else the
    # bench fails), with its CPU split by process kind.
    floor = s3["raw_queue"]
    assert floor["enqueue_to_start"]["count"] == s3["items"]
    assert set(floor["cpu_us_per_item"]) == {"producers", "consumers", "redis-server"}
    stages = s3["breakdown"]
    assert list(stages["enqueue_to_start"]["stages"]) == [
        "enqueue call",
        "bell",
        "coordinator",
        "worker round trip",
        "hand-off",
    ]
    assert set(stages["ack_tick_gap"]) == {"p50", "p99", "p99.9", "max"}
    assert set(stages["enqueue_to_start"]["bell_out_of_slots"]) == {"mean", "tail_mean"}
    assert list(stages["finish_to_ack"]["stages"]) == [
        "head of line",
        "completion",
        "ack loop wait",
        "offer and ack",
    ]


def test_embedded_bench_repeats_rows_and_compares_two_trees(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workshaper_tools.bench import embedded

    small = ["--backend", "embedded", "--only", "s1", "--items", "300"]
    assert embedded.main([*small, "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6  # two runs of two rows, then each row's median
    assert all(line.startswith("median of 2: embedded  S1") for line in lines[4:])
    # This tree against itself: each round runs both sides in fresh processes.
    assert embedded.main([*small, "--compare", str(ROOT)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:4]] == ["before", "before", "after", "after"]
    assert sum(line.startswith(("before median of 1", "after  median of 1")) for line in lines) == 4
    assert embedded._without_options(
        ["--rounds", "3", "--compare=/x", "--items", "5"], {"--compare": 1, "--rounds": 1}
    ) == ["--items", "5"]
    # --threads: each row is preceded by the CPU of the Manager's threads, by part.
    assert embedded.main([*small, "--threads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[::2]] == ["CPU by thread"] * 2
    # (the embedded Manager's threads: the runner's, which run, record and ack; its caller's)
    assert all("executors" in line and "enqueueing thread" in line for line in lines[::2])
    # --machine: one line first, with the hand-off costs and the loop's speed.
    assert embedded.main([*small, "--machine"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("machine: a thread hand-off round trip costs ")
    assert "on one CPU" in first and "additions in a Python loop take" in first
    assert embedded.handoff_round_trip_us((0, 0)) > 0


def _lane_spike_rows(argv: list[str], marker: str) -> list[str]:
    """Run the lane spike with ``argv`` (exit 0 asserted); its lines that contain ``marker``."""
    out = _run_module("workshaper_tools.bench.lanes", argv)
    return [line for line in out.splitlines() if marker in line]


def test_the_lane_spike_runs_every_row_of_s1_and_s2_in_order() -> None:
    # The design spike of issue 9 (workshaper_tools.bench.lanes): every row's items ran once
    # and in order per sub key (its check raises otherwise, and the command exits non-zero).
    s1 = _lane_spike_rows(["--items", "3000", "--lanes", "4"], "items/s")
    s2 = _lane_spike_rows(["--s2", "--items", "400"], "ideal")
    assert (len(s1), len(s2)) == (3, 4)
    assert all("every item ran once, in order per sub key" in row for row in s1 + s2)


def test_the_lane_spikes_check_catches_loss_and_disorder() -> None:
    items = plan_noop(40, 2, 3)
    records = [
        (p, str(s), o, float(i))
        for i, (s, p, o) in enumerate(
            zip(items.plan.sub_keys, items.plan.partitions, items.plan.offsets, strict=True)
        )
    ]
    lanes_check(items, records)  # as planned: passes
    with pytest.raises(BenchFailure, match="ran 39 items"):
        lanes_check(items, records[1:])
    same_key = [i for i, r in enumerate(records) if r[:2] == records[0][:2]]
    first, second = same_key[0], same_key[1]
    swapped = list(records)
    swapped[first] = (*records[first][:3], records[second][3])
    swapped[second] = (*records[second][:3], records[first][3])
    with pytest.raises(BenchFailure, match="order broken"):
        lanes_check(items, swapped)


def test_lua_cost_runs_the_scripts_of_a_tree_at_either_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every item enqueued, claimed and completed, at one sub key per item and with sub keys
    whose lists are there already when a later enqueue comes (no timing is asserted)."""
    from workshaper_tools.bench import lua_cost

    lua_cost.main(["WT", "--rounds", "1", "--items", "60", "--per-call", "25"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 rounds of 60 items (one sub key each, 25 per enqueue call) per revision"
    assert [line.split()[1] for line in lines[1:]] == list(lua_cost.SCRIPTS)
    assert lines[1].split()[3] == "3"  # enqueue calls
    lua_cost.main(["WT", "--rounds", "2", "--items", "300", "--sub-keys", "40", "--per-call", "25"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("2 rounds of 300 items (40 sub keys, 25 per enqueue call)")
    assert lines[1].split()[3] == "24"  # 12 per round
    with pytest.raises(SystemExit):
        lua_cost.main(["WT", "--items", "300", "--sub-keys", "2"])  # 150 items in one sub key


def test_a_bad_s2_enqueue_batch_is_refused_naming_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workshaper_tools.bench", "--only", "s2", "--s2-enqueue-batch", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--s2-enqueue-batch must be at least 1, got 0" in proc.stderr
