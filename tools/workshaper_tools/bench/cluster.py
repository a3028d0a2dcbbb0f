"""S1 on Redis Cluster: the same load on a 1-master and a 3-master cluster of private
redis-server processes, with Redis CPU and commands per master.

    python -m workshaper_tools.bench.cluster [--items 100000] [--masters 1,3] [--rounds 1]

Both sides go through the cluster client (a 1-master cluster owns all 16,384 slots), so the
difference is only how the partitions spread. On a 2-core machine the total rate cannot grow
with masters; what the table shows is that the load splits over the masters by partition and
that Redis CPU per item stays flat.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from workshaper import Enqueued, Producer
from workshaper.admin import Admin
from workshaper.keys import NamespaceKeys
from workshaper_tools.bench.common import BenchFailure, bench_env, plan_noop, worker_command
from workshaper_tools.testing.redis_cluster import RedisCluster
from workshaper_tools.testing.redis_server import RedisServer

ENQUEUE_BATCH = 8000


def _node_counters(server: RedisServer) -> tuple[float, int]:
    """(CPU seconds, commands processed) of one node, from INFO."""
    with server.client(decode_responses=True) as c:
        info = c.info()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), int(
        info["total_commands_processed"]
    )


def run_once(
    masters: int, items: int, partitions: int, sub_keys: int, workers: int
) -> dict[str, Any]:
    plan = plan_noop(items, partitions, sub_keys)
    with RedisCluster(masters=masters) as cluster, tempfile.TemporaryDirectory() as logs:
        namespace = "c" + uuid.uuid4().hex[:10]
        argv = [
            *worker_command(),
            "workshaper_tools.bench.handlers:noop",
            "--redis",
            cluster.url,
            "--namespace",
            namespace,
            "--concurrency",
            "8",
            "--log-level",
            "WARNING",
        ]
        env = bench_env(WS_BENCH_DIR=logs)
        procs = []
        for i in range(workers):
            with (Path(logs) / f"w{i}.log").open("wb") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))
        try:
            admin = Admin(cluster.url, namespace)
            deadline = time.monotonic() + 60
            while len(admin.workers()) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise BenchFailure("workers did not start")
                time.sleep(0.05)
            admin.close()
            per_master: dict[int, int] = {}
            for p in range(partitions):
                slot = key_slot(NamespaceKeys(namespace).partition(p).meta)
                owner = cluster.master_of_slot(slot).port
                per_master[owner] = per_master.get(owner, 0) + 1
            nodes = cluster.primaries()
            before = {s.port: _node_counters(s) for s in nodes}
            with Producer(cluster.url, namespace, max_in_queue=5000) as producer:
                started = time.monotonic()
                for start in range(0, len(plan.tuples), ENQUEUE_BATCH):
                    statuses = producer.enqueue_many(plan.tuples[start : start + ENQUEUE_BATCH])
                    if any(s is not Enqueued.ACCEPTED for s in statuses):
                        raise BenchFailure("items refused")
                if not producer.flush(timeout=900):
                    raise BenchFailure("not acked in time")
                seconds = time.monotonic() - started
            after = {s.port: _node_counters(s) for s in nodes}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    rows = []
    for port in sorted(before):
        cpu = after[port][0] - before[port][0]
        commands = after[port][1] - before[port][1]
        rows.append(
            {
                "port": port,
                "partitions": per_master.get(port, 0),
                "cpu_s": cpu,
                "cpu_share": cpu / seconds,
                "commands": commands,
            }
        )
    total_cpu = sum(r["cpu_s"] for r in rows)
    return {
        "masters": masters,
        "items": items,
        "seconds": seconds,
        "rate": items / seconds,
        "redis_cpu_us_per_item": total_cpu / items * 1e6,
        "nodes": rows,
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['masters']} master(s): {result['items']:,} items in {result['seconds']:.2f} s"
        f" = {result['rate']:,.0f} items/s; Redis CPU {result['redis_cpu_us_per_item']:.2f} us"
        " per item (all masters)"
    ]
    for r in result["nodes"]:
        lines.append(
            f"  master :{r['port']}: {r['partitions']} partitions, CPU {r['cpu_s']:.2f} s"
            f" ({r['cpu_share'] * 100:.0f}% of a core), {r['commands']:,} commands"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--sub-keys", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--masters", default="1,3")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    for _ in range(args.rounds):
        for masters in (int(m) for m in args.masters.split(",")):
            result = run_once(masters, args.items, args.partitions, args.sub_keys, args.workers)
            print(report(result), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["main", "run_once"]
