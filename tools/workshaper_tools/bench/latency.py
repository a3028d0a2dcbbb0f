"""S3: latency at a fixed offered load (issue 9: 10,000 items/s, 1,000 keys), no-op work.

Items are enqueued one ``enqueue`` call each, on a fixed schedule: item i is due at
t0 + i / rate, so latency is measured at a steady load, not at saturation. One Python thread
cannot make 10,000 round trips a second on a small machine, so the schedule is split over
``--s3-producers`` producer processes, each owning the partitions p with
p % producers == its index (a partition has one producer, as a Kafka partition has one
consumer) and keeping the global due times of its items. A producer that falls behind its
schedule sends at once; the rate it actually achieved is reported next to the offered one.

Every timestamp is CLOCK_MONOTONIC (``time.monotonic``), which on Linux is one clock for every
process of the host: the producers' enqueue and ack times and the workers' start and end
times (``handlers.py``) are compared directly. Two distributions:

- enqueue to start: from the ``enqueue`` call to the start of the item's work;
- finish to ack: from the end of the item's work to the ``ack`` call whose watermark covered it.

Before WorkShaper, on the same private server, the same items run through a raw Redis list
queue on the same schedule (``latency_raw.py``): one RPUSH per item from the same number of
producer processes, as many consumers as workers. Its latency and CPU per item are the floor
this machine sets at the offered rate, reported beside WorkShaper's.

With ``trace`` on (``--s3-trace``), the producers record their ack loop's ticks and each
worker its round trips (``handlers.trace_round_trips``), and ``breakdown.py`` splits both
intervals into their hand-offs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from workshaper import Enqueued, Producer
from workshaper.ackloop import AckLoop
from workshaper_tools.bench import latency_raw
from workshaper_tools.bench.common import (
    BenchFailure,
    Items,
    WorkerFleet,
    cpu_seconds,
    joined,
    kill_all,
    latency_stats,
    paced,
    percentile,
    plan_noop,
    private_redis,
    redis_cpu_seconds,
    say,
)
from workshaper_tools.bench.handlers import WorkerTrace, read_traces
from workshaper_tools.bench.verify import AckCall, ack_delays, start_delays, verify
from workshaper_tools.testing.lanes import lanes_option

TARGET_START_P99 = 0.005
TARGET_ACK_P99 = 0.005
#: Seconds the producers wait after they were started before the first item is due (they
#: import, connect and load the scripts first).
START_MARGIN = 2.0


@dataclass(frozen=True)
class ProducerJob:
    url: str
    namespace: str
    index: int  # which producer: owns partitions p with p % producers == index
    producers: int
    rate: float
    t0: float  # CLOCK_MONOTONIC when item 0 is due
    max_in_queue: int
    ack_interval: float | None  # None: the Producer's default
    trace: bool
    out: str  # JSON file for the results
    lanes: int | None = None  # the producer's lanes; None: today's mode


def produce(job: ProducerJob, positions: list[int], tuples: list[Any]) -> None:
    """One producer process: enqueue ``tuples`` (global positions ``positions``) one call
    each on the global schedule, wait until all are acked, write what it saw to ``job.out``."""
    acks: list[tuple[int, int, float]] = []
    ticks: list[tuple[float, list[int]]] = []

    def ack(partition: int, watermark: int) -> None:
        acks.append((partition, watermark, time.monotonic()))

    options: dict[str, Any] = {"max_in_queue": job.max_in_queue, "ack": ack}
    if job.ack_interval is not None:
        options["ack_interval"] = job.ack_interval
    options.update(lanes_option(job.lanes))
    producer = Producer(job.url, job.namespace, **options)
    if job.trace:
        _trace_ticks(producer, ticks)
    called: list[float] = []
    returned: list[float] = []
    lag: list[float] = []
    refused = 0
    monotonic = time.monotonic
    cpu = time.process_time()  # this process, ack loop thread included
    for index in paced(positions, job.t0, job.rate, lag, called):
        if producer.enqueue(*tuples[index]) is not Enqueued.ACCEPTED:
            refused += 1
        returned.append(monotonic())
    done = monotonic()
    flushed = producer.flush(timeout=300.0)
    cpu = time.process_time() - cpu
    producer.close()
    result = {
        "positions": positions,
        "called": called,
        "returned": returned,
        "lag": lag,
        "acks": acks,
        "ticks": ticks,
        "refused": refused,
        "flushed": flushed,
        "first": called[0] if called else job.t0,
        "done": done,
        "cpu": cpu,
    }
    Path(job.out).write_text(json.dumps(result, separators=(",", ":")))


def _trace_ticks(producer: Producer, ticks: list[tuple[float, list[int]]]) -> None:
    """Record when each tick of the producer's ack loop starts (its offer round trip) and
    which partitions it offers (a quiet partition is offered less often). The
    loop's thread is already running, so the bound method is swapped on the instance: its
    ``_run`` looks ``self._tick`` up on every turn."""
    loop = getattr(producer, "_ack_loop", None)
    tick = getattr(loop, "_tick", None)
    if not isinstance(loop, AckLoop) or tick is None:
        return  # the producer changed shape: no ticks, the breakdown says so

    def traced(partitions: list[int]) -> None:
        ticks.append((time.monotonic(), list(partitions)))
        tick(partitions)

    loop._tick = traced  # type: ignore[method-assign]


@dataclass
class S3Run:
    enqueued_at: list[float]  # per planned item, when its enqueue call began
    returned_at: list[float]  # ... and when it returned
    lag: list[float]
    acks: list[AckCall]
    ticks: dict[int, list[float]]  # partition -> when the ack loop ticks offering it began
    records: list[Any]
    traces: list[WorkerTrace]  # per worker, with round trips when traced
    first: float
    last: float  # when the last enqueue call began
    #: CPU seconds from the first item's due time until everything was acked, by process kind
    cpu: dict[str, float] = field(default_factory=dict)


def run_s3(
    url: str,
    items: Items,
    *,
    rate: float,
    producers: int,
    workers: int,
    concurrency: int | None,
    max_in_queue: int,
    ack_interval: float | None,
    trace: bool,
    log_dir: Path,
    timeout: float = 600.0,
    lanes: int | None = None,
) -> S3Run:
    namespace = "l" + uuid.uuid4().hex[:10]
    fleet = WorkerFleet(
        url,
        namespace,
        "workshaper_tools.bench.handlers:noop",
        processes=workers,
        concurrency=concurrency,
        log_dir=log_dir,
        env={"WS_BENCH_TRACE": "1"} if trace else None,
    )
    context = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    outs: list[Path] = []
    try:
        fleet.start()
        client = redis.Redis.from_url(url)
        redis_cpu = redis_cpu_seconds(client)
        workers_cpu = sum(cpu_seconds(pid) for pid in fleet.pids())
        t0 = time.monotonic() + START_MARGIN
        for index in range(producers):
            mine = [i for i, p in enumerate(items.plan.partitions) if p % producers == index]
            out = log_dir / f"producer-{namespace}-{index}.json"
            outs.append(out)
            job = ProducerJob(
                url,
                namespace,
                index,
                producers,
                rate,
                t0,
                max_in_queue,
                ack_interval,
                trace,
                str(out),
                lanes,
            )
            proc = context.Process(
                target=produce, args=(job, mine, [items.tuples[i] for i in mine]), daemon=True
            )
            proc.start()
            procs.append(proc)
        deadline = time.monotonic() + timeout
        for proc in procs:
            if not joined(proc, deadline):
                raise BenchFailure(
                    f"a producer process failed (exit {proc.exitcode}):\n{fleet.logs_tail()}"
                )
            if fleet.exited():
                raise BenchFailure(f"a worker exited during the run:\n{fleet.logs_tail()}")
        workers_cpu = sum(cpu_seconds(pid) for pid in fleet.pids()) - workers_cpu
        redis_cpu = redis_cpu_seconds(client) - redis_cpu
        client.close()
        records = fleet.stop()
    finally:
        kill_all(procs)
        fleet.kill()
    run = _merge(items, outs, records, read_traces(fleet.dump_dir))
    run.cpu.update({"workers": workers_cpu, "redis-server": redis_cpu})
    return run


def _merge(items: Items, outs: list[Path], records: list[Any], traces: list[WorkerTrace]) -> S3Run:
    count = len(items)
    enqueued_at = [0.0] * count
    returned_at = [0.0] * count
    lag: list[float] = []
    acks: list[AckCall] = []
    ticks: dict[int, list[float]] = {}
    first, last = float("inf"), 0.0
    producers_cpu = 0.0
    for out in outs:
        data = json.loads(out.read_text())
        if data["refused"]:
            raise BenchFailure(f"{data['refused']} items were not accepted")
        if not data["flushed"]:
            raise BenchFailure("not everything was acked within the producer's flush timeout")
        for position, called, back in zip(
            data["positions"], data["called"], data["returned"], strict=True
        ):
            enqueued_at[position] = called
            returned_at[position] = back
        lag += data["lag"]
        producers_cpu += data["cpu"]
        acks += [AckCall(p, w, at) for p, w, at in data["acks"]]
        for at, partitions in data["ticks"]:
            for partition in partitions:
                ticks.setdefault(partition, []).append(at)
        if data["called"]:
            first = min(first, data["called"][0])
            last = max(last, data["called"][-1])
    acks.sort(key=lambda a: a.at)
    for at in ticks.values():
        at.sort()
    return S3Run(
        enqueued_at,
        returned_at,
        lag,
        acks,
        ticks,
        records,
        traces,
        first,
        last,
        {"producers": producers_cpu},
    )


def _ms(value: float) -> str:
    return f"{value * 1e3:.2f}"


def _say_floor(floor: dict[str, Any], rate: float, producers: int, consumers: int) -> None:
    s = floor["enqueue_to_start"]
    cpu = ", ".join(f"{kind} {us:.0f} us" for kind, us in floor["cpu_us_per_item"].items())
    say(
        f"  raw list queue on the same schedule ({producers} producer process(es), one RPUSH"
        f" per item; {consumers} consumer(s)): achieved {floor['achieved_rate']:,.0f} items/s;"
        f" RPUSH -> in hand p50 {_ms(s['p50'])} ms, p99 {_ms(s['p99'])} ms, p99.9"
        f" {_ms(s['p99.9'])} ms, max {_ms(s['max'])} ms; CPU per item {cpu} ="
        f" {floor['cores_at_offered_rate']:.2f} cores for {rate:,.0f} items/s"
    )


def scenario_s3(args: Any, log_dir: Path) -> dict[str, Any]:
    rate = float(args.s3_rate)
    count = int(rate * args.s3_seconds)
    producers = max(1, min(int(args.s3_producers), args.partitions))
    items = plan_noop(count, args.partitions, args.sub_keys)
    lanes = getattr(args, "lanes", None)
    with_lanes = "" if lanes is None else f" with {lanes} lanes"
    say(
        f"S3 latency: {rate:,.0f} items/s offered for {args.s3_seconds} s ({count} items, one"
        f" enqueue call each), {producers} producer process(es){with_lanes}, {args.partitions}"
        f" partitions, {args.sub_keys} sub keys, {args.workers} workers x {args.concurrency}"
    )
    load_before = os.getloadavg()
    with private_redis() as server:
        raw = latency_raw.run_raw_s3(
            server.url,
            items,
            rate=rate,
            producers=producers,
            consumers=args.workers,
            log_dir=log_dir,
            t0_margin=START_MARGIN,
        )
        with redis.Redis.from_url(server.url) as client:
            client.flushall()
        run = run_s3(
            server.url,
            items,
            rate=rate,
            producers=producers,
            workers=args.workers,
            concurrency=args.concurrency,
            max_in_queue=args.max_in_queue,
            ack_interval=args.s3_ack_interval,
            trace=args.s3_trace,
            log_dir=log_dir,
            lanes=lanes,
        )
    verdict = verify(items.plan, run.records, run.acks)
    if not verdict.ok:
        raise BenchFailure(f"invariant broken: {verdict.summary()}")
    start_values = start_delays(items.plan, run.records, run.enqueued_at)
    ack_values = ack_delays(items.plan, run.records, run.acks)
    start, ack = latency_stats(start_values), latency_stats(ack_values)
    # Achieved: items over the span of the enqueue calls (first to last call, count - 1 gaps).
    span = run.last - run.first
    achieved = (count - 1) / span if span > 0 else float("nan")
    enqueue_call = latency_stats(
        [b - a for a, b in zip(run.enqueued_at, run.returned_at, strict=True)]
    )
    floor = latency_raw.summary(raw, count, rate)
    met = start["p99"] <= TARGET_START_P99 and ack["p99"] <= TARGET_ACK_P99
    cpu_us = {kind: 1e6 * seconds / count for kind, seconds in run.cpu.items()}
    cores = sum(cpu_us.values()) * rate / 1e6
    _say_floor(floor, rate, producers, args.workers)
    for name, s, target in (
        ("enqueue -> start", start, TARGET_START_P99),
        ("finish -> ack  ", ack, TARGET_ACK_P99),
    ):
        say(
            f"  {name}: p50 {_ms(s['p50'])} ms, p99 {_ms(s['p99'])} ms (target <="
            f" {target * 1e3:.0f} ms), p99.9 {_ms(s['p99.9'])} ms, max {_ms(s['max'])} ms"
        )
    say(
        f"  offered {rate:,.0f} items/s, achieved {achieved:,.0f} items/s; producer schedule lag"
        f" p50 {_ms(percentile(run.lag, 50))} ms, p99 {_ms(percentile(run.lag, 99))} ms;"
        f" one enqueue call p50 {_ms(enqueue_call['p50'])} ms, p99 {_ms(enqueue_call['p99'])}"
        f" ms - {verdict.summary()}"
    )
    say(
        "  CPU per item: "
        + ", ".join(f"{kind} {us:.0f} us" for kind, us in cpu_us.items())
        + f" = {cores:.2f} cores needed for {rate:,.0f} items/s"
        f" (this machine has {os.cpu_count()});"
        f" load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    result: dict[str, Any] = {
        "rate": rate,
        "seconds": args.s3_seconds,
        "items": count,
        "producers": producers,
        "sub_keys": args.sub_keys,
        "partitions": args.partitions,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "ack_interval": args.s3_ack_interval,
        "clock": "CLOCK_MONOTONIC (time.monotonic), one clock for all processes of the host",
        "achieved_rate": achieved,
        "schedule_lag_p50": percentile(run.lag, 50),
        "schedule_lag_p99": percentile(run.lag, 99),
        "enqueue_call": enqueue_call,
        "enqueue_to_start": start,
        "finish_to_ack": ack,
        "targets": {"enqueue_to_start_p99": TARGET_START_P99, "finish_to_ack_p99": TARGET_ACK_P99},
        "met": met,
        "verdict": verdict.summary(),
        "cpu_us_per_item": cpu_us,
        "cores_at_offered_rate": cores,
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
        "raw_queue": floor,
        "_start_delays": start_values,
        "_ack_delays": ack_values,
    }
    if lanes is not None:
        result["lanes"] = lanes
    if args.s3_trace:
        from workshaper_tools.bench.breakdown import breakdown  # noqa: PLC0415

        result["breakdown"] = breakdown(items, run)
    return result
