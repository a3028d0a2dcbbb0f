#!lua flags=allow-oom
-- Move the acked watermark of a partition after the user's ack returned.
--
-- KEYS[1..12]  the partition's fixed keys
-- ARGV[1]      the watermark that was acked
--
-- Returns the number of accepted-but-not-acked items left in the partition.
-- Idempotent: the watermark only moves up.
--
-- Shebang flags: allow-oom: the ack frees memory; it must go through at maxmemory.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local watermark = ARGV[1]
local acked = redis.call('HGET', K_META, 'acked')
if not acked or tonumber(acked) < tonumber(watermark) then
  redis.call('HSET', K_META, 'acked', watermark)
  local acked_count = accepted_rank(tonumber(watermark), true)
  if acked_count > 0 then redis.call('LTRIM', K_ACCEPTED, acked_count, -1) end
  redis.call('ZREMRANGEBYSCORE', K_CLOCK, '-inf', watermark)
end
local offer = redis.call('HGET', K_META, 'offer')
if offer and tonumber(offer) <= tonumber(watermark) then
  redis.call('HDEL', K_META, 'offer')
end
return redis.call('LLEN', K_ACCEPTED)
