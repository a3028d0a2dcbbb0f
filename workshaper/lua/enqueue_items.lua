-- Enqueue a batch of items into one partition, in order, with dedupe and backpressure.
--
-- KEYS[1..10]  the partition's fixed keys (includes/partition.lua)
-- KEYS[11..]   the queue list of each distinct sub key in the batch
-- ARGV[1]      max_in_queue: accepted-but-not-acked items allowed in this partition
-- ARGV[2]      n, the number of items
-- ARGV[3..]    n groups of 4: extra-key index (1-based), encoded sub key, offset, queue entry
--
-- Returns one status per item, in order:
--   0 accepted, 1 duplicate (pending, running or finished above the watermark),
--   2 already acked (at or below the acked watermark),
--   3 full (max_in_queue reached: this item and every later one were not written),
--   4 being acked (above the acked watermark but at or below the watermark offered to the
--     ack callback and not committed yet: finished, or a gap the ack will cover)
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
local in_queue = redis.call('ZCARD', K_PENDING) + redis.call('ZCARD', K_DONE)

local statuses = {}
local buckets, order = {}, {}
local scored = {}
local seen = {}
local full = false

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
  elseif seen[offset_s] or (offset <= highest and
      (redis.call('ZSCORE', K_PENDING, offset_s) or redis.call('ZSCORE', K_DONE, offset_s))) then
    status = 1
  elseif in_queue >= max_in_queue then
    full = true
    status = 3
  else
    status = 0
    seen[offset_s] = true
    in_queue = in_queue + 1
    if offset > highest then highest, highest_s = offset, offset_s end
    local bucket = buckets[key_index]
    if not bucket then
      bucket = {sub = sub, entries = {}}
      buckets[key_index] = bucket
      order[#order + 1] = key_index
    end
    bucket.entries[#bucket.entries + 1] = entry
    scored[#scored + 1] = offset_s
    scored[#scored + 1] = offset_s
  end
  statuses[i + 1] = status
end

-- Lua's unpack() has a stack limit: write in chunks.
local CHUNK = 2000
for _, key_index in ipairs(order) do
  local bucket = buckets[key_index]
  local list_key = KEYS[FIRST_EXTRA_KEY + key_index - 1]
  local entries = bucket.entries
  local first_len
  for s = 1, #entries, CHUNK do
    local len = redis.call('RPUSH', list_key, unpack(entries, s, math.min(s + CHUNK - 1, #entries)))
    first_len = first_len or (len - (math.min(s + CHUNK - 1, #entries) - s + 1))
  end
  -- The list was empty before: nobody holds or waits on this sub key, so make it runnable.
  -- (A leased sub key is picked up by its holder; a blocked one keeps its head item.)
  if first_len == 0 and redis.call('HEXISTS', K_OWNERS, bucket.sub) == 0 then
    redis.call('RPUSH', K_READY, bucket.sub)
  end
end
for s = 1, #scored, CHUNK do
  redis.call('ZADD', K_PENDING, unpack(scored, s, math.min(s + CHUNK - 1, #scored)))
end
if highest_s and highest_s ~= meta[3] then
  redis.call('HSET', K_META, 'max', highest_s)
end
return statuses
