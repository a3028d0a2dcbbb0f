"""The embedded backend's command table: the Redis commands WorkShaper's scripts and Python code
call, implemented over ``Store`` with Redis's semantics.

Each command takes the store and its arguments as bytes and returns its reply in the shape a
RESP3 connection reads it (what redis-py gets from a real server): ``int``, ``bytes``, ``None``,
``list``, ``dict`` (a map), ``float`` (a double) or ``Status`` (a simple string such as OK).
``lua_runtime.py`` turns the same replies into what ``redis.call`` gives a script (RESP2, as
Redis does for scripts). An error reply is a raised ``CommandError``.

Only what WorkShaper uses is here; an unknown command answers the same error Redis does, so a
script that starts calling a new command fails its tests on this backend until it is added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workshaper.embedded import containers, keyspace, sorted_sets
from workshaper.embedded.protocol import (
    OK,
    Pairs,
    Status,
    format_double,
    to_float,
    wrong_args,
)
from workshaper.embedded.sorted_sets import zpopmin
from workshaper.embedded.store import CommandError, Store

Command = Callable[[Store, list[bytes]], Any]

COMMANDS: dict[bytes, Command] = {
    b"DEL": keyspace.cmd_del,
    b"UNLINK": keyspace.cmd_del,
    b"EXISTS": keyspace.cmd_exists,
    b"TYPE": keyspace.cmd_type,
    b"KEYS": keyspace.cmd_keys,
    b"SCAN": keyspace.cmd_scan,
    b"HSCAN": keyspace.cmd_hscan,
    b"EXPIRE": keyspace.cmd_expire,
    b"PEXPIRE": keyspace.cmd_pexpire,
    b"PTTL": keyspace.cmd_pttl,
    b"FLUSHALL": keyspace.cmd_flushall,
    b"FLUSHDB": keyspace.cmd_flushall,
    b"DBSIZE": keyspace.cmd_dbsize,
    b"GET": keyspace.cmd_get,
    b"SET": keyspace.cmd_set,
    b"INCR": keyspace.cmd_incr,
    b"INCRBY": keyspace.cmd_incrby,
    b"HSET": containers.cmd_hset,
    b"HSETNX": containers.cmd_hsetnx,
    b"HGET": containers.cmd_hget,
    b"HMGET": containers.cmd_hmget,
    b"HDEL": containers.cmd_hdel,
    b"HEXISTS": containers.cmd_hexists,
    b"HINCRBY": containers.cmd_hincrby,
    b"HGETALL": containers.cmd_hgetall,
    b"HLEN": containers.cmd_hlen,
    b"HKEYS": containers.cmd_hkeys,
    b"RPUSH": containers.cmd_rpush,
    b"LPUSH": containers.cmd_lpush,
    b"LLEN": containers.cmd_llen,
    b"LINDEX": containers.cmd_lindex,
    b"LRANGE": containers.cmd_lrange,
    b"LPOS": containers.cmd_lpos,
    b"LTRIM": containers.cmd_ltrim,
    b"LPOP": containers.cmd_lpop,
    b"LINSERT": containers.cmd_linsert,
    b"LSET": containers.cmd_lset,
    b"LREM": containers.cmd_lrem,
    b"SADD": containers.cmd_sadd,
    b"SREM": containers.cmd_srem,
    b"SMEMBERS": containers.cmd_smembers,
    b"SCARD": containers.cmd_scard,
    b"SISMEMBER": containers.cmd_sismember,
    b"ZADD": sorted_sets.cmd_zadd,
    b"ZREM": sorted_sets.cmd_zrem,
    b"ZSCORE": sorted_sets.cmd_zscore,
    b"ZCARD": sorted_sets.cmd_zcard,
    b"ZRANGE": sorted_sets.cmd_zrange,
    b"ZRANGEBYSCORE": sorted_sets.cmd_zrangebyscore,
    b"ZCOUNT": sorted_sets.cmd_zcount,
    b"ZREMRANGEBYSCORE": sorted_sets.cmd_zremrangebyscore,
    b"ZPOPMIN": sorted_sets.cmd_zpopmin,
    b"TIME": keyspace.cmd_time,
    b"PING": keyspace.cmd_ping,
    b"ECHO": keyspace.cmd_echo,
    b"SELECT": keyspace.cmd_ok,
    b"CLIENT": keyspace.cmd_ok,
    b"CONFIG": keyspace.cmd_ok,
    b"INFO": keyspace.cmd_info,
}

#: Commands a script may not call (they block or have no meaning inside a script).
NOT_IN_SCRIPTS = frozenset({b"BZPOPMIN", b"EVAL", b"EVALSHA", b"SCRIPT"})

#: Commands that write: a ``flags=no-writes`` script (or one run by EVALSHA_RO) may not call them.
WRITE_COMMANDS = frozenset(
    {
        b"DEL", b"UNLINK", b"EXPIRE", b"PEXPIRE", b"FLUSHALL", b"FLUSHDB", b"SET", b"INCR",
        b"INCRBY", b"HSET", b"HSETNX", b"HDEL", b"HINCRBY", b"RPUSH", b"LPUSH", b"LTRIM",
        b"LPOP", b"LINSERT", b"LSET", b"LREM", b"SADD", b"SREM", b"ZADD", b"ZREM",
        b"ZREMRANGEBYSCORE", b"ZPOPMIN",
    }
)  # fmt: skip


__all__ = [
    "COMMANDS",
    "NOT_IN_SCRIPTS",
    "OK",
    "WRITE_COMMANDS",
    "CommandError",
    "Pairs",
    "Status",
    "format_double",
    "to_float",
    "wrong_args",
    "zpopmin",
]
