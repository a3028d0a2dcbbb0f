"""The control plane: one elected reaper per namespace, registry pruning, and what an idle
fleet costs Redis (issue 10, "W + P, not W x P"; issue 8 items 9 and 13)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

import workshaper
from workshaper import codec, scripts
from workshaper.batch import Batch, Link, Reply, run_one
from workshaper.connection import Backend, connect
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import register_scripts
from workshaper.scripts import EncodedItem
from workshaper.worker.reaper import REAP_BATCH, Reaper
from workshaper.worker.registry import STALE_SECONDS
from workshaper.worker.settings import worker_settings
from workshaper.worker.state import CoordinatorState
from workshaper_tools.bench.idle import measure
from workshaper_tools.testing import RedisServer

from .conftest import wait_for
from .fleet import fleet

# --- the scripts ------------------------------------------------------------------------------


def _lock(backend: Backend, keys: NamespaceKeys, worker: str, term: int, ttl_ms: int) -> Any:
    return run_one(backend, lambda b: scripts.reaper_lock(b, keys, worker, term, ttl_ms))


def test_reaper_lock_elects_one_worker_and_fences_old_terms(
    backend: Backend, namespace: str
) -> None:
    keys = NamespaceKeys(namespace)
    first = _lock(backend, keys, "w1", 0, 60_000)
    assert (first.held, first.term, first.ttl_ms) == (True, 1, 60_000)
    other = _lock(backend, keys, "w2", 0, 60_000)
    assert not other.held and other.term == 1 and 0 < other.ttl_ms <= 60_000
    assert _lock(backend, keys, "w1", 1, 60_000).held  # renewed by the holder of term 1
    assert abs(first.server_ms - time.time() * 1000) < 60_000  # server time, in ms

    backend.client.delete(keys.reaper)  # w1's lock ran out (it was paused, say)
    second = _lock(backend, keys, "w2", 0, 60_000)
    assert (second.held, second.term) == (True, 2)
    stale = _lock(backend, keys, "w1", 1, 60_000)  # w1 wakes up and tries to renew term 1
    assert not stale.held and stale.term == 2
    _lock(backend, keys, "w1", 1, 0)  # giving up a term it no longer holds changes nothing
    assert backend.client.get(keys.reaper) == b"2|w2"
    _lock(backend, keys, "w2", 2, 0)
    assert backend.client.get(keys.reaper) is None


def test_reaper_lock_without_ttl_is_taken_over(backend: Backend, namespace: str) -> None:
    """A lock nobody renews and nothing expires (set by hand) must not stop reaping for good."""
    keys = NamespaceKeys(namespace)
    backend.client.set(keys.reaper, b"7|someone")
    taken = _lock(backend, keys, "w1", 0, 60_000)
    assert taken.held and backend.client.pttl(keys.reaper) > 0


def test_prune_workers_drops_silent_and_unreadable_entries(
    backend: Backend, namespace: str
) -> None:
    keys = NamespaceKeys(namespace)
    client = backend.client
    info = json.dumps({"host": "h", "pid": 1})
    assert run_one(backend, lambda b: scripts.register_worker(b, keys, "alive", info)) == 1
    record = cast("bytes | None", client.hget(keys.workers, "alive"))  # bytes replies
    assert record is not None
    seen = json.loads(record)["seen"]
    assert abs(seen - time.time()) < 60  # server time, in seconds
    client.hset(keys.workers, "gone", json.dumps({"host": "h", "seen": seen - 100}))
    client.hset(keys.workers, "garbage", b"\xff not json")
    client.hset(keys.workers, "no-seen", json.dumps({"host": "h"}))
    assert run_one(backend, lambda b: scripts.prune_workers(b, keys, 15_000)) == 3
    assert set(client.hkeys(keys.workers)) == {b"alive"}


# --- issue 8 item 9: the registry grew forever ---------------------------------------------


def test_registry_prunes_entries_of_workers_that_went_silent(
    redis_server: RedisServer, namespace: str
) -> None:
    """Was: ``ws:{ns}:workers`` kept the entry of every worker that ever crashed."""
    keys = NamespaceKeys(namespace)
    client = redis_server.client()
    now = float(client.time()[0])
    crashed = {"host": "h", "pid": 1, "concurrency": 8, "leases": 3}
    client.hset(keys.workers, "crashed-long-ago", json.dumps({**crashed, "seen": now - 3600}))
    client.hset(keys.workers, "crashed-just-now", json.dumps({**crashed, "seen": now - 1}))
    worker = workshaper.Worker(
        redis_server.url, namespace, work=lambda m, p, o: None, lease=1.0
    ).start()
    try:
        wait_for(lambda: not client.hexists(keys.workers, "crashed-long-ago"), timeout=30)
        # Younger than the bound: kept, and the live worker's own entry too.
        assert client.hexists(keys.workers, "crashed-just-now")
        assert client.hexists(keys.workers, worker.id)
        assert STALE_SECONDS < 60  # "well under a minute"

        # The only worker is the reaper, and its entry says so (written again on election).
        def says_reaper() -> Any:
            record = cast("bytes | None", client.hget(keys.workers, worker.id))  # bytes replies
            assert record is not None
            return json.loads(record)["reaper"]

        wait_for(says_reaper, timeout=30)
    finally:
        worker.stop(timeout=10)
        client.close()


# --- issue 8 item 13: the reaper took 100 expired leases per scan ----------------------------


def _ghost_leases(backend: Backend, namespace: str, count: int) -> None:
    """``count`` sub keys of partition 0, each leased by a worker that then died."""
    keys = NamespaceKeys(namespace)
    pkeys = keys.partition(0)
    backend.client.sadd(keys.partitions, 0)
    entry = codec.make_entry
    message = codec.encode_message("m", 1024)
    for start in range(0, count, 500):
        items = [
            EncodedItem(codec.encode_sub_key(f"k{o}", o), o, entry(o, message))
            for o in range(start, min(count, start + 500))
        ]

        def enqueue(b: Batch, items: list[EncodedItem] = items) -> Reply[list[int]]:
            return scripts.enqueue_items(b, pkeys, items, count)

        def claim(b: Batch, start: int = start) -> Reply[tuple[int, list[scripts.Claimed]]]:
            return scripts.claim_sub_keys(
                b,
                pkeys,
                worker_id="ghost",
                request_id=f"ghost:{start}",
                max_leases=500,
                lease_ms=60_000,
                batch_size=10,
                max_attempts=3,
                exhausted_mode="d",
            )

        run_one(backend, enqueue)
        _, claimed = run_one(backend, claim)
        assert len(claimed) == len(items)
    expired = dict.fromkeys(cast("list[bytes]", backend.client.zrange(pkeys.leases, 0, -1)), 0)
    backend.client.zadd(pkeys.leases, expired, xx=True)  # the ghost died long ago


def test_one_scan_takes_back_thousands_of_expired_leases(
    redis_server: RedisServer, namespace: str
) -> None:
    """Was: the reaper read 100 expired leases per partition per scan (one scan a second), so
    a worker that died holding 2,500 leases had its sub keys back after ~25 s, not lease + 1 s.

    The reaper is driven round trip by round trip with its clock held still, through two
    scan intervals (the first may only learn the partition list): everything it sends must take
    back every expired lease, not 100 per partition per scan.
    """
    count = 2 * REAP_BATCH + 500
    backend = connect(redis_server.url)
    register_scripts(backend)
    link = Link(backend)
    try:
        _ghost_leases(backend, namespace, count)
        settings = worker_settings(
            namespace,
            concurrency=1,
            lease=30.0,
            max_attempts=3,
            retry_backoff=0.2,
            on_exhausted="dead_letter",
            batch_size=10,
            prefetch=None,
            name="reaper",
        )
        state = CoordinatorState(settings)
        reaper = Reaper(state)
        started = time.monotonic()
        for now in (started, started + 1.0):  # scans are at most 1 s apart
            for _ in range(100):
                batch = link.batch()
                handlers = reaper.add_expiries(batch)
                handlers += reaper.add_election(batch, now)
                handlers += reaper.add_scan(batch, now)
                if not len(batch):
                    break
                batch.execute()
                for handle in handlers:
                    handle()
        pkeys = NamespaceKeys(namespace).partition(0)
        assert backend.client.zcard(pkeys.leases) == 0
        assert state.stats["reaped"] == count
        assert backend.client.llen(pkeys.ready) == count
    finally:
        link.close()
        backend.close()


# --- bells: the reaper's ready sweep is a safety net, not the hand-off path ------------------


def test_a_sub_key_released_with_items_left_rings_its_bell(
    redis_server: RedisServer, namespace: str
) -> None:
    """Other workers learned of such a sub key only from the reapers' reads of every ``ready``
    list every second. The elected reaper reads each ready list only every few seconds now,
    so the release itself must ring (here: a stop with items left)."""
    keys = NamespaceKeys(namespace)
    client = redis_server.client()
    started = threading.Event()

    def work(message: Any, partition: int, offset: int) -> None:
        started.set()
        time.sleep(0.05)

    worker = workshaper.Worker(redis_server.url, namespace, work=work, concurrency=1, lease=60)
    try:
        with workshaper.Producer(redis_server.url, namespace) as producer:
            producer.enqueue_many([("a", "m", 0, o) for o in range(200)])
            worker.start()
            assert started.wait(30)
            wait_for(lambda: client.zcard(keys.wake) == 0, timeout=30)  # the worker popped it
            assert worker.stop(timeout=30) is True
        assert client.llen(keys.partition(0).ready) == 1  # "a" is runnable, items left
        assert client.zscore(keys.wake, "0") is not None  # and its bell rang
    finally:
        worker.stop(timeout=10)
        client.close()


# --- takeover after SIGKILL: of a plain worker, and of the elected reaper ----------------------


def _holders(client: Any, namespace: str) -> set[str]:
    owners = client.hvals(NamespaceKeys(namespace).partition(0).owners)
    return {o.decode().rsplit("|", 1)[-1] for o in owners}


def test_leases_of_a_killed_worker_and_of_the_killed_reaper_are_taken_back(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """README (Deployment): a crashed worker's sub keys resume within lease + ~1 s, also when
    the crashed worker was the elected reaper (its successor must be elected first)."""
    lease = 2.0
    # README's bound is lease + ~1 s; the slack is for a loaded machine. What this guards
    # against, leases waiting for a dead worker's registry entry to go stale (15 s and more),
    # stays far outside it.
    bound = lease + 6.0
    keys = NamespaceKeys(namespace)
    client = redis_server.client()
    slow = ",".join(f"0:{o}:600" for o in range(30))  # every item runs until the test ends
    with fleet(redis_server.url, namespace, tmp_path, WS_SLOW=slow) as f:
        try:
            reaper = f.start("--name", "first", lease=lease, concurrency=2)
            wait_for(lambda: client.get(keys.reaper) == b"1|first", timeout=30)
            plain = f.start("--name", "second", lease=lease, concurrency=2)
            f.start("--name", "third", lease=lease, concurrency=2)
            wait_for(lambda: client.hlen(keys.workers) == 3, timeout=30)
            with workshaper.Producer(redis_server.url, namespace) as producer:
                producer.enqueue_many([(f"k{o}", "m", 0, o) for o in range(30)])
            wait_for(lambda: _holders(client, namespace) == {"first", "second", "third"}, 60)

            os.kill(plain.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: "second" not in _holders(client, namespace), timeout=60)
            took = time.monotonic() - killed
            assert took <= bound, f"a killed worker's leases came back after {took:.1f}s"

            os.kill(reaper.pid, signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: "first" not in _holders(client, namespace), timeout=60)
            took = time.monotonic() - killed
            assert took <= bound, f"the killed reaper's leases came back after {took:.1f}s"
            assert client.get(keys.reaper) == b"2|third"  # elected, with the next term
        finally:
            for p in f.procs:  # their items sleep for minutes: no graceful drain
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            client.close()


# --- issue 10: idle cost grows with workers + partitions ----------------------------------------


def idle_bound(workers: int, partitions: int) -> float:
    """Commands/s the design allows an idle fleet (worker/reaper.py; lease 30 s), doubled
    for slack: per partition one lease read a second and a ready read every 4 s; per worker
    one BZPOPMIN a second, a lock look every ~1.5 s and a heartbeat (3 commands) every 5 s;
    the reaper's lock renewals (4 commands every 0.67 s), partition list and pruning."""
    return 2 * (1.25 * partitions + 2.5 * workers + 10)


def test_idle_fleet_cost_grows_with_workers_plus_partitions(tmp_path: Path) -> None:
    row = measure(4, 64, window=5.0, log_dir=tmp_path)
    assert row.commands_per_second <= idle_bound(4, 64), row.by_command
    assert row.by_command.get("zrangebyscore", 0) <= 64 * 1.5  # one reaper, not four


@pytest.mark.slow
def test_idle_fleet_of_20_workers_on_256_partitions_under_500_commands(tmp_path: Path) -> None:
    row = measure(20, 256, window=10.0, log_dir=tmp_path)
    assert row.commands_per_second <= 500, row.by_command
    assert row.commands_per_second <= idle_bound(20, 256), row.by_command
