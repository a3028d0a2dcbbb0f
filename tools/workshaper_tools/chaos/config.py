"""What a chaos run does: its fault kinds, its settings (``ChaosConfig``, and the command line
that repeats it), and the runs of the soak."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Every fault kind the guarantees cover, in the order of the tables ("all").
FAULT_KINDS = ("kill", "stop", "redis", "proxy", "netns", "poison", "producer")
#: Faults outside the guarantees, to show what they cost (never part of "all"): a failover to
#: an asynchronous replica that lags, and a Redis host crash that loses the AOF tail not yet
#: fsynced (what ``appendfsync everysec`` risks).
LOSSY_KINDS = ("failover", "powerloss")
KNOWN_KINDS = FAULT_KINDS + LOSSY_KINDS
#: Kinds whose in-flight items are those of one worker (the others touch every client).
WORKER_FAULTS = ("kill", "stop", "netns")


@dataclass
class ChaosConfig:
    faults: tuple[str, ...] = FAULT_KINDS
    fault_count: int = 20  # faults to inject
    max_seconds: float = 3600.0  # stop injecting after this long, even if fewer were injected
    seed: int = 1
    workers: int = 3
    concurrency: int = 4
    lease: float = 2.0
    max_attempts: int = 3
    batch_size: int = 20
    partitions: int = 4
    sub_keys: int = 40
    rate: float = 200.0  # items per second offered by the producer
    producer_batch: int = 10  # items per enqueue_many call of the producer
    max_in_queue: int = 200
    work_delay: float = 0.01  # each item sleeps uniform(0, work_delay)
    gap: tuple[float, float] = (0.5, 2.0)  # seconds between faults
    appendfsync: str = "always"
    drain_timeout: float = 240.0
    warmup: float = 1.0
    run_dir: Path | None = None
    keep: bool = False  # keep the run dir (always kept when the run fails)
    label: str = ""  # the soak table's row ("" : the fault kinds)
    lanes: int | None = None  # the producer's lanes (docs/lanes.md); None: today's mode

    def command(self) -> str:
        """The ./scripts/chaos command line that repeats this run."""
        default = ChaosConfig()
        parts = ["./scripts/chaos", "--faults", ",".join(self.faults)]
        flags = {
            "fault_count": "--fault-count",
            "seed": "--seed",
            "workers": "--workers",
            "concurrency": "--concurrency",
            "lease": "--lease",
            "max_attempts": "--max-attempts",
            "batch_size": "--batch-size",
            "partitions": "--partitions",
            "sub_keys": "--sub-keys",
            "rate": "--rate",
            "producer_batch": "--producer-batch",
            "max_in_queue": "--max-in-queue",
            "work_delay": "--work-delay",
            "appendfsync": "--appendfsync",
        }
        for name, flag in flags.items():
            value = getattr(self, name)
            if value != getattr(default, name) or name in ("fault_count", "seed"):
                parts += [flag, _fmt_number(value)]
        if self.gap != default.gap:
            parts += ["--gap", _fmt_number(self.gap[0]), _fmt_number(self.gap[1])]
        if self.lanes is not None:
            parts += ["--lanes", str(self.lanes)]
        return " ".join(parts)


def _fmt_number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def soak_configs(
    base_seed: int, scale: float, kinds: Sequence[str], lanes: int | None = None
) -> list[ChaosConfig]:
    """Each kind alone (two runs), then all kinds together (two runs): over 1,000 faults;
    every run's producer with ``lanes``."""
    per_kind = {"kill": 80, "stop": 75, "redis": 80, "proxy": 75, "netns": 75, "poison": 40}
    per_kind["producer"] = 40
    configs = []
    seed = base_seed
    for kind in kinds:
        for _ in range(2):
            count = max(1, round(per_kind.get(kind, 40) * scale))
            configs.append(ChaosConfig(faults=(kind,), fault_count=count, seed=seed))
            seed += 1
        if kind == "poison":  # and with no other item sharing the crashing process
            count = max(1, round(per_kind[kind] * scale))
            configs.append(
                ChaosConfig(
                    faults=(kind,),
                    fault_count=count,
                    seed=seed,
                    concurrency=1,
                    label="poison, concurrency 1",
                )
            )
            seed += 1
    for _ in range(2):
        configs.append(
            ChaosConfig(
                faults=tuple(kinds),
                fault_count=max(1, round(150 * scale)),
                seed=seed,
                label="all kinds together",
            )
        )
        seed += 1
    for config in configs:
        config.lanes = lanes
    return configs
