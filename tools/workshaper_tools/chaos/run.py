"""The run loop: start the cluster, warm up, inject the schedule, drain, stop, audit."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

from workshaper.admin import Admin
from workshaper_tools.chaos.audit import ChaosResult, audit
from workshaper_tools.chaos.config import ChaosConfig
from workshaper_tools.chaos.faults import FaultRecord, Faults, fault_schedule
from workshaper_tools.chaos.plan import append_line, namespace_idle


class SkipRun(Exception):
    """Nothing to run here (e.g. only netns faults were asked for, without root)."""


class Harness(Faults):
    """One chaos run. ``run()`` starts everything, injects the schedule, drains, audits."""

    def __init__(self, config: ChaosConfig, out: TextIO | None = None) -> None:
        super().__init__(config, out)
        self.faults: list[FaultRecord] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> ChaosResult:
        started = time.monotonic()
        if not self.kinds:
            if self._own_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise SkipRun("; ".join(f"{k}: {r}" for k, r in self.skipped.items()) or "no faults")
        try:
            self._start()
            self._warm_up()
            self._inject_schedule()
            self._drain()
            self._stop_workers()
            self._read_redis_state()
        finally:
            self.cleanup()
        result = audit(self, self.faults, time.monotonic() - started)
        # Kept for a look: failed runs, and runs that dead-lettered an item that was not poison.
        if result.ok and not result.dead_not_poison and self._own_dir and not self.config.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return result

    # --- the schedule --------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Wait until the pipeline flows (a first ack), so faults hit a busy system."""
        deadline = time.monotonic() + 60
        acks = self.run_dir / "acks.log"
        while time.monotonic() < deadline:
            self._wait(0.1)
            if acks.exists() and acks.stat().st_size > 0:
                break
        else:
            self.issues.append("no ack within 60 s of the start: the pipeline never flowed")
        self._wait(self.config.warmup)

    def _inject_schedule(self) -> None:
        schedule = fault_schedule(self.config, self.kinds)
        deadline = time.monotonic() + self.config.max_seconds
        for planned in schedule:
            if time.monotonic() > deadline:
                self.say(f"chaos: --max-seconds reached after {len(self.faults)} faults")
                break
            self._wait(planned.gap)
            record = self._inject(planned)
            if record is not None:
                self.faults.append(record)
                self.say(
                    f"  fault {len(self.faults):4d} {record.kind:8s} {record.target:10s}"
                    f" {record.detail}"
                )

    # --- the end of a run --------------------------------------------------------------------

    def _drain(self) -> None:
        """Stop producing; wait until every accepted item is acked."""
        append_line(self.run_dir / "stop-producer", "stop\n")
        deadline = time.monotonic() + self.config.drain_timeout
        idle_since: float | None = None
        while not self.producer_done and time.monotonic() < deadline:
            self._wait(0.5)
            # Redis has nothing left to run, yet the producer still waits: the offsets it waits
            # for are gone from Redis (only possible when Redis lost acknowledged writes).
            if self._redis_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5.0:
                    self.issues.append(
                        "drain stuck: Redis has nothing pending, queued or leased, but the"
                        " producer still waits for offsets Redis no longer knows"
                    )
                    return
            else:
                idle_since = None
        if not self.producer_done:
            self.issues.append(
                f"drain timed out after {self.config.drain_timeout:g}s: accepted items were not"
                f" all acked ({self._status_line()})"
            )

    def _redis_idle(self) -> bool:
        assert self.redis is not None
        return namespace_idle(self.redis.url, self.namespace)

    def _status_line(self) -> str:
        try:
            assert self.redis is not None
            admin = Admin(self.redis.url, self.namespace)
            try:
                return "; ".join(
                    f"p{s.partition}: acked {s.acked} pending {s.pending} ready"
                    f" {s.ready_sub_keys} leased {s.leased_sub_keys} blocked {s.blocked_sub_keys}"
                    for s in admin.status()
                )
            finally:
                admin.close()
        except Exception as exc:
            return f"status unavailable: {exc}"


def run_once(config: ChaosConfig, out: TextIO | None) -> ChaosResult | None:
    harness = Harness(config, out)
    try:
        return harness.run()
    except SkipRun as skip:
        if out is not None:
            print(f"chaos: skipped: {skip}", file=out)
        return None
