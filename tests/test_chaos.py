"""The chaos harness in CI: one short run per fault kind (about 2 minutes together), the TCP
proxy's modes, and the harness's own pieces. The long soak is ``./scripts/chaos --soak``
(or ``pytest -m slow``)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from workshaper_tools import chaos
from workshaper_tools.chaos import ChaosConfig, ChaosResult, Harness, SkipRun, summary_table
from workshaper_tools.chaos import cli as chaos_cli
from workshaper_tools.chaos.cluster import worker_exit_kind
from workshaper_tools.testing import netns, redis_server_binary
from workshaper_tools.testing.checker import Ack, PlannedItem, check
from workshaper_tools.testing.journal import POISON_EXIT_STATUS, Event
from workshaper_tools.testing.proxy import ChaosProxy
from workshaper_tools.testing.redis_server import RedisServer


def _need_redis_server() -> None:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")


def short_run(tmp_path: Path, *kinds: str, **overrides: object) -> ChaosResult:
    """A small fleet (2 workers), a 1 s lease and a few faults of the given kinds."""
    _need_redis_server()
    settings: dict[str, object] = {
        "faults": kinds,
        "fault_count": 4,
        "seed": 11,
        "workers": 2,
        "concurrency": 2,
        "lease": 1.0,
        "rate": 150.0,
        "max_in_queue": 100,
        "gap": (0.2, 0.6),
        "warmup": 0.3,
        "drain_timeout": 120.0,
        "run_dir": tmp_path / "run",
    }
    settings.update(overrides)
    config = ChaosConfig(**settings)  # type: ignore[arg-type]
    try:
        result = Harness(config).run()
    except SkipRun as skip:
        pytest.skip(str(skip))
    print(summary_table(result))
    assert result.ok, summary_table(result)
    assert len(result.faults) == config.fault_count
    assert {f.kind for f in result.faults} <= set(kinds)
    assert result.report.accepted > 0
    assert result.report.finished + result.report.dead_lettered == result.report.accepted
    return result


def test_worker_sigkill_and_restart(tmp_path: Path) -> None:
    result = short_run(tmp_path, "kill", fault_count=5)
    assert result.worker_exits.get("killed") == 5


def test_worker_sigkill_and_restart_with_lanes(tmp_path: Path) -> None:
    """The kill run with the producer's lanes: the audit also checks that every handler saw
    its item's own sub key, not its lane."""
    result = short_run(tmp_path, "kill", fault_count=5, lanes=4)
    assert result.worker_exits.get("killed") == 5
    assert "--lanes 4" in result.config.command()


def test_worker_sigstop_past_the_lease_then_sigcont(tmp_path: Path) -> None:
    result = short_run(tmp_path, "stop", fault_count=3)
    assert all(f.end - f.start > 1.0 for f in result.faults)  # each pause outlasted the lease


def test_redis_sigkill_and_restart_on_the_same_aof(tmp_path: Path) -> None:
    short_run(tmp_path, "redis", fault_count=4)


def test_proxy_drop_stall_and_slow(tmp_path: Path) -> None:
    result = short_run(tmp_path, "proxy", fault_count=5, seed=4)
    assert {f.target for f in result.faults} == {"drop", "stall", "slow"}


def test_network_namespace_link_cut(tmp_path: Path) -> None:
    if (reason := netns.unavailable_reason()) is not None:
        pytest.skip(reason)
    short_run(tmp_path, "netns", fault_count=3)


def test_poison_item_is_dead_lettered_not_looped(tmp_path: Path) -> None:
    # Concurrency 2: other items share the process the poison item kills, and none of them
    # may be dead-lettered with it.
    result = short_run(tmp_path, "poison", fault_count=2, concurrency=2, max_attempts=2)
    assert result.poison["items"] == result.poison["dead_lettered"] == 2
    assert 1 <= result.poison["max_starts"] <= 3  # max_attempts + 1
    assert result.dead_not_poison == 0


def test_producer_sigkill_and_restart_from_the_watermark(tmp_path: Path) -> None:
    short_run(tmp_path, "producer", fault_count=3)


def test_the_audit_catches_loss_when_redis_loses_acknowledged_writes(tmp_path: Path) -> None:
    """A canary for the audit itself: a Redis host crash that loses the last 0.2-1 s of the
    AOF (appendfsync everysec) must show up as lost items.

    The lost window must hold items that no worker had read yet, on any machine:
    - the producer is never held back (max_in_queue far above what the run offers), so it
      writes about 60 items a second into every window;
    - four sub keys take at most about 20 items a second (work of 0-0.4 s, one at a time per
      key), so each key's list grows by ~10 items a second and an item accepted in the last
      second waits seconds behind its key's earlier items. A slower machine only makes those
      lists longer.
    With max_in_queue 60 the producer sat blocked on full partitions through the whole crash
    window on a loaded machine, wrote nothing that could be lost, and the canary stayed silent.
    A lease reads one item at a time (batch_size 1) and the producer sends one item per call:
    a call cut by the crash is sent again whole, so bigger batches can hide the loss."""
    _need_redis_server()
    config = ChaosConfig(
        faults=("powerloss",),
        fault_count=3,
        seed=11,
        workers=2,
        concurrency=4,
        batch_size=1,
        lease=1.0,
        sub_keys=4,
        rate=60.0,
        producer_batch=1,
        work_delay=0.4,
        gap=(0.5, 0.8),
        warmup=1.5,
        appendfsync="everysec",
        max_in_queue=5000,
        run_dir=tmp_path / "run",
    )
    result = Harness(config).run()
    print(summary_table(result))
    assert all("bytes" in f.detail for f in result.faults)  # the AOF tail was really cut
    assert not result.ok
    # The lost second shows as items that never ran or, when the workers had read those items
    # before the crash (which run depends on scheduling), as an acked watermark Redis forgot
    # and the producer acked again: either way the audit reports the lost writes.
    # test_checker_reports_an_accepted_item_that_never_ran_as_lost covers lost items alone.
    report = result.report
    assert report.lost or report.watermark_violations, report.summary()


@pytest.mark.slow
def test_every_kind_together(tmp_path: Path) -> None:
    result = short_run(tmp_path, *chaos.FAULT_KINDS, fault_count=40, workers=3)
    assert len({f.kind for f in result.faults}) >= 5


@pytest.mark.slow
def test_soak_scaled_down(tmp_path: Path) -> None:
    _need_redis_server()
    results = []
    for config in chaos.soak_configs(500, 0.1, chaos.FAULT_KINDS):
        config.run_dir = tmp_path / f"run{config.seed}"
        try:
            results.append(Harness(config).run())
        except SkipRun:
            continue
    print(chaos.soak_table(results))
    assert all(r.ok for r in results)


# --- the harness's pieces --------------------------------------------------------------------


def test_fault_schedule_is_seeded() -> None:
    config = ChaosConfig(fault_count=50, seed=3)
    first = chaos.fault_schedule(config, chaos.FAULT_KINDS)
    assert first == chaos.fault_schedule(config, chaos.FAULT_KINDS)
    assert first != chaos.fault_schedule(ChaosConfig(fault_count=50, seed=4), chaos.FAULT_KINDS)
    for fault in first:
        if fault.kind == "stop":
            assert fault.duration > config.lease + 1.0  # always longer than lease + reaper


def test_plan_is_deterministic_with_growing_offsets() -> None:
    spec = chaos.PlanSpec(seed=1, partitions=3, sub_keys=5)
    a = [x for _, x in zip(range(500), chaos.plan_items(spec), strict=False)]
    b = [x for _, x in zip(range(500), chaos.plan_items(spec), strict=False)]
    assert a == b
    last: dict[int, int] = {}
    for _, partition, offset in a:
        assert offset > last.get(partition, -1)
        last[partition] = offset
    assert any(sub is None for sub, _, _ in a)


def test_in_flight_and_stale_token_starts() -> None:
    events = [
        Event("s", 0, 1, "a", 1, 5, 1, 1.0, "w1"),
        Event("s", 0, 2, "b", 1, 6, 1, 1.1, "w1"),
        Event("e", 0, 2, "b", 1, 6, 1, 1.2, "w1"),
        Event("s", 0, 1, "a", 2, 7, 2, 3.0, "w2"),  # taken over
        Event("e", 0, 1, "a", 2, 7, 2, 3.1, "w2"),
        Event("e", 0, 1, "a", 1, 5, 1, 3.2, "w1"),  # the old holder wakes up
        Event("s", 0, 3, "a", 1, 5, 1, 3.3, "w1"),  # and starts a successor with its old token
    ]
    flying = chaos.in_flight_at(events, {"w1": [1.15, 1.25]})
    assert flying[("w1", 1.15)] == {(0, 1), (0, 2)}
    assert flying[("w1", 1.25)] == {(0, 1)}
    assert chaos.stale_token_starts(events) == 1


def test_checker_allows_one_repeat_by_a_new_producer_only() -> None:
    plan = [PlannedItem("a", 0, 0), PlannedItem("a", 0, 1)]
    events = [
        Event("s", 0, 0, "a", 1, 1, 1, 1.0),
        Event("e", 0, 0, "a", 1, 1, 1, 1.1),
        Event("s", 0, 1, "a", 1, 1, 1, 1.2),
        Event("e", 0, 1, "a", 1, 1, 1, 1.3),
    ]
    restarted = [Ack(0, 1, 2.0, "p1"), Ack(0, 1, 3.0, "p2")]
    report = check(plan, events, restarted)
    assert report.ok and report.reacks == 1
    repeated = [Ack(0, 1, 2.0, "p1"), Ack(0, 1, 3.0, "p1")]
    assert len(check(plan, events, repeated).watermark_violations) == 1
    early = [Ack(0, 1, 1.25, "p1")]  # offset 1 had not ended yet
    assert len(check(plan, events, early).watermark_violations) == 1


def test_checker_reports_an_accepted_item_that_never_ran_as_lost() -> None:
    """An accepted item with no successful end and no dead letter is lost, even when a later
    watermark covers it (Redis forgot it, so nothing stopped the ack)."""
    plan = [PlannedItem("a", 0, 0), PlannedItem("b", 0, 1), PlannedItem("c", 0, 2)]
    events = [
        Event("s", 0, 0, "a", 1, 1, 1, 1.0),
        Event("e", 0, 0, "a", 1, 1, 1, 1.1),
        Event("s", 0, 2, "c", 1, 1, 1, 1.2),
        Event("e", 0, 2, "c", 1, 1, 1, 1.3),
    ]
    report = check(plan, events, [Ack(0, 0, 1.2)])
    assert report.lost == [(0, 1)] and not report.ok, report.summary()
    assert "lost 1" in report.summary()


def test_checker_catches_a_handler_that_saw_another_sub_key() -> None:
    """With lanes, Redis holds the lane; a handler that saw it (or any other sub key) instead
    of its item's own is a violation, counted apart, and only when asked for."""
    plan = [PlannedItem("a", 0, 0), PlannedItem(None, 0, 1), PlannedItem("b", 0, 2)]
    events = [
        Event("s", 0, 0, "a", 1, 1, 1, 1.0),
        Event("e", 0, 0, "a", 1, 1, 1, 1.1),
        Event("s", 0, 1, "lane 3", 1, 1, 1, 1.2),
        Event("e", 0, 1, "lane 3", 1, 1, 1, 1.3),
        Event("s", 0, 2, "a", 1, 1, 1, 1.4),
        Event("e", 0, 2, "a", 1, 1, 1, 1.5),
    ]
    acks = [Ack(0, 2, 2.0)]
    assert check(plan, events, acks).ok
    report = check(plan, events, acks, sub_keys=True)
    assert not report.ok and len(report.sub_key_violations) == 2, report.sub_key_violations
    assert "offset 1" in report.sub_key_violations[0] and "None" in report.sub_key_violations[0]
    assert "sub key violations 2" in report.summary()
    assert not (report.lost or report.order_violations or report.watermark_violations)


def test_percentile_is_nearest_rank() -> None:
    assert chaos.percentile([], 50) is None
    assert chaos.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert chaos.percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_command_line_repeats_the_run() -> None:
    config = ChaosConfig(faults=("kill", "stop"), fault_count=7, seed=9, lease=1.5)
    command = config.command()
    assert command.startswith("./scripts/chaos --faults kill,stop --fault-count 7 --seed 9")
    args = chaos_cli.build_parser().parse_args(command.split()[1:])
    again = chaos_cli._config_from(args)
    assert (again.faults, again.fault_count, again.seed, again.lease) == (
        config.faults,
        7,
        9,
        1.5,
    )
    assert again.lanes is None and "--lanes" not in command
    laned = ChaosConfig(faults=("kill",), fault_count=3, seed=2, lanes=4).command()
    assert laned.endswith(" --lanes 4")
    assert chaos_cli._config_from(chaos_cli.build_parser().parse_args(laned.split()[1:])).lanes == 4


# --- the TCP proxy ---------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on a free port (one thread per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            t.start()
            threads.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield port
    stopping.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    acceptor.join(5)


def _connect(proxy: ChaosProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _talk_once(proxy: ChaosProxy) -> None:
    """Connect, send, read; raise OSError if the connection is reset or closed on the way."""
    with _connect(proxy) as sock:
        sock.sendall(b"x")
        if not sock.recv(10):
            raise ConnectionResetError("closed by the proxy")


def test_proxy_passes_bytes_both_ways(echo_server: int) -> None:
    with ChaosProxy("127.0.0.1", echo_server) as proxy, _connect(proxy) as sock:
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_proxy_drop_resets_connections_until_restored(echo_server: int) -> None:
    with ChaosProxy("127.0.0.1", echo_server) as proxy:
        with _connect(proxy) as sock:
            sock.sendall(b"hi")
            assert _recv_exactly(sock, 2) == b"hi"
            proxy.drop()
            with pytest.raises(OSError):  # reset by peer (or a closed socket on send)
                sock.sendall(b"again")
                if not sock.recv(10):
                    raise ConnectionResetError("closed")
        with pytest.raises(OSError):  # accepted, then reset at once
            _talk_once(proxy)
        proxy.set_pass()
        with _connect(proxy) as sock:
            sock.sendall(b"back")
            assert _recv_exactly(sock, 4) == b"back"
    assert proxy.stats.reset >= 1 and proxy.stats.refused >= 1


def test_proxy_stall_holds_bytes_until_resumed(echo_server: int) -> None:
    with ChaosProxy("127.0.0.1", echo_server) as proxy, _connect(proxy) as sock:
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # nothing moves while stalled
        proxy.set_pass()
        sock.settimeout(10)
        assert _recv_exactly(sock, 4) == b"held"


def test_proxy_slow_delays_each_chunk(echo_server: int) -> None:
    with ChaosProxy("127.0.0.1", echo_server) as proxy, _connect(proxy) as sock:
        proxy.slow(0.2)
        started = time.monotonic()
        sock.sendall(b"slow")
        assert _recv_exactly(sock, 4) == b"slow"
        assert time.monotonic() - started >= 0.4  # 0.2 s each way (a lower bound)
        with pytest.raises(ValueError):
            proxy.slow(-1)


def test_proxy_between_redis_py_and_redis() -> None:
    _need_redis_server()
    with (
        RedisServer() as server,
        ChaosProxy("127.0.0.1", server.port) as proxy,
        redis.Redis.from_url(proxy.url()) as client,
    ):
        assert client.ping()
        proxy.drop()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.set_pass()
        assert client.ping()
        assert proxy.connections() >= 1


def test_checker_order_after_a_dead_lettered_item() -> None:
    """A holder paused mid-item past its lease finishes that item late (zombie rule) after the
    reaper dead-lettered it and its successor started: that is no order violation. A run of the
    dead-lettered item under the successor's token is one."""
    plan = [PlannedItem("a", 0, 0), PlannedItem("a", 0, 1)]
    zombie = [
        Event("s", 0, 0, "a", 3, 5, 1, 1.0, "w1"),  # last attempt; w1 is paused here
        Event("s", 0, 1, "a", 1, 6, 2, 4.0, "w2"),  # the reaper dead-lettered 0; 1 runs
        Event("e", 0, 1, "a", 1, 6, 2, 4.1, "w2"),
        Event("e", 0, 0, "a", 3, 5, 1, 5.0, "w1"),  # w1 wakes and finishes 0 (fenced)
    ]
    assert check(plan, zombie, dead_lettered=[(0, 0)]).order_violations == []
    rerun = [*zombie, Event("s", 0, 0, "a", 4, 6, 2, 4.05, "w2")]
    assert len(check(plan, rerun, dead_lettered=[(0, 0)]).order_violations) == 1


def test_a_worker_that_loses_redis_while_starting_is_not_an_unexpected_exit() -> None:
    # Seen in a run: the worker's first command passed, then a proxy drop closed the connection
    # during its start-up checks; it exits 2 like a worker that cannot reach Redis at all.
    lost = (
        "=== harness: start w0.5 at 1796291820.474 | workshaper: error: lost Redis at"
        " 10.213.111.1:36817 at startup: Connection closed by server. (redis redis://x)"
    )
    unreachable = "workshaper: error: cannot reach Redis at 127.0.0.1:1: Connection refused"
    assert worker_exit_kind(2, False, lost) == "unreachable at start"
    assert worker_exit_kind(2, False, unreachable) == "unreachable at start"
    assert worker_exit_kind(2, False, "workshaper: error: --lease must be > 0") is None
    assert worker_exit_kind(-signal.SIGKILL, True, "") == "killed"
    assert worker_exit_kind(-signal.SIGKILL, False, "") is None
    assert worker_exit_kind(POISON_EXIT_STATUS, False, "") == "poison"
