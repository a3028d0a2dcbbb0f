"""The chaos producer process: ``python -m workshaper_tools.chaos producer ...``."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import redis

from workshaper_tools.chaos.plan import (
    PlanSpec,
    append_line,
    line_count,
    plan_items,
    read_poison,
    read_sent,
)
from workshaper_tools.testing.lanes import lanes_option

log = logging.getLogger("workshaper.chaos")


def producer_main(argv: Sequence[str]) -> int:
    """``python -m workshaper_tools.chaos producer ...``: enqueue the plan at a steady rate
    until the stop file appears, record every ack, then flush and exit 0."""
    import workshaper  # noqa: PLC0415 - keep the harness import light
    from workshaper.errors import BackendUnavailable, RedisLostWrites  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="chaos producer")
    p.add_argument("--redis", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--sub-keys", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--max-in-queue", type=int, required=True)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lanes", type=int, default=None, help="the producer's lanes")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    )
    run_dir: Path = args.run_dir
    progress_path, stop_path = run_dir / "producer.progress", run_dir / "stop-producer"
    poison_path, acks_path = run_dir / "poison.log", run_dir / "acks.log"
    requests_path = run_dir / "poison-requests"
    spec = PlanSpec(args.seed, args.partitions, args.sub_keys)
    ack_fd = os.open(acks_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    source = str(os.getpid())

    def ack(partition: int, offset: int) -> None:
        line = f"{partition} {offset} {time.monotonic():.6f} {source}\n"
        os.write(ack_fd, line.encode())

    # RedisLostWrites (failover, powerloss): sent again as is, so the lost items stay lost and
    # the checker counts them, as the reliability report measures.
    transient = (
        redis.ConnectionError,
        redis.TimeoutError,
        OSError,
        BackendUnavailable,
        RedisLostWrites,
    )

    def retrying(what: str, call: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return call()
            except transient as exc:
                log.warning("%s: %s (retrying)", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    producer = retrying(
        "connect",
        lambda: workshaper.Producer(
            args.redis,
            args.namespace,
            max_in_queue=args.max_in_queue,
            ack=ack,
            **lanes_option(args.lanes),
        ),
    )
    plan = plan_items(spec)
    # A restart re-enqueues everything the killed producer may have sent (its last "sending"
    # mark), as it was sent: poison marks included. Only items never sent get new poison marks,
    # else a poison copy of an item already accepted plainly would be refused as a duplicate.
    done = read_sent(progress_path)
    if done:
        earlier = [next(plan) for _ in range(done)]
        poisoned = set(read_poison(poison_path))
        marks = {
            partition: retrying("watermark", partial(producer.watermark, partition))
            for partition in range(spec.partitions)
        }
        redo = [
            (sub, planned_message(i, (part, offset) in poisoned), part, offset)
            for i, (sub, part, offset) in enumerate(earlier)
            if offset > (-1 if marks[part] is None else marks[part])
        ]
        log.info("restarted after %d items: re-enqueueing %d above the watermark", done, len(redo))
        for start in range(0, len(redo), 200):
            chunk = redo[start : start + 200]
            retrying("re-enqueue", partial(producer.enqueue_many, chunk))
        append_line(progress_path, f"enqueued {done}\n")
    started, base = time.monotonic(), done
    while not stop_path.exists():
        # The harness asks for poison items by appending a line to poison-requests.
        poison_wanted = line_count(requests_path) - line_count(poison_path)
        batch: list[tuple[str | None, dict[str, int], int, int]] = []
        for i in range(done, done + args.batch):
            sub, part, offset = next(plan)
            poison = poison_wanted > 0 and sub is not None
            if poison:
                poison_wanted -= 1
                append_line(poison_path, f"{part} {offset} {sub}\n")
            batch.append((sub, planned_message(i, poison), part, offset))
        append_line(progress_path, f"sending {done + len(batch)}\n")
        retrying("enqueue", partial(producer.enqueue_many, batch))
        done += len(batch)
        append_line(progress_path, f"enqueued {done}\n")
        pause = started + (done - base) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    log.info("stop requested after %d items: flushing", done)
    while not retrying("flush", lambda: producer.flush(timeout=1.0)):
        pass
    append_line(progress_path, f"final {done}\n")
    producer.close()
    os.close(ack_fd)
    return 0


def planned_message(index: int, poison: bool) -> dict[str, int]:
    return {"i": index, "poison": 1} if poison else {"i": index}
