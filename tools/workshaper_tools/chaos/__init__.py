"""The chaos harness: real kills, pauses, Redis restarts and cut networks, then an audit.

One run starts its own ``redis-server`` (temp dir, free port, AOF ``appendfsync always``), a
producer process (``python -m workshaper_tools.chaos producer``), and N ``workshaper-worker``
processes running the journaling handler (``workshaper_tools.testing.journal:work``), then injects
faults on a seeded random schedule:

    kill      SIGKILL a random worker, start it again
    stop      SIGSTOP a worker for longer than the lease, then SIGCONT (it must be fenced off)
    redis     SIGKILL redis-server, start it again on the same data dir and port
    proxy     cut (drop), stall or slow every client connection through a TCP proxy
    netns     take one worker host's link down, then up (workers in network namespaces;
              needs root and ``ip``, skipped with the reason otherwise)
    poison    make the next item poison: it kills its worker every time (it must end
              dead-lettered, after at most max_attempts + 1 crashes, not loop)
    producer  SIGKILL the producer, start it again (it re-enqueues from the acked watermark)

``kafka`` runs a fleet of its own (chaos/kafka.py): Kafka bridges of one consumer group on a
Tansu broker, with bridges SIGKILLed, SIGSTOPped and joining, Redis restarted and the broker
frozen; every record must run and the committed offsets must reach the end. It is given alone
(``--faults kafka``) and is not part of ``all``.

``cluster`` runs a fleet of its own too (chaos/rediscluster.py): 3 masters + 3 replicas, slot
migrations of active partitions alternating with master SIGKILLs (the node rejoins as a
replica); what happens on killed masters' partitions is counted apart. Given alone
(``--faults cluster``), not part of ``all``.

Two more kinds are outside the guarantees and never part of ``all``; they show what a setup
without them loses (expect violations):

    failover  SIGKILL the master while its replica lags 0.2-1 s (its link stalled), promote
              the replica and point every client at it
    powerloss SIGKILL redis-server and cut the last 0.2-1 s off its AOF, as a host crash does
              to the writes ``appendfsync everysec`` had not fsynced yet

Afterwards it drains (every accepted item must be acked), stops the workers, reads the
journal, the producer's ack log and Redis, and reports: items accepted and finished, lost,
order and watermark violations, fencing rejections, re-runs against the items in flight at the
faults, and the time to recover after each fault (p50/p99). Any violation makes the run fail.

``./scripts/chaos --help`` lists the options; ``./scripts/chaos --soak`` runs every kind alone
and all together, over 1,000 faults, and prints the table of docs/reliability.md.

Every child process is started from the main thread with PR_SET_PDEATHSIG, in its own session,
and stopped in a ``finally`` (and at exit), as are the proxy and the network namespaces.
"""

from workshaper_tools.chaos.audit import ChaosResult, in_flight_at, stale_token_starts
from workshaper_tools.chaos.config import (
    FAULT_KINDS,
    KNOWN_KINDS,
    LOSSY_KINDS,
    ChaosConfig,
    soak_configs,
)
from workshaper_tools.chaos.faults import FaultRecord, PlannedFault, fault_schedule
from workshaper_tools.chaos.plan import PlanSpec, plan_items
from workshaper_tools.chaos.report import percentile, soak_table, summary_table
from workshaper_tools.chaos.run import Harness, SkipRun, run_once

__all__ = [
    "FAULT_KINDS",
    "KNOWN_KINDS",
    "LOSSY_KINDS",
    "ChaosConfig",
    "ChaosResult",
    "FaultRecord",
    "Harness",
    "PlanSpec",
    "PlannedFault",
    "SkipRun",
    "fault_schedule",
    "in_flight_at",
    "percentile",
    "plan_items",
    "run_once",
    "soak_configs",
    "soak_table",
    "stale_token_starts",
    "summary_table",
]
