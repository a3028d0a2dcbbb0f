-- Enqueue a batch of items into one partition, in order, with dedupe and backpressure.
--
-- KEYS[1..11]  the partition's fixed keys (includes/partition.lua)
-- KEYS[12..]   the queue list of each distinct sub key in the batch
-- ARGV[1]      max_in_queue: accepted-but-not-acked items allowed in this partition
-- ARGV[2]      n, the number of items
-- ARGV[3..]    n groups of 4: extra-key index (1-based), encoded sub key, offset, queue entry
--
-- Returns one status per item, in order:
--   0 accepted, 1 duplicate (pending, running or finished above the watermark),
--   2 already acked (at or below the acked watermark),
--   3 full (max_in_queue reached: this item and every later one were not written; a
--     duplicate is reported as a duplicate even then, so a replaying producer never blocks),
--   4 being acked (above the acked watermark but at or below the watermark offered to the
--     ack callback and not committed yet: finished, or a gap the ack will cover)
--
-- Offsets normally arrive in increasing order: those above the highest accepted one take the
-- fast path (no lookups; appended to `accepted` in one RPUSH). An offset at or below it is a
-- re-delivery (binary search in `accepted` finds it: duplicate) or, rarely, a gap filled late
-- (inserted in order, and tracked in `late` so the watermark waits for it).
--
-- Idempotent: run twice, the second run finds every item a duplicate.
--@include partition.lua

local max_in_queue = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local meta = redis.call('HMGET', K_META, 'acked', 'offer', 'max')
local acked = tonumber(meta[1] or '-1')
local floor = math.max(acked, tonumber(meta[2] or '-1'))
local highest_s = meta[3]
local highest = tonumber(highest_s or '-1')
local in_queue = redis.call('LLEN', K_ACCEPTED)

local CHUNK = 2000  -- Lua's unpack() has a stack limit: write in chunks
local statuses = {}
local buckets, order = {}, {}
local fresh = {}  -- accepted offsets above every earlier one, appended to `accepted` at the end
local seen = {}
local full = false

local function append_fresh()
  for s = 1, #fresh, CHUNK do
    redis.call('RPUSH', K_ACCEPTED, unpack(fresh, s, math.min(s + CHUNK - 1, #fresh)))
  end
  fresh = {}
end

-- Was an offset at or below the highest accepted one accepted already (and not acked)?
local function already_accepted(offset)
  append_fresh()
  local at = redis.call('LINDEX', K_ACCEPTED, accepted_rank(offset, false))
  return at and tonumber(at) == offset
end

-- A gap filled late: insert it in order, and remember it in `late` so the watermark waits.
local function insert_late(offset, offset_s)
  local at = redis.call('LINDEX', K_ACCEPTED, accepted_rank(offset, false))
  if at then
    redis.call('LINSERT', K_ACCEPTED, 'BEFORE', at, offset_s)
  else
    redis.call('RPUSH', K_ACCEPTED, offset_s)
  end
  redis.call('ZADD', K_LATE, offset_s, offset_s)
end

local function keep(key_index, sub, entry)
  local bucket = buckets[key_index]
  if not bucket then
    bucket = {sub = sub, entries = {}}
    buckets[key_index] = bucket
    order[#order + 1] = key_index
  end
  bucket.entries[#bucket.entries + 1] = entry
end

for i = 0, n - 1 do
  local a = 3 + i * 4
  local key_index, sub, offset_s, entry = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local offset = tonumber(offset_s)
  local status
  if full then
    status = 3
  elseif offset <= acked then
    status = 2
  elseif offset <= floor then
    status = 4
  elseif seen[offset_s] or (offset <= highest and already_accepted(offset)) then
    status = 1  -- a duplicate is never refused as full: a replaying producer must not block
  elseif in_queue >= max_in_queue then
    full = true
    status = 3
  elseif offset > highest then
    status = 0
    highest, highest_s = offset, offset_s
    fresh[#fresh + 1] = offset_s
  else
    status = 0
    insert_late(offset, offset_s)
  end
  if status == 0 then
    seen[offset_s] = true
    in_queue = in_queue + 1
    keep(key_index, sub, entry)
  end
  statuses[i + 1] = status
end
append_fresh()

for _, key_index in ipairs(order) do
  local bucket = buckets[key_index]
  local list_key = KEYS[FIRST_EXTRA_KEY + key_index - 1]
  local entries = bucket.entries
  local before
  for s = 1, #entries, CHUNK do
    local last = math.min(s + CHUNK - 1, #entries)
    local len = redis.call('RPUSH', list_key, unpack(entries, s, last))
    before = before or (len - (last - s + 1))
  end
  if before == 0 then
    -- The queue was empty: its first entry is now its head (the oldest unfinished item).
    redis.call('ZADD', K_HEADS, entry_offset(entries[1]), bucket.sub)
    -- Nobody holds or waits on it, so make it runnable. (A leased sub key is picked up by its
    -- holder; a blocked one keeps its head item, so its queue is never empty.)
    if redis.call('HEXISTS', K_OWNERS, bucket.sub) == 0 then
      redis.call('RPUSH', K_READY, bucket.sub)
    end
  end
end
if highest_s and highest_s ~= meta[3] then
  redis.call('HSET', K_META, 'max', highest_s)
end
return statuses
