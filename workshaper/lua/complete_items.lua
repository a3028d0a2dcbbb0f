-- Record finished items of one or more leases of a partition, then keep, continue or release.
--
-- KEYS[1..11]  the partition's fixed keys
-- KEYS[12..]   the queue list of each lease in the call
-- ARGV[1]      lease duration ms
-- ARGV[2]      batch: items to hand out when a lease continues
-- ARGV[3]      n, the number of leases
-- ARGV[4..]    per lease: extra-key index, sub key, token, action, k, then k offsets in order
--              action "k" keep: record, extend the lease
--                     "c" continue: record, then hand out the next batch, or release if empty
--                     "y" yield: like "c" when no other sub key of the partition is waiting,
--                         else like "r" (a long-held lease gives way; fairness)
--                     "r" release: record, drop the lease, requeue the sub key if items remain
--
-- Returns one reply per lease: {code, finished, attempts, entry1, entry2, ...}
--   code -1 fenced (the token does not own the lease; nothing written),
--         1 lease held (entries: the next batch, for "c"/"y"), 2 lease released
--   attempts: the "offset|n" record of the new head item, or "" (with entries only)
--   finished: how many of the given offsets this call took off the head of the queue
--
-- Idempotent: an offset is recorded only while its entry is still at the head of the queue.
--@include partition.lua

local lease_ms, batch, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local has_late = redis.call('EXISTS', K_LATE) == 1
local replies = {}
local a = 4

for i = 1, n do
  local key_index, sub, token, action = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local k = tonumber(ARGV[a + 4])
  local first = a + 5
  a = first + k
  local list_key = KEYS[FIRST_EXTRA_KEY + key_index - 1]

  if owner_token(sub) ~= token then
    replies[i] = {-1, 0}
  else
    local finished = 0
    if k > 0 then
      local heads = redis.call('LRANGE', list_key, 0, k - 1)
      for j = 1, #heads do
        local prefix = ARGV[first + j - 1] .. '|'
        if string.sub(heads[j], 1, #prefix) ~= prefix then break end
        finished = j
      end
      if finished > 0 then
        redis.call('LTRIM', list_key, finished, -1)
        refresh_head(sub, list_key)
        if has_late then
          local offsets = {}
          for j = 1, finished do offsets[j] = ARGV[first + j - 1] end
          forget_late(offsets, finished)
        end
        redis.call('HDEL', K_ATTEMPTS, sub)
        consume_exact(sub, finished)
      end
    end

    local continues = action == 'c' or (action == 'y' and redis.call('LLEN', K_READY) == 0)
    if action == 'k' then
      extend_lease(sub, lease_ms, now)
      replies[i] = {1, finished}
    elseif continues and redis.call('LLEN', list_key) > 0 then
      extend_lease(sub, lease_ms, now)
      local take = batch
      if tonumber(redis.call('HGET', K_EXACT, sub) or '0') > 0 then take = 1 end
      local reply = redis.call('LRANGE', list_key, 0, take - 1)
      table.insert(reply, 1, redis.call('HGET', K_ATTEMPTS, sub) or '')
      table.insert(reply, 1, finished)
      table.insert(reply, 1, 1)
      replies[i] = reply
    else
      release_lease(sub, list_key, true)
      replies[i] = {2, finished}
    end
  end
end
return replies
