#!lua flags=allow-oom
-- Compute the next watermark of a partition and mark it as being acked.
--
-- KEYS[1..12]  the partition's fixed keys
-- ARGV[1]      "1" to also return every finished offset in (acked, watermark], else "0"
--
-- The watermark is the highest accepted offset below the lowest unfinished one (every accepted
-- offset below that one has finished). While it is offered, enqueue treats offsets at or below
-- it as being acked, so the ack can never pass an offset accepted after this call.
--
-- Returns {acked, watermark, in_queue, offsets...}: watermark == acked means no advance.
--
-- Shebang flags: allow-oom: the ack frees memory; offering it must go through at maxmemory.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local acked = redis.call('HGET', K_META, 'acked') or '-1'
local in_queue = redis.call('LLEN', K_ACCEPTED)
local low = lowest_unfinished()
local finished = in_queue
if low then finished = accepted_rank(low, false) end
if finished == 0 then return {acked, acked, in_queue} end

local top = redis.call('LINDEX', K_ACCEPTED, finished - 1)
local offer = redis.call('HGET', K_META, 'offer')
if not offer or tonumber(offer) < tonumber(top) then
  redis.call('HSET', K_META, 'offer', top)
end
local reply = {acked, top, in_queue}
if ARGV[1] == '1' then
  for _, offset in ipairs(redis.call('LRANGE', K_ACCEPTED, 0, finished - 1)) do
    reply[#reply + 1] = offset
  end
end
return reply
