#!lua flags=allow-oom
-- Write a worker's heartbeat into the namespace's registry, stamped with server time.
--
-- KEYS[1]  ws:{ns}:workers  HASH worker id -> JSON
-- ARGV[1]  worker id
-- ARGV[2]  JSON object describing the worker (host, pid, concurrency, leases, ...)
--
-- Sets the field "seen" (server time, seconds) so that pruning (prune_workers.lua) compares
-- one clock, never the clocks of different hosts. Returns 1. Idempotent.
--
-- Shebang flags: allow-oom: a heartbeat overwrites this worker's one field; refusing it at maxmemory would
-- get live workers pruned.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).

local info = cjson.decode(ARGV[2])
local t = redis.call('TIME')
info['seen'] = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(info))
return 1
