-- Compute the next watermark of a partition and mark it as being acked.
--
-- KEYS[1..10]  the partition's fixed keys
-- ARGV[1]      "1" to also return every finished offset in (acked, watermark], else "0"
--
-- The watermark is the highest finished offset below the lowest unfinished one. While it is
-- offered, enqueue treats offsets at or below it as already acked, so the ack can never pass an
-- offset accepted after this call.
--
-- Returns {acked, watermark, in_queue, offsets...}: watermark == acked means no advance.
--@include partition.lua

local acked = redis.call('HGET', K_META, 'acked') or '-1'
local in_queue = redis.call('ZCARD', K_PENDING) + redis.call('ZCARD', K_DONE)
local lowest_pending = redis.call('ZRANGE', K_PENDING, 0, 0)[1]
local upper = '+inf'
if lowest_pending then upper = '(' .. lowest_pending end
local top = redis.call('ZREVRANGEBYSCORE', K_DONE, upper, '(' .. acked, 'LIMIT', 0, 1)[1]
if not top then return {acked, acked, in_queue} end

local offer = redis.call('HGET', K_META, 'offer')
if not offer or tonumber(offer) < tonumber(top) then
  redis.call('HSET', K_META, 'offer', top)
end
local reply = {acked, top, in_queue}
if ARGV[1] == '1' then
  for _, offset in ipairs(redis.call('ZRANGEBYSCORE', K_DONE, '(' .. acked, top)) do
    reply[#reply + 1] = offset
  end
end
return reply
