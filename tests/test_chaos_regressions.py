"""Deterministic reproductions of core bugs the chaos harness found (fixed in 80fbd3c).

Each test states the guarantee from the README it checks and reproduces the fault that broke
it without relying on luck; the comment above it says what the bug was.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import workshaper
from workshaper import codec, scripts
from workshaper.admin import Admin
from workshaper.batch import run_one
from workshaper.cli.common import worker_command
from workshaper.connection import connect
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import register_scripts
from workshaper.scripts import EncodedItem
from workshaper_tools.testing.journal import read_journal
from workshaper_tools.testing.proxy import ChaosProxy
from workshaper_tools.testing.redis_server import RedisServer

from .conftest import wait_for


# Was: ackloop: when recording the watermark fails after ack() returned, the next tick offers the
# same watermark and calls ack() with it again
def test_ack_is_not_repeated_when_recording_the_watermark_fails(
    redis_server: RedisServer, namespace: str
) -> None:
    """README guarantee 4: the values given to ack for a partition strictly increase.

    The first ack() stalls the producer's connection, so the commit_watermark call that follows
    it reaches the proxy but not Redis; then the connection is reset. The commit never ran; the
    ack loop must only retry the commit, not call ack(0, 0) again (the soak saw 20 such repeats
    in 310 Redis restarts and proxy faults).
    """
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        calls: list[tuple[int, int]] = []

        def reset_once_the_commit_is_sent(read_before: int) -> None:
            deadline = time.monotonic() + 30
            while proxy.stats.read_up == read_before and time.monotonic() < deadline:
                time.sleep(0.001)
            proxy.drop()
            proxy.set_pass()

        def ack(partition: int, offset: int) -> None:
            calls.append((partition, offset))
            if len(calls) == 1:
                proxy.stall()
                threading.Thread(
                    target=reset_once_the_commit_is_sent, args=(proxy.stats.read_up,), daemon=True
                ).start()

        worker = workshaper.Worker(
            redis_server.url, namespace, work=lambda m, p, o: None, concurrency=1
        ).start()
        try:
            with workshaper.Producer(proxy.url(), namespace, ack=ack) as producer:
                producer.enqueue("a", "m", 0, 0)
                assert producer.flush(timeout=30)
                time.sleep(1.0)  # the ack loop's retry pause is 0.5 s: let a repeat show
        finally:
            worker.stop(timeout=10)
    assert calls == [(0, 0)]


# Was: expire_lease charges a crash to every lease of the crashed process: an innocent item
# running beside a poison item in the same worker is dead-lettered with it
def test_poison_item_does_not_dead_letter_an_innocent_item_beside_it(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """README: an item that kills its worker every time is dead-lettered "and never takes an
    innocent neighbour with it".

    One worker process (restarted whenever it dies, like a supervisor would) with concurrency
    2 and max_attempts 2 leases both sub keys of one claim: "b" holds an item that takes 3 s
    and never fails, "a" a poison item that kills the process at once. Both leases carry the
    same deadline and the next incarnation reaps and claims both again, so "b" was running at
    every crash: each crash was charged to it too, and after max_attempts crashes it was
    dead-lettered as LeaseExpired (the soak: 85 innocent items for 80 poison items).
    """
    env = {
        **os.environ,
        "WS_JOURNAL_DIR": str(tmp_path),
        "WS_POISON": "0:1",
        "WS_SLOW": "0:0:3",
    }
    argv = [
        *worker_command(),
        "workshaper_tools.testing.journal:work",
        "--redis",
        redis_server.url,
        "--namespace",
        namespace,
        "--concurrency",
        "2",
        "--lease",
        "0.5",
        "--max-attempts",
        "2",
    ]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        with open(tmp_path / f"worker-{len(procs)}.log", "wb") as out:
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))

    admin = Admin(redis_server.url, namespace)
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("b", "innocent", 0, 0), ("a", "poison", 0, 1)])
            start()
            deadline = time.monotonic() + 60
            while not producer.flush(timeout=0.1):
                assert time.monotonic() < deadline, "the items never finished"
                if procs[-1].poll() is not None:
                    start()
        dead = {r.offset: r for r in admin.dead_letters(0)}
    finally:
        admin.close()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(30)
    assert 1 in dead  # the poison item
    innocent = [e for e in read_journal(tmp_path) if e.offset == 0 and e.kind == "s"]
    assert 0 not in dead, (
        f"innocent offset 0 dead-lettered after {len(innocent)} starts:"
        f" {dead[0].error_type}: {dead[0].error_message}"
    )


# Was: worker: the reaper scans only the partitions it read at its last refresh (every 5 s), so a
# lease in a partition that appeared since then is reaped up to 5 s late
def test_lease_in_a_new_partition_is_reaped_within_lease_plus_2s(
    redis_server: RedisServer, namespace: str
) -> None:
    """README (Deployment): a crashed worker's sub keys resume after the lease plus at most
    about 1 s.

    A worker starts while the namespace has no partition yet (its first refresh reads an empty
    partition set). Right after, a worker that then dies ("ghost") takes a 0.2 s lease in a new
    partition. A reaper that learns of partitions only at a refresh every 5 s took it back
    about 5 s later instead of lease + ~1 s.
    """
    lease = 0.2
    worker = workshaper.Worker(
        redis_server.url, namespace, work=lambda m, p, o: None, lease=1.0, concurrency=1
    ).start()
    backend = connect(redis_server.url)
    try:
        keys = NamespaceKeys(namespace)
        client = redis_server.client()
        # The first round trip of the worker refreshes the partitions and registers it.
        wait_for(lambda: client.hexists(keys.workers, worker.id), timeout=30)
        pkeys = keys.partition(7)
        register_scripts(backend)
        client.sadd(keys.partitions, 7)
        sub = codec.encode_sub_key("k", 0)
        item = EncodedItem(sub, 0, codec.make_entry(0, codec.encode_message("m", 1024)))
        run_one(backend, lambda b: scripts.enqueue_items(b, pkeys, [item], 10))
        _, claimed = run_one(
            backend,
            lambda b: scripts.claim_sub_keys(
                b,
                pkeys,
                worker_id="ghost",
                request_id="ghost:1",
                max_leases=1,
                lease_ms=int(lease * 1000),
                batch_size=10,
                max_attempts=3,
                exhausted_mode="d",
            ),
        )
        assert len(claimed) == 1  # the ghost holds the lease, then "crashes"
        claimed_at = time.monotonic()
        admin = Admin(backend, namespace)
        wait_for(lambda: all(s.pending == 0 for s in admin.status()), timeout=30)
        took = time.monotonic() - claimed_at
    finally:
        worker.stop(timeout=10)
        backend.close()
        client.close()
    assert took <= lease + 2.0, f"the expired lease was taken back {took:.1f}s after the claim"


# Was: worker: after a failed BZPOPMIN the waker sleeps a fixed 2 s (REDIS_RETRY_MAX), so no new
# sub key is claimed for up to 2 s after Redis is back; a Redis that restarts every few seconds
# can starve the fleet entirely
def test_waker_claims_soon_after_a_lost_connection(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """README (Deployment): after an outage the fleet goes on at once. The soak measured
    10-14 s without any progress while Redis restarted every ~2 s, because every worker's
    waker slept a fixed 2 s after each failure and so missed the ~1.5 s windows in which Redis
    was up.

    The worker reaches Redis through a proxy. The proxy resets every connection once; as soon as
    the waker has logged the failure, the network is fine again and an item is enqueued
    (directly). With the fixed 2 s pause the item started 2.00 s later.
    """
    caplog.set_level(logging.DEBUG, logger="workshaper.worker")
    started: list[float] = []
    with ChaosProxy("127.0.0.1", redis_server.port) as proxy:
        worker = workshaper.Worker(
            proxy.url(), namespace, work=lambda m, p, o: started.append(time.monotonic())
        ).start()
        try:
            with workshaper.Producer(redis_server.url, namespace) as producer:
                producer.enqueue("a", "m", 0, 0)
                wait_for(lambda: started, timeout=30)  # the worker runs
                proxy.drop()
                wait_for(
                    lambda: any("waker: Redis unreachable" in r.message for r in caplog.records),
                    timeout=30,
                )
                proxy.set_pass()
                enqueued_at = time.monotonic()
                producer.enqueue("b", "m", 0, 1)
                wait_for(lambda: len(started) == 2, timeout=30)
        finally:
            worker.stop(timeout=10)
    took = started[1] - enqueued_at
    assert took <= 1.0, f"the item started {took:.2f}s after the network came back"
