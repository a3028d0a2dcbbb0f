"""Least-privilege Redis ACLs: the commands and key patterns each role needs in one namespace.

Three roles:

- ``worker``: runs items (claims, completes, fails, renews and reaps leases, blocks on the
  wake-up bell, keeps its registry entry);
- ``producer``: enqueues, advances and records watermarks (also the Kafka bridge);
- ``admin``: read-only status, dead letters, blocked sub keys and workers (``workshaper status``
  and friends); unblocking or purging needs a user with the producer's or worker's rights.

Commands that run inside the Lua scripts are checked by Redis against the caller's ACL too
(Redis 7), so each role lists them. Keys are limited to the namespace's patterns
(``keys.namespace_key_patterns``); the admin's are read-only (``%R~``). No role gets a pub/sub
channel, KEYS, SCAN, FLUSH*, CONFIG, or EVAL of a script text.

``acl_setuser(role, namespace, user)`` gives the ``ACL SETUSER`` line; it sets permissions only
and leaves the user's passwords and on/off state alone (see docs/security.md).
"""

from __future__ import annotations

import re

import redis

from workshaper import codec
from workshaper.connection import Backend, access_denied
from workshaper.errors import BackendUnavailable, InvalidInput
from workshaper.keys import NamespaceKeys, namespace_key_patterns
from workshaper.lua_scripts import load_script, register_scripts

ROLES = ("worker", "producer", "admin")

#: Every connection: health checks and the database of the URL. (redis-py also sends CLIENT
#: SETINFO on connect and ignores a refusal; Redis 7.0 has no such subcommand to allow.)
_CONNECTION = ("ping", "select")
#: What redis-py's cluster client sends on a Redis Cluster (``redis+cluster://``): the slot map,
#: the command table (to find a command's keys) and ASKING before a command redirected by ASK
#: (a slot being migrated). Harmless on a single server: none of them touches a key.
_CLUSTER = ("cluster|slots", "command", "asking")
#: Running the Lua scripts: by SHA only, loading them after a restart or a failover. The
#: admin's scripts only read, with EVALSHA_RO (its keys are read-only).
_SCRIPTS = ("evalsha", "script|load")
_READ_ONLY_SCRIPTS = ("evalsha_ro", "script|load")

#: The Lua scripts each role runs. The commands they call are read from their sources (Redis
#: checks each ``redis.call`` against the caller's ACL), so a changed script changes the ACL.
ROLE_SCRIPTS: dict[str, tuple[str, ...]] = {
    "worker": (
        "claim_sub_keys",
        "complete_items",
        "fail_item",
        "extend_leases",
        "expire_lease",
        "mark_isolated",
        "reaper_lock",
        "register_worker",
        "prune_workers",
    ),
    "producer": ("enqueue_items", "offer_watermark", "commit_watermark"),
    # read-only views of workshaper.ops (status, stuck, the exporter, the dashboard)
    "admin": ("inspect_partition", "stuck_sub_keys"),
}
#: Scripts of operator actions that change state (``unblock``, ``dead-letters replay``): no
#: role of its own; run them as a worker or producer user.
ACTION_SCRIPTS = ("unblock_sub_key", "replay_dead_letter")

#: Commands each role sends itself, outside the scripts.
DIRECT_COMMANDS: dict[str, tuple[str, ...]] = {
    # the wake-up bell, the partition index, the reaper's lease scan and lock
    "worker": ("bzpopmin", "zadd", "smembers", "lrange", "llen", "zrangebyscore", "pttl", "hdel"),
    # the partition index, the wake-up bell, the acked watermark, the namespace's lane count
    # (SET NX, GET); the Kafka bridge's consumer group and dead letters of records it cannot
    # enqueue
    "producer": ("sadd", "zadd", "hget", "hsetnx", "hset", "set", "get"),
    # status, dead letters, blocked sub keys, workers (heartbeat ages in server time)
    "admin": ("smembers", "hget", "hgetall", "hscan", "hlen", "llen", "zcard", "zrange", "time"),
}

#: A command name at a call site: ``redis.call('HSET', ...)``, or through the chunking wrapper
#: of includes/partition.lua, ``call_chunked('ZADD', ...)``.
_CALL = re.compile(r"""(?:redis\.p?call|call_chunked)\(\s*['"]([A-Za-z]+)['"]""")
#: A call site whose command is not written out (only the wrapper may have one).
DYNAMIC_CALL = re.compile(r"""redis\.p?call\(\s*[^'"\s]""")


#: A Lua comment, to the end of its line (no script has "--" inside a string literal).
_COMMENT = re.compile(r"--[^\n]*")


def script_commands(name: str) -> set[str]:
    """The commands the script ``name`` (with its includes) may call, lower case; a call
    written in a comment (an example) is none."""
    return {c.lower() for c in _CALL.findall(_COMMENT.sub("", load_script(name).source))}


def role_commands(role: str) -> list[str]:
    """Every command ``role`` needs, sorted."""
    check_role(role)
    commands = {*_CONNECTION, *_CLUSTER, *DIRECT_COMMANDS[role]}
    if ROLE_SCRIPTS[role]:
        commands.update(_READ_ONLY_SCRIPTS if role == "admin" else _SCRIPTS)
    for name in ROLE_SCRIPTS[role]:
        commands |= script_commands(name)
    return sorted(commands)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def default_user(role: str, namespace: str) -> str:
    return f"ws-{check_role(role)}-{namespace}"


def acl_rules(role: str, namespace: str) -> list[str]:
    """The ACL rules of ``role`` in ``namespace``, from a clean slate of permissions."""
    codec.check_namespace(namespace)
    check_role(role)
    key_prefix = "%R~" if role == "admin" else "~"
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in role_commands(role)),
        *(key_prefix + p for p in namespace_key_patterns(namespace)),
    ]


def acl_setuser(role: str, namespace: str, user: str | None = None) -> str:
    """The ``ACL SETUSER`` command line (redis-cli syntax) for ``role`` in ``namespace``."""
    name = user or default_user(role, namespace)
    if not name or any(c.isspace() for c in name):
        raise InvalidInput(f"user name {name!r} must be non-empty and have no whitespace")
    return " ".join(["ACL", "SETUSER", name, *acl_rules(role, namespace)])


def check_worker_access(backend: Backend, keys: NamespaceKeys, worker_id: str) -> None:
    """Fail fast, at startup, when the user's ACL lacks what a worker needs first: loading the
    scripts and writing the namespace's keys. Raises AccessDenied naming the refusal (the CLI
    exits 2 with that one line) instead of a worker that starts and then fails every turn."""
    try:
        register_scripts(backend)
        backend.client.smembers(keys.partitions)
        # This worker has no registry entry yet: a write of the namespace that changes nothing.
        backend.client.hdel(keys.workers, worker_id)
    except redis.exceptions.NoPermissionError as exc:
        raise access_denied(backend, exc) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable(f"lost Redis at {backend.where} at startup: {exc}") from None
