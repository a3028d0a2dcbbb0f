"""ACLs on a private redis-server: each role works under its own ACL, a user of another
namespace can neither read nor change this namespace's keys, and a denial at a worker's startup
is one clear line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import workshaper
from workshaper.access import acl_rules, acl_setuser, default_user
from workshaper.admin import Admin
from workshaper.errors import AccessDenied, InvalidInput
from workshaper.keys import NamespaceKeys
from workshaper.lua_scripts import load_script
from workshaper_tools.testing import RedisServer

from .conftest import _need_redis_server

NS, OTHER = "acl-ns", "acl-other"
PASSWORD = "acl-pw-1"


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server of these tests alone: they add users to it."""
    _need_redis_server()
    with RedisServer(password="admin-pw") as s:
        with s.client() as c:
            for namespace in (NS, OTHER):
                for role in ("worker", "producer", "admin"):
                    line = acl_setuser(role, namespace)
                    c.execute_command(*line.split())
                    c.acl_setuser(
                        default_user(role, namespace), enabled=True, passwords=[f"+{PASSWORD}"]
                    )
        yield s


def url(server: RedisServer, role: str, namespace: str = NS) -> str:
    return f"redis://{default_user(role, namespace)}:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_the_setuser_line() -> None:
    line = acl_setuser("worker", "orders")
    assert line.startswith("ACL SETUSER ws-worker-orders resetkeys resetchannels -@all +")
    assert line.endswith(" ~ws:{orders}:* ~ws:{orders:*")
    assert "%R~ws:{orders}:*" in acl_rules("admin", "orders")
    assert "~ws:{a\\*b}:*" in acl_rules("producer", "a*b")  # a glob character is literal
    with pytest.raises(InvalidInput, match="role must be one of worker, producer, admin"):
        acl_setuser("root", "orders")
    with pytest.raises(InvalidInput, match="namespace"):
        acl_setuser("worker", "a:b")


def test_each_role_works_under_its_acl(server: RedisServer) -> None:
    done: list[int] = []
    with workshaper.Producer(url(server, "producer"), NS) as producer:
        producer.enqueue_many([("k", f"m{o}", 0, o) for o in range(30)])
        producer.enqueue_many([(None, "x", 1, 0)])
        worker = workshaper.Worker(
            url(server, "worker"), NS, work=lambda m, p, o: done.append(o), lease=2.0
        )
        worker.start()
        try:
            assert producer.flush(timeout=60)
        finally:
            assert worker.stop(timeout=30)
        assert producer.watermark(0) == 29
    assert sorted(done) == [0, *range(30)]
    admin = Admin(url(server, "admin"), NS)
    status = {s.partition: s for s in admin.status()}
    assert status[0].acked == 29 and status[0].pending == 0
    assert admin.dead_letters(0) == [] and admin.blocked(0) == []
    admin.workers()
    # The operator views (status, stuck, the exporter, the dashboard) read as the admin too.
    from workshaper.ops.inspection import Inspector

    inspector = Inspector(url(server, "admin"), NS)
    snapshot = inspector.snapshot(stuck_after=0)
    assert [p.acked for p in snapshot.partitions] == [29, 0] and snapshot.stuck == []
    assert inspector.dead_letters() == [] and inspector.blocked() == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        admin.purge_dead_letters(0)  # read-only
    admin.close()


def test_producer_with_lanes_works_under_its_acl(server: RedisServer) -> None:
    """The producer role records and reads the namespace's lane count (SET NX, GET); the
    worker runs lane entries (in OTHER: NS has no lanes, recorded by the test above)."""
    done: list[object] = []

    def work(message: object, partition: int, offset: int) -> None:
        done.append(workshaper.current_job().sub_key)

    with workshaper.Producer(url(server, "producer", OTHER), OTHER, lanes=4) as producer:
        producer.enqueue_many([(f"k{o % 3}", "m", 0, o) for o in range(12)])
        worker = workshaper.Worker(url(server, "worker", OTHER), OTHER, work=work).start()
        try:
            assert producer.flush(timeout=60)
        finally:
            assert worker.stop(timeout=30)
    assert sorted(map(str, done)) == sorted(f"k{o % 3}" for o in range(12))
    with (
        workshaper.Producer(url(server, "producer", OTHER), OTHER) as producer,
        pytest.raises(workshaper.LaneCountMismatch, match="lanes=4"),
    ):
        producer.enqueue("k", "m", 0, 100)


def test_another_namespace_can_neither_read_nor_change_this_one(server: RedisServer) -> None:
    with workshaper.Producer(url(server, "producer"), NS) as producer:
        producer.enqueue("victim", "m", 5, 0)
    mine = NamespaceKeys(NS)
    meta = mine.partition(5).meta
    for role in ("worker", "producer", "admin"):
        with redis.Redis.from_url(url(server, role, OTHER)) as c:
            for command in (
                ("HGETALL", meta),
                ("SMEMBERS", mine.partitions),
                ("HSET", meta, "acked", 99),
                ("ZADD", mine.wake, 0, 5),
                ("LRANGE", mine.partition(5).ready, 0, -1),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    c.execute_command(*command)
            if role != "admin":
                # A script of theirs touching our keys is refused inside the script too.
                with pytest.raises(redis.ResponseError, match=r"(?i)permissions"):
                    c.evalsha(load_script("commit_watermark").sha, 11, *mine.partition(5).fixed, 99)
                sha = c.script_load("return redis.call('HGET', KEYS[1], 'acked')")
                with pytest.raises(redis.ResponseError):
                    c.evalsha(sha, 1, meta)
                with pytest.raises(redis.exceptions.NoPermissionError):
                    c.execute_command("KEYS", "*")
    with redis.Redis(port=server.port, password="admin-pw") as c:
        assert c.hget(meta, "acked") is None  # untouched


@pytest.mark.parametrize(
    ("role", "namespace"), [("worker", OTHER), ("admin", NS), ("producer", NS)]
)
def test_acl_denial_at_worker_startup_exits_2_with_one_line(
    server: RedisServer, role: str, namespace: str
) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "workshaper-worker"),
         "workshaper_tools.testing.journal:work",
         "--redis", url(server, role, namespace), "--namespace", NS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"Redis at 127.0.0.1:{server.port} denied access" in result.stderr
    assert PASSWORD not in result.stderr


def test_acl_denial_in_the_library_is_access_denied(server: RedisServer) -> None:
    with pytest.raises(AccessDenied, match="denied access"):
        workshaper.Worker(url(server, "worker", OTHER), NS, work=print)


def test_every_script_belongs_to_a_role() -> None:
    """A new script must be given to the role that runs it, or its commands are missing from
    that role's ACL (the commands are read from the script sources)."""
    from workshaper.access import ACTION_SCRIPTS, ROLE_SCRIPTS, script_commands
    from workshaper.lua_scripts import SCRIPT_NAMES

    assigned = {n for names in ROLE_SCRIPTS.values() for n in names} | set(ACTION_SCRIPTS)
    assert assigned == set(SCRIPT_NAMES)
    assert {"hset", "time"} <= script_commands("register_worker")
    assert "zrem" in script_commands("claim_sub_keys")  # through the chunking wrapper


def test_every_redis_call_names_its_command() -> None:
    """Commands are read from the sources: a call with a computed name would hide one. The
    only such call is the chunking wrapper's, whose callers name the command."""
    from workshaper.access import DYNAMIC_CALL
    from workshaper.lua_scripts import SCRIPT_NAMES, load_script

    for name in SCRIPT_NAMES:
        lines = [ln for ln in load_script(name).source.splitlines() if DYNAMIC_CALL.search(ln)]
        assert all("redis.call(command, key," in ln for ln in lines), (name, lines)


def test_acl_command_and_denials_in_the_operator_commands(server: RedisServer) -> None:
    workshaper_cli = str(Path(sys.executable).parent / "workshaper")
    printed = subprocess.run(
        [workshaper_cli, "acl", "--namespace", NS, "--role", "worker"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout == acl_setuser("worker", NS) + "\n"
    status = subprocess.run(
        [workshaper_cli, "status", "--redis", url(server, "admin"), "--namespace", NS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr  # the read-only user sees the namespace
    for args in (
        ["status", "--redis", url(server, "admin", OTHER)],  # another namespace's user
        ["unblock", "0", "k", "--redis", url(server, "admin")],  # the read-only user acting
    ):
        result = subprocess.run(
            [workshaper_cli, *args, "--namespace", NS],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "denied access" in result.stderr
        assert PASSWORD not in result.stderr
