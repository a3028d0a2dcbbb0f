-- List the sub keys of a partition whose lease deadline has passed (server time).
--
-- KEYS[1..11]  the partition's fixed keys
-- ARGV[1]      limit
--
-- Returns {ready, sub1, sub2, ...}: ready is the number of runnable sub keys waiting (so the
-- caller can ring the wake-up bell if a producer died before ringing it). Read-only.
--@include partition.lua

local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
table.insert(expired, 1, redis.call('LLEN', K_READY))
return expired
