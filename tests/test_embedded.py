"""The embedded backend answers like a real redis-server: the same redis-py calls and the same
scripts give the same Python values on both (redis-py 8 speaks RESP3 to the real one)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
import redis

from workshaper.connection import Backend, connect, embedded_backend
from workshaper_tools.testing import RedisServer

Op = Callable[[redis.Redis, str], Any]


def _pipeline(c: redis.Redis, k: str) -> Any:
    pipe = c.pipeline(transaction=False)
    pipe.rpush(k, "a", "b")
    pipe.lrange(k, 0, -1)
    pipe.hget(k, "x")  # wrong type: its own error, the rest still answer
    pipe.llen(k)
    return [type(r).__name__ if isinstance(r, Exception) else r for r in pipe.execute(False)]


def _error(call: Callable[[], Any]) -> str:
    try:
        call()
    except redis.ResponseError as exc:
        return type(exc).__name__ + ": " + str(exc).split()[0]
    return "no error"


#: Each operation runs on a fresh key prefix; its return value is compared across backends.
OPERATIONS: dict[str, Op] = {
    "ping": lambda c, k: c.ping(),
    "set/get": lambda c, k: (c.set(k, "v"), c.get(k), c.get(k + "missing")),
    "set px": lambda c, k: (c.set(k, "v", px=60_000), c.pttl(k) > 0, c.exists(k)),
    "hashes": lambda c, k: (
        c.hset(k, mapping={"a": "1", "b": "2"}),
        c.hget(k, "a"),
        c.hmget(k, ["a", "zz"]),
        c.hincrby(k, "a", 5),
        c.hexists(k, "b"),
        c.hdel(k, "b", "zz"),
        c.hgetall(k),
        c.hlen(k),
        c.hgetall(k + "none"),
        sorted(c.hscan_iter(k)),
        sorted(c.hscan_iter(k, match="a*")),
    ),
    "lists": lambda c, k: (
        c.rpush(k, 1, 2, 3, 4),
        c.lrange(k, 0, -1),
        c.lrange(k, -2, 10),
        c.lindex(k, -1),
        c.lindex(k, 9),
        c.linsert(k, "BEFORE", cast(str, 3), "x"),  # cast: typed str; redis-py encodes an int
        c.linsert(k, "AFTER", "nope", "y"),
        c.lpop(k),
        c.lpop(k, 2),
        c.lset(k, 0, "z"),
        c.ltrim(k, 1, -1),
        c.llen(k),
        c.lpop(k + "none"),
        c.lpop(k + "none", 3),
        c.exists(k),
    ),
    "sets": lambda c, k: (c.sadd(k, "a", "b", "a"), c.smembers(k), c.smembers(k + "none")),
    "sorted sets": lambda c, k: (
        c.zadd(k, {"a": 1.5, "b": 2, "c": 2}),
        c.zadd(k, {"a": 9}, xx=True),
        c.zadd(k, {"d": 9}, nx=True),
        c.zadd(k, {"b": 0}, gt=True),
        c.zscore(k, "a"),
        c.zscore(k, "nope"),
        c.zrange(k, 0, -1),
        c.zrange(k, 0, 1, withscores=True),
        c.zrangebyscore(k, "(2", "+inf"),
        c.zrangebyscore(k, "-inf", 9, start=1, num=2),
        c.zcard(k),
        c.zrem(k, "a", "nope"),
        c.bzpopmin(k, timeout=1),
        c.bzpopmin(k + "none", timeout=0.05),
    ),
    "delete empties": lambda c, k: (
        c.rpush(k, "a"),
        c.lpop(k),
        c.exists(k),
        c.zadd(k + "z", {"m": 1}),
        c.zrem(k + "z", "m"),
        c.exists(k + "z"),
        c.delete(k, k + "z"),
    ),
    "wrong type": lambda c, k: (c.set(k, "s"), _error(lambda: c.lpush(k, "x"))),
    "script replies": lambda c, k: (
        c.eval("return {1, 'two', false, 4}", 0),
        c.eval("return {1, 2, nil, 4}", 0),
        c.eval("return 3.9", 0),
        c.eval("return -3.9", 0),
        c.eval("return true", 0),
        c.eval("return false", 0),
        c.eval("return {ok = 'FINE'}", 0),
        c.eval("return redis.call('TIME')[2] ~= nil", 0),
        c.eval("return redis.status_reply('YES')", 0),
        _error(lambda: c.eval("return redis.error_reply('MY failure')", 0)),
        _error(lambda: c.evalsha("0" * 40, 0)),
    ),
    "script calls": lambda c, k: (
        c.eval(
            "redis.call('ZADD', KEYS[1], 1e15, 'a', 0.1, 'b', 9007199254740991, 'c');"
            "return {redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),"
            " redis.call('ZSCORE', KEYS[1], 'b'), redis.call('HGET', KEYS[2], 'x'),"
            " redis.call('LPOP', KEYS[2] .. 'l'), redis.call('SET', KEYS[2], 'v'),"
            " redis.call('HMGET', KEYS[2] .. 'h', 'a', 'b'), tostring(2^53 - 1),"
            " string.format('%d', 2^53 - 1), redis.call('EXISTS', KEYS[1], KEYS[2])}",
            2,
            k,
            k + "other",
        ),
        c.eval("return redis.pcall('LPUSH', KEYS[1], 'x')['err'] ~= nil", 1, k),
        _error(lambda: c.eval("return redis.call('LPUSH', KEYS[1], 'x')", 1, k)),
    ),
    # The shipped scripts carry a #!lua shebang (docs/scaling.md): parsed and checked as by
    # Redis 7, and a no-writes script (or any script run with EVAL_RO) may not write.
    "shebang": lambda c, k: (
        c.eval("#!lua\nreturn redis.call('SET', KEYS[1], 'v')", 1, k),
        c.eval("#!lua flags=allow-oom\nreturn redis.call('GET', KEYS[1])", 1, k),
        c.eval("#!lua flags=no-writes,allow-oom\nreturn redis.call('GET', KEYS[1])", 1, k),
        c.eval_ro("#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])", 1, k),
        _error(lambda: c.eval("#!lua flags=no-writes\nreturn redis.call('DEL', KEYS[1])", 1, k)),
        _error(lambda: c.eval_ro("return redis.call('DEL', KEYS[1])", 1, k)),
        _error(lambda: c.eval_ro("#!lua\nreturn 1", 0)),
        _error(lambda: c.eval("#!lua flags=no-such-flag\nreturn 1", 0)),
        c.get(k),
    ),
    "cjson": lambda c, k: c.eval(
        "return cjson.encode({type = 'T', message = 'a/b \"q\" \\n', n = 3, f = 1.5, "
        "big = 2^53, list = {1, 'x'}})",
        0,
    ),
    "cjson round trip": lambda c, k: c.eval(
        "return cjson.encode(cjson.decode(ARGV[1]))",
        0,
        '{"a": null, "b": [1, 2, null], "c": "x/y", "d": 1.5, "e": {"f": true}}',
    ),
    "pipeline": _pipeline,
}


def _normalise(name: str, value: Any) -> Any:
    if name.startswith(
        "cjson"
    ):  # key order follows Lua's table hashing: compare the decoded object
        import json

        return json.loads(value)
    return value


@pytest.fixture(scope="module")
def both(redis_server: RedisServer) -> Any:
    embedded = embedded_backend()
    real = connect(redis_server.url)
    yield embedded, real
    embedded.close()
    real.close()


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_embedded_answers_like_redis(
    name: str, both: tuple[Backend, Backend], namespace: str
) -> None:
    embedded, real = both
    operation = OPERATIONS[name]
    key = f"{namespace}:{name}"
    got = _normalise(name, operation(embedded.client, key))
    want = _normalise(name, operation(real.client, key))
    assert got == want


def test_bzpopmin_wakes_on_zadd_from_another_thread() -> None:
    backend = embedded_backend()
    client = backend.client
    popped: list[Any] = []
    waiter = threading.Thread(target=lambda: popped.append(client.bzpopmin("bell", timeout=30)))
    waiter.start()
    client.zadd("bell", {"3": 0})
    waiter.join(30)
    assert popped == [(b"bell", b"3", 0.0)]


def test_direct_bzpopmin_answers_as_the_client_does() -> None:
    """The waker's direct pop: the same member as through redis-py, None after the timeout,
    and a wrong-type key raises the same redis-py error."""
    backend = embedded_backend()
    server, client = backend.server, backend.client
    assert server is not None
    popped: list[Any] = []
    waiter = threading.Thread(target=lambda: popped.append(server.bzpopmin(b"bell", 30)))
    waiter.start()
    client.zadd("bell", {"3": 0})
    waiter.join(30)
    assert popped[0][:2] == [b"bell", b"3"]
    assert int(popped[0][1]) == 3
    assert server.bzpopmin(b"bell", 0.01) is None
    client.set("text", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        server.bzpopmin(b"text", 0.01)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.bzpopmin("text", timeout=0.01)


def test_a_batchs_script_call_answers_as_the_flat_evalsha_does() -> None:
    """Batch.script's ("EVALSHA", sha, numkeys as an int, ...) runs with its keys and arguments
    kept apart (EmbeddedServer._run_script): every reply and error is the one the same call
    gives as flat EVALSHA arguments (numkeys as bytes, the general path), for a transcribed
    script, for one that runs in Lua, and for a script not loaded."""
    from workshaper.embedded import EmbeddedServer
    from workshaper.keys import NamespaceKeys
    from workshaper.lua_scripts import load_script, register_scripts

    def run(server_commands: list[tuple[Any, ...]]) -> tuple[list[Any], int]:
        """Each reply (an error as its type and text), and how many calls ran apart."""
        backend = embedded_backend(EmbeddedServer(clock=lambda: 1000.0))
        register_scripts(backend)
        assert backend.server is not None
        scripts, apart = backend.server.scripts, [0]
        run_apart = scripts.evalsha_apart

        def counted(sha: bytes, keys: list[bytes], argv: list[bytes]) -> Any:
            apart[0] += 1
            return run_apart(sha, keys, argv)

        scripts.evalsha_apart = counted  # type: ignore[method-assign]
        replies = backend.server.execute_many(server_commands)
        return [r if not isinstance(r, Exception) else (type(r), str(r)) for r in replies], apart[0]

    pkeys = NamespaceKeys("apart").partition(3)
    queue = pkeys.queue(b"sa")
    entry = b"0|b" + b"x" * 10
    enqueue = ("enqueue_items", [*pkeys.fixed, queue], ["r1", 100, -1, 1, 1, 0, 1, b"sa", 1, entry])
    claim = ("claim_sub_keys", [*pkeys.fixed, b"ws:{apart:3}:claim:w"],
             ["w", "c1", 1, 30000, 100, 3, "d", pkeys.queue_prefix])  # fmt: skip
    offer = ("offer_watermark", pkeys.fixed, [0])
    broken = ("complete_items", [*pkeys.fixed, queue], [30000, 100, 1, 1, b"sa", 1, "x", 0, 0, 0])
    inspect: tuple[str, tuple[bytes, ...], list[Any]]
    inspect = ("inspect_partition", pkeys.fixed, [])  # read-only: runs in Lua
    calls: list[tuple[str, Sequence[bytes], Sequence[Any]]]
    calls = [enqueue, claim, offer, broken, enqueue, inspect]
    apart = [("EVALSHA", load_script(n).sha, len(k), *k, *a) for n, k, a in calls]
    flat = [("EVALSHA", load_script(n).sha, str(len(k)), *k, *a) for n, k, a in calls]
    short = ("EVALSHA", load_script("offer_watermark").sha)  # no numkeys: an error reply
    replies, ran_apart = run([*apart, ("EVALSHA", "0" * 40, 1, b"k", b"a"), short])
    assert (replies, 0) == run([*flat, ("EVALSHA", "0" * 40, "1", b"k", b"a"), short])
    assert ran_apart == 7
    assert replies[7][0] is redis.ResponseError and "wrong number" in replies[7][1]
    assert replies[0] == 1 and replies[1][0] == 0 and replies[1][1] == b"sa"
    assert "action of lease 1" in replies[3][1]  # the transcription's argument check
    assert replies[4] == 1  # the re-sent enqueue: its first answer
    assert replies[5][0] == 1000000  # inspect_partition's now_ms, by the server's clock
    assert replies[6][0] is redis.exceptions.NoScriptError


def test_expired_keys_vanish_by_the_store_clock() -> None:
    from workshaper.embedded import EmbeddedServer

    now = [1000.0]
    server = EmbeddedServer(clock=lambda: now[0])
    client = server.client()
    client.set("k", "v", px=1500)
    assert client.eval("return redis.call('TIME')[1]", 0) == b"1000"
    now[0] += 1.0
    assert client.get("k") == b"v"
    now[0] += 1.0
    assert client.get("k") is None
    assert client.exists("k") == 0


def test_unknown_commands_are_refused_like_redis() -> None:
    client = embedded_backend().client
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command("NOSUCHCOMMAND", "x")  # type: ignore[no-untyped-call]  # unannotated in redis-py
    with pytest.raises(redis.ResponseError, match="Unknown Redis command called from script"):
        client.eval("return redis.call('NOSUCHCOMMAND')", 0)


def test_the_fakeredis_fallback_runs_the_scripts_without_their_shebang(namespace: str) -> None:
    """fakeredis does not parse a ``#!lua`` shebang: its backend gets the scripts without it."""
    import workshaper
    from workshaper.connection import fakeredis_backend
    from workshaper.ops.inspection import Inspector

    backend = fakeredis_backend()
    done: list[int] = []
    with workshaper.Producer(backend, namespace) as producer:
        producer.enqueue_many([("a", "m", 0, o) for o in range(5)])
        worker = workshaper.Worker(backend, namespace, work=lambda m, p, o: done.append(o))
        worker.start()
        try:
            assert producer.flush(timeout=60)
        finally:
            worker.stop()
    assert done == [0, 1, 2, 3, 4]
    assert len(Inspector(backend, namespace).snapshot().partitions) == 1
