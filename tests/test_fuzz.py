"""Hostile input, systematically (issue 8, item 14): hypothesis throws generated values at every
public entry point and corrupts the state under our keys. Each case must end in a clear error
(a WorkShaperError naming what was wrong) or a dead-lettered item: never another exception, a
dead worker, a lost item or a stuck partition.

The default suite runs a modest, derandomized budget; ``pytest -m slow tests/test_fuzz.py``
runs each target with ten times as many cases. ``CASES`` counts the cases tried (printed with
``-s``; docs/reliability.md reports the numbers).
"""

from __future__ import annotations

import collections
import json
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from hypothesis import strategies as st

import workshaper
from workshaper import Enqueued, InvalidInput, QueueFull, codec
from workshaper.connection import Backend, connect
from workshaper_tools.testing import RedisServer

from . import fuzzing

#: Cases tried per target in this process.
CASES: collections.Counter[str] = collections.Counter()
#: Examples per target in the default suite; the slow run multiplies it.
BUDGET = 150
SLOW_FACTOR = 10

pytestmark = pytest.mark.timeout(600)


def run_fuzz(name: str, examples: int, test: Callable[..., None], **strategies: Any) -> None:
    """Run ``test`` on ``examples`` generated cases (seeded by the test, so every run tries the
    same cases), counted in ``CASES``."""
    fuzzing.run_fuzz(CASES, name, examples, test, **strategies)


@pytest.fixture(scope="module", autouse=True)
def report_cases() -> Iterator[None]:
    yield
    total = sum(n for name, n in CASES.items() if "," not in name)  # not the sub-counts
    print("\nfuzz cases tried:", dict(sorted(CASES.items())), "total", total)


# --- strategies --------------------------------------------------------------------------------

lone_surrogates = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2)
texts = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), lone_surrogates, st.text(max_size=4)),
)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
odd_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**63, 10**5000]),
    st.floats(),
    st.booleans(),
    st.decimals(allow_nan=True),
    st.fractions(),
)


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` about 80% of the time. (``one_of`` weighs its flattened branches about
    equally, and ``anything`` has twenty: it would crowd out the sensible values.)"""
    return st.integers(0, 9).flatmap(lambda k: valid if k < 8 else invalid)


# memoryview itself, typed: mypy cannot solve its item type through st.builds on its own.
bytes_view: Callable[[bytes], memoryview[int]] = memoryview

anything = st.one_of(
    st.none(),
    odd_numbers,
    texts,
    st.binary(max_size=16),
    st.builds(bytearray, st.binary(max_size=8)),
    st.builds(bytes_view, st.binary(max_size=8)),
    json_like,
    st.tuples(st.integers(), texts),
    st.frozensets(st.integers(), max_size=2),
    st.builds(object),
    st.just(print),
    st.just(float("nan")),
)
sub_keys = mostly(st.one_of(texts, st.integers(), st.binary(max_size=12), st.none()), anything)
messages = mostly(st.one_of(texts, st.binary(max_size=32), json_like), anything)
partitions = mostly(st.integers(min_value=0, max_value=3), anything)
offsets = mostly(st.integers(min_value=0, max_value=10**6), anything)


def expected_message(message: Any) -> Any:
    """What a worker gets back for ``message``."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message)
    if isinstance(message, str):
        return message
    return json.loads(json.dumps(message))


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to itself (never stored, but kept safe)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def keys_of(backend: Backend, namespace: str) -> set[bytes]:
    return set(backend.client.scan_iter(match=f"ws:{{{namespace}*", count=1000))


@pytest.fixture
def real_backend(redis_server: RedisServer) -> Iterator[Backend]:
    backend = connect(redis_server.url)
    yield backend
    backend.close()


# --- enqueue arguments -------------------------------------------------------------------------


def fuzz_enqueue(backend: Backend, examples: int) -> None:
    namespace = "fz" + uuid.uuid4().hex[:10]
    with workshaper.Producer(
        backend, namespace, max_in_queue=10**6, max_message_bytes=4096
    ) as producer:

        def case(sub_key: Any, message: Any, partition: Any, offset: Any) -> None:
            try:
                status = producer.enqueue(sub_key, message, partition, offset, timeout=0)
            except (InvalidInput, QueueFull):
                return  # InvalidType is an InvalidInput
            assert isinstance(status, Enqueued)
            CASES["enqueue, written"] += 1
            if status is not Enqueued.ACCEPTED:
                return
            # What was accepted comes back to a worker as it went in.
            pkeys = producer._pkeys(partition)
            queue = pkeys.queue(codec.encode_sub_key(sub_key, offset))
            raw = cast("bytes | None", backend.client.lindex(queue, -1))  # bytes replies
            assert raw is not None
            entry = codec.parse_entry(raw)
            assert entry.offset == offset
            assert same(entry.message(), expected_message(message))

        run_fuzz(
            "enqueue",
            examples,
            case,
            sub_key=sub_keys,
            message=messages,
            partition=partitions,
            offset=offsets,
        )


def test_fuzz_enqueue_arguments(real_backend: Backend) -> None:
    fuzz_enqueue(real_backend, 2 * BUDGET)


@pytest.mark.slow
def test_fuzz_enqueue_arguments_long(real_backend: Backend) -> None:
    fuzz_enqueue(real_backend, 2 * BUDGET * SLOW_FACTOR)


def fuzz_enqueue_many(backend: Backend, examples: int) -> None:
    namespace = "fz" + uuid.uuid4().hex[:10]
    item = st.tuples(sub_keys, messages, partitions, offsets)
    good = st.tuples(
        st.text(max_size=3), st.text(max_size=3), st.integers(0, 2), st.integers(0, 10**6)
    )
    batches = st.one_of(
        st.lists(st.one_of(good, good, item, st.lists(anything, max_size=5), anything), max_size=6),
        anything,
    )
    with workshaper.Producer(backend, namespace, max_in_queue=10**6) as producer:

        def case(items: Any) -> None:
            before = keys_of(backend, namespace), backend.client.dbsize()
            try:
                statuses = producer.enqueue_many(items, timeout=0)
            except InvalidInput:
                # Validated before anything was written.
                assert (keys_of(backend, namespace), backend.client.dbsize()) == before
                return
            except QueueFull:
                return
            assert len(statuses) == len(items)
            assert all(isinstance(s, Enqueued) for s in statuses)

        run_fuzz("enqueue_many", examples, case, items=batches)


def test_fuzz_enqueue_many(real_backend: Backend) -> None:
    fuzz_enqueue_many(real_backend, BUDGET)


@pytest.mark.slow
def test_fuzz_enqueue_many_long(real_backend: Backend) -> None:
    fuzz_enqueue_many(real_backend, BUDGET * SLOW_FACTOR)


# --- constructor options -----------------------------------------------------------------------

namespaces = mostly(
    st.from_regex(r"\A[a-z0-9_.-]{1,12}\Z"),
    st.one_of(st.text(max_size=12), st.sampled_from(["a:b", "a{b", "", " ", "x" * 201]), anything),
)
edge_numbers = st.one_of(
    st.integers(min_value=-2, max_value=64),
    st.floats(min_value=-1, max_value=100),
    st.sampled_from([0, 0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300, 10**30, True]),
    anything,
)
#: Mostly sensible values, so that many cases build an object that must then work.
counts = mostly(st.integers(1, 8), edge_numbers)
seconds = mostly(st.floats(0.05, 2), edge_numbers)
callables = mostly(st.just(lambda *a: None), st.one_of(st.none(), anything))


def constructed(make: Callable[[], Any]) -> Any:
    """``make()``'s object, or None when it raised InvalidInput (a clear error, no thread
    left behind)."""
    threads = set(threading.enumerate())
    try:
        return make()
    except InvalidInput as exc:
        assert str(exc)
        assert set(threading.enumerate()) <= threads, "a failed constructor left a thread"
        return None


def small(value: Any, limit: float) -> bool:
    """Is an option's value (accepted, so a number, or None for the default) small enough to
    run the object in a test?"""
    return value is None or value <= limit


def fuzz_producer_options(backend: Backend, examples: int) -> None:
    namespace = "fz" + uuid.uuid4().hex[:10]
    worker = workshaper.Worker(backend, namespace, work=lambda m, p, o: None).start()
    partition = iter(range(10**6))

    def case(namespace_: Any, options: dict[str, Any]) -> None:
        producer = constructed(lambda: workshaper.Producer(backend, namespace_, **options))
        if producer is None:
            return
        producer.close()
        if not small(options.get("ack_interval"), 1.0):
            return
        # Accepted options make a producer that works: an item goes in and is acked.
        CASES["Producer options, run"] += 1
        with workshaper.Producer(backend, namespace, **options) as producer:
            assert producer.enqueue("k", "m", next(partition), 0) is Enqueued.ACCEPTED
            assert producer.flush(timeout=30)

    options = st.fixed_dictionaries(
        {},
        optional={
            "max_in_queue": counts,
            "ack": callables,
            "ack_interval": seconds,
            "ack_each": st.one_of(st.booleans(), st.booleans(), anything),
            "max_message_bytes": mostly(st.integers(10, 10**6), edge_numbers),
        },
    )
    try:
        run_fuzz("Producer options", examples, case, namespace_=namespaces, options=options)
    finally:
        worker.stop(10)


def fuzz_worker_options(backend: Backend, examples: int) -> None:
    def case(namespace: Any, work: Any, options: dict[str, Any]) -> None:
        worker = constructed(lambda: workshaper.Worker(backend, namespace, work=work, **options))
        if worker is None:
            return
        runnable = all(
            small(options.get(name), limit)
            for name, limit in (("concurrency", 16), ("prefetch", 32), ("retry_backoff", 1))
        )
        if not runnable:
            return
        # Accepted options make a worker that works: it runs an item, which gets acked.
        CASES["Worker options, run"] += 1
        worker.start()
        try:
            with workshaper.Producer(backend, namespace) as producer:
                producer.enqueue("k", "m", 0, 0)
                assert producer.flush(timeout=30)
            assert worker._thread is not None and worker._thread.is_alive()
        finally:
            worker.stop(10)

    options = st.fixed_dictionaries(
        {},
        optional={
            "on_done": callables,
            "on_error": callables,
            "concurrency": counts,
            "lease": seconds,
            "max_attempts": counts,
            "retry_backoff": st.one_of(st.just(0), seconds),
            "on_exhausted": st.one_of(st.sampled_from(["dead_letter", "block", "x"]), anything),
            "batch_size": counts,
            "prefetch": st.one_of(st.none(), st.just(0), counts),
            "name": st.one_of(st.none(), texts, anything),
        },
    )
    run_fuzz(
        "Worker options",
        examples,
        case,
        namespace=namespaces,
        work=st.one_of(st.just(lambda m, p, o: None), callables),
        options=options,
    )


def fuzz_manager_options(backend: Backend, examples: int) -> None:
    def case(work: Any, options: dict[str, Any]) -> None:
        namespace = "fz" + uuid.uuid4().hex[:10]
        manager = constructed(
            lambda: workshaper.Manager(work, redis=backend, namespace=namespace, **options)
        )
        if manager is None:
            return
        try:
            if small(options.get("ack_interval"), 1.0):
                CASES["Manager options, run"] += 1
                assert manager.enqueue("k", "m", 0, 0) is Enqueued.ACCEPTED
                assert manager.flush(timeout=30)
                assert manager.total_enqueued == 1
        finally:
            manager.shutdown(10, wait=False)

    options = st.fixed_dictionaries(
        {},
        optional={
            "on_done": callables,
            "ack": callables,
            "on_error": callables,
            "max_in_queue": counts,
            "concurrency": st.one_of(
                st.integers(1, 4), st.sampled_from([0, -1, 1.5, "2", None, True, 10**6])
            ),
            "ack_interval": seconds,
            "lease": seconds,
            "batch_size": counts,
            "prefetch": st.one_of(st.none(), st.integers(0, 4)),
        },
    )
    run_fuzz(
        "Manager options",
        examples,
        case,
        work=st.one_of(st.just(lambda m, p, o: None), callables),
        options=options,
    )


def test_fuzz_constructor_options(real_backend: Backend) -> None:
    fuzz_producer_options(real_backend, BUDGET)
    fuzz_worker_options(real_backend, BUDGET)
    fuzz_manager_options(real_backend, BUDGET // 3)


@pytest.mark.slow
def test_fuzz_constructor_options_long(real_backend: Backend) -> None:
    fuzz_producer_options(real_backend, BUDGET * SLOW_FACTOR)
    fuzz_worker_options(real_backend, BUDGET * SLOW_FACTOR)
    fuzz_manager_options(real_backend, BUDGET // 3 * SLOW_FACTOR)


# --- URLs --------------------------------------------------------------------------------------

#: Parameter names redis-py or our URL parser know, and a few it does not.
url_params = st.sampled_from(
    [
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "max_connections",
        "client_name",
        "username",
        "password",
        "protocol",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "sentinel_password",
        "retry_on_timeout",
        "decode_responses",
        "nonsense",
    ]
)
url_values = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "0.5", "1e9", "nan", "inf", "true", "none", "/nope"]),
    st.text(max_size=6),
)


def urls(live_port: int, dead_port: int) -> st.SearchStrategy[str]:
    """URLs made of plausible and hostile parts, pointing only at this machine (no DNS)."""
    scheme = st.sampled_from(["redis", "rediss", "unix", "redis+sentinel", "http", "", "REDIS"])
    userinfo = st.sampled_from(["", "user@", ":pw@", "user:pw@", ":@", "%zz@", "u:p:q@"])
    host = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "[::1", "127.0.0.1,"])
    port = st.one_of(
        st.sampled_from(["", f":{live_port}", f":{dead_port}", ":0", ":65536", ":-1", ":x"]),
        st.integers(-5, 99999).map(lambda p: f":{p}"),
    )
    path = st.sampled_from(["", "/", "/0", "/15", "/16", "/999999", "/x", "/-1", "/svc", "/a/b/c"])
    query = st.lists(st.tuples(url_params, url_values), max_size=3).map(
        lambda pairs: ("?" + "&".join(f"{k}={v}" for k, v in pairs)) if pairs else ""
    )
    tail = st.one_of(st.just(""), texts)

    def url(scheme: str, userinfo: str, host: str, port: str, *rest: str) -> str:
        # Only what fails fast: an unreachable sentinel costs redis-py's retries (~4 s), TLS to
        # a plain server a handshake timeout (5 s), both together ~60 s.
        if scheme == "redis+sentinel":
            host, port = "127.0.0.1", f":{live_port}"
        elif scheme == "rediss":
            port = f":{dead_port}"
        return f"{scheme}://{userinfo}{host}{port}{''.join(rest)}"

    return st.builds(
        url,
        scheme,
        userinfo,
        host,
        port,
        path,
        query,
        tail,
    )


def fuzz_urls(redis_server: RedisServer, examples: int) -> None:
    from workshaper_tools.testing import free_port

    def case(url: str) -> None:
        try:
            backend = connect(url)
        except workshaper.WorkShaperError as exc:  # BackendUnavailable, InvalidInput, ...
            assert str(exc)
            assert "pw@" not in str(exc)  # the password is never shown
            return
        try:  # it connected: it must work
            assert backend.client.ping()
        finally:
            backend.close()

    run_fuzz("URLs", examples, case, url=urls(redis_server.port, free_port()))


def test_fuzz_urls(redis_server: RedisServer) -> None:
    fuzz_urls(redis_server, BUDGET)


@pytest.mark.slow
def test_fuzz_urls_long(redis_server: RedisServer) -> None:
    fuzz_urls(redis_server, BUDGET * SLOW_FACTOR)


# --- CLI flags ---------------------------------------------------------------------------------

cli_flags = st.sampled_from(
    [
        "--concurrency",
        "--lease",
        "--max-attempts",
        "--retry-backoff",
        "--batch-size",
        "--prefetch",
        "--on-exhausted",
        "--namespace",
        "--name",
        "--on-done",
        "--on-error",
        "--log-level",
        "--log-format",
        "--metrics-port",
        "--redis",
        "--bogus",
    ]
)
cli_values = mostly(
    st.sampled_from(
        ["1", "0", "-1", "2.5", "nan", "inf", "1e400", "x", "", "a:b", "os:getcwd", "DEBUG"]
    ),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8),
)


def fuzz_worker_cli(examples: int, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from workshaper.cli.worker import worker_main
    from workshaper_tools.testing import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    handler = st.sampled_from(["workshaper_tools.testing.journal:work", "os:getcwd", "nope", ""])

    def case(handler: str, flags: list[tuple[str, str]]) -> None:
        argv = [handler] + [x for pair in flags for x in pair] + ["--redis", dead]
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with pytest.raises(SystemExit) as info:
                worker_main(argv)  # a dead Redis: a run never starts
        finally:  # the CLI configures logging for its process: give pytest's back
            root.handlers[:] = handlers
            root.setLevel(level)
        err = capsys.readouterr().err
        assert info.value.code == 2, (argv, err)
        assert "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(("workshaper", "usage", "workshaper-"))

    run_fuzz(
        "worker CLI",
        examples,
        case,
        handler=handler,
        flags=st.lists(st.tuples(cli_flags, cli_values), max_size=4),
    )


def test_fuzz_worker_cli(capsys: pytest.CaptureFixture[str]) -> None:
    fuzz_worker_cli(BUDGET // 3, capsys)


@pytest.mark.slow
def test_fuzz_worker_cli_long(capsys: pytest.CaptureFixture[str]) -> None:
    fuzz_worker_cli(BUDGET // 3 * SLOW_FACTOR, capsys)
