#!lua flags=no-writes
-- Read one partition's state for operators (status, exporter, dashboard). Read-only.
--
-- KEYS[1..12]  the partition's fixed keys
--
-- Returns {now_ms, acked, max, unacked, first_unacked, lowest_unfinished, pending_sub_keys,
--          runnable_sub_keys, leased_sub_keys, expired_leases, blocked_sub_keys, dead_letters,
--          oldest_accepted_ms}
--   acked, max, first_unacked, lowest_unfinished, oldest_accepted_ms: "" when unknown
--   oldest_accepted_ms: server ms when the lowest unfinished offset was accepted (the first
--     clock sample at or above it), so its age is now_ms minus this
--
-- One call per partition, all in one pipeline: a scrape costs a few commands, never a scan.
--
-- Shebang flags: no-writes: it only reads, so the admin runs it with EVALSHA_RO (on a read-only ACL), and
-- at maxmemory too.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local now = now_ms()
local meta = redis.call('HMGET', K_META, 'acked', 'max')
local low = lowest_unfinished()
local oldest = ''
local low_s = ''
if low then
  low_s = string.format('%d', low)
  oldest = redis.call('ZRANGEBYSCORE', K_CLOCK, low, '+inf', 'LIMIT', 0, 1)[1] or ''
end
return {
  now,
  meta[1] or '',
  meta[2] or '',
  redis.call('LLEN', K_ACCEPTED),
  redis.call('LINDEX', K_ACCEPTED, 0) or '',
  low_s,
  redis.call('ZCARD', K_HEADS),
  redis.call('LLEN', K_READY),
  redis.call('ZCARD', K_LEASES),
  redis.call('ZCOUNT', K_LEASES, '-inf', now),
  redis.call('HLEN', K_BLOCKED),
  redis.call('HLEN', K_DEAD),
  oldest,
}
