#!lua
-- Run a dead letter again: its queue entry goes back to the tail of its sub key's queue, so it
-- runs under the sub key's order (after the items queued now), and its record is removed.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13]     the sub key's queue list
-- ARGV[1]      the dead-letter field (the offset)
-- ARGV[2]      the encoded sub key
--
-- Returns {code, entry}: 1 queued again (entry: the queue entry to look for), 0 no such dead
-- letter (nothing written).
--
-- An offset above the watermark being acked is tracked in `late`, so the watermark waits for
-- the new run; one at or below it was acked already and only runs again.
-- Idempotent: a second call finds no record.
--
-- Shebang flags: none: it puts an entry back on a queue (grows memory), so at maxmemory Redis refuses it
-- before it runs, like an enqueue.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local field, sub = ARGV[1], ARGV[2]
local list_key = KEYS[FIRST_EXTRA_KEY]
local record = redis.call('HGET', K_DEAD, field)
if not record then return {0, ''} end
local _, _, entry = string.find(record, '^[^\n]*\n[^\n]*\n[^\n]*\n(.*)$')
if not entry then return {0, ''} end
local offset = entry_offset(entry)
if not offset then return {0, ''} end

redis.call('HDEL', K_DEAD, field)
local meta = redis.call('HMGET', K_META, 'acked', 'offer')
local floor = math.max(tonumber(meta[1] or '-1'), tonumber(meta[2] or '-1'))
if tonumber(offset) > floor then redis.call('ZADD', K_LATE, offset, offset) end
if redis.call('RPUSH', list_key, entry) == 1 then
  redis.call('ZADD', K_HEADS, offset, sub)
  if redis.call('HEXISTS', K_OWNERS, sub) == 0 then redis.call('RPUSH', K_READY, sub) end
end
return {1, entry}
