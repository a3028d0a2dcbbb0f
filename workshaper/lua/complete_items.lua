#!lua flags=allow-oom
-- Record finished items of one or more leases of a partition, then keep, continue or release.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13..]   the queue list of each lease in the call
-- ARGV[1]      lease duration ms
-- ARGV[2]      batch: items to hand out when a lease continues
-- ARGV[3]      n, the number of leases
-- ARGV[4..]    per lease: extra-key index, sub key, token, action, exact ("1" when the lease
--              runs in single-step mode after a crash, else "0"), k, then k offsets in order
--              action "k" keep: record, extend the lease
--                     "c" continue: record, then hand out the next batch, or release if empty
--                     "y" yield: like "c" when no other sub key of the partition is waiting,
--                         else like "r" (a long-held lease gives way; fairness)
--                     "r" release: record, drop the lease, requeue the sub key if items remain
--
-- Returns one reply per lease: {code, finished, attempts, entry1, entry2, ...} when held,
-- {2, finished, requeued} when released, {-1, 0} when fenced
--   code -1 fenced (the token does not own the lease; nothing written),
--         1 lease held (entries: the next batch, for "c"/"y"), 2 lease released
--   requeued: 1 when the released sub key has items left and went back to `ready` (its
--   worker rings the partition's bell for it), else 0
--   attempts: the "offset|n" record of the new head item, or "" (with entries only)
--   finished: how many of the given offsets this call took off the head of the queue
--
-- Malformed arguments raise an error reply before anything is written.
-- Idempotent: an offset is recorded only while its entry is still at the head of the queue.
--
-- Shebang flags: allow-oom: recording finished items frees memory; it must go through at maxmemory.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local lease_ms, batch, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

-- Every argument is checked before the first write: nothing may fail after it.
local function whole(value, least)
  local v = tonumber(value)
  return v and v == math.floor(v) and v >= least
end
if not whole(lease_ms, 1) then return bad_argument('complete_items', 'lease ms', ARGV[1]) end
if not whole(batch, 1) then return bad_argument('complete_items', 'batch', ARGV[2]) end
if not whole(n, 0) then return bad_argument('complete_items', 'lease count', ARGV[3]) end
-- Where each lease's arguments start in ARGV; its fields are read from there when used (a
-- table per lease costs more than the reads). Names an argument of lease i in an error.
local starts = {}
local function bad_lease(i, what, value)
  return bad_argument('complete_items', what .. ' of lease ' .. string.format('%d', i), value)
end
local a = 4
for i = 1, n do
  local key_index, k, action = tonumber(ARGV[a]), tonumber(ARGV[a + 5]), ARGV[a + 3]
  if not whole(key_index, 1) or not KEYS[FIRST_EXTRA_KEY + key_index - 1] then
    return bad_lease(i, 'key index', ARGV[a])
  end
  if not ARGV[a + 1] or not ARGV[a + 2] then return bad_lease(i, 'sub key/token', nil) end
  if action ~= 'k' and action ~= 'c' and action ~= 'y' and action ~= 'r' then
    return bad_lease(i, 'action', action)
  end
  if not whole(k, 0) or a + 5 + k > #ARGV then return bad_lease(i, 'offset count', ARGV[a + 5]) end
  for j = a + 6, a + 5 + k do
    if not string.match(ARGV[j], '^%d+$') then return bad_lease(i, 'offset', ARGV[j]) end
  end
  starts[i] = a
  a = a + 6 + k
end

-- Nothing may fail after the first write. Before it: the type of every fixed key written below,
-- or read after a write (one probe per key and call, see wrong_type), and every list read: the
-- read each lease needs anyway, with pcall, is its list's type check too.
local err, size = wrong_type('complete_items',
  {K_OWNERS, K_LEASES, K_READY, K_HEADS, K_LATE, K_ATTEMPTS, K_EXACT})
if err then return err end

-- The fencing check of every lease in one HMGET. Sound only if no sub key comes twice: a
-- second completion of a sub key would be checked against what the first one changed.
local subs, seen = {}, {}
for i = 1, n do
  local sub = ARGV[starts[i] + 1]
  if seen[sub] then return bad_argument('complete_items', 'repeated sub key', sub) end
  seen[sub] = true
  subs[i] = sub
end
local owners = call_chunked('HMGET', K_OWNERS, subs)

-- `ready` only grows in this call (released sub keys with items left go to its tail), so its
-- length is read once (the probe) and counted here: a yield continues only while it is 0.
local ready_len = size[K_READY]

-- One read per held lease (the owner record starts with "<token>|", see parse_owner; the prefix
-- is all the fencing check needs): the k entries the worker finished (checked against their
-- offsets), then what follows them (the new head, or the next batch when it may continue).
local held, lists, counts = {}, {}, {}
for i = 1, n do
  local at = starts[i]
  if owners[i] and starts_with_field(owners[i], ARGV[at + 2]) then
    local action, take = ARGV[at + 3], 1
    if action == 'c' or (action == 'y' and ready_len == 0) then take = batch end
    held[#held + 1] = i
    lists[#held] = KEYS[FIRST_EXTRA_KEY + tonumber(ARGV[at]) - 1]
    counts[#held] = tonumber(ARGV[at + 5]) + take
  end
end
local reads
err, reads = read_lists('complete_items', lists, counts, #held)
if err then return err end

local now = now_ms()
local replies = {}
for i = 1, n do replies[i] = {-1, 0} end  -- fenced, unless held below

-- Writes to the partition's shared keys that only concern each lease's own member are
-- collected and sent once per call after the loop (chunked, as every variadic call): a lease
-- then costs its own list's commands only. Nothing in the loop reads these members again.
local extends = {}   -- ZADD leases XX: deadline, sub
local moved = {}     -- ZADD heads: new head offset, sub
local emptied = {}   -- ZREM heads, HDEL exact: queue now empty
local drained = {}   -- DEL: the lists of `emptied`
local released = {}  -- HDEL owners, ZREM leases
local cleared = {}   -- HDEL attempts: the head moved
local late = {}      -- ZREM late: finished offsets, when any were accepted late
local requeued = {}  -- RPUSH ready: released with items left
local deadline = string.format('%d', now + lease_ms)  -- formatted once, not per element
local function extend(sub)
  extends[#extends + 1] = deadline
  extends[#extends + 1] = sub
end

for h = 1, #held do
  local i, list_key, read = held[h], lists[h], reads[h]
  local at = starts[i]
  local sub, action, exact_mode = ARGV[at + 1], ARGV[at + 3], ARGV[at + 4] == '1'
  local k, first = tonumber(ARGV[at + 5]), at + 6
  local continues = false
  local take = 1  -- entries wanted past the finished ones: the new head at least
  if action ~= 'k' then
    continues = action == 'c' or (action == 'y' and ready_len == 0)
    if continues then take = batch end
  end
  local finished = 0
  for j = 1, math.min(k, #read) do
    if not starts_with_field(read[j], ARGV[first + j - 1]) then break end
    finished = j
  end
  if finished > 0 then
    if size[K_LATE] > 0 then
      for j = 1, finished do late[#late + 1] = ARGV[first + j - 1] end
    end
    cleared[#cleared + 1] = sub
    if exact_mode then
      consume_exact(sub, finished)
      end_isolation(sub)  -- flagged again by its worker before the next item starts
    end
    -- The head moved: keep `heads` in step. A corrupt new head has no offset: the old score
    -- stays, which can only hold the watermark back until the entry is dead-lettered.
    local head = read[finished + 1]
    if not head then
      -- The read holds the whole list (it asked for more than `finished`): it is empty now.
      drained[#drained + 1] = list_key
      emptied[#emptied + 1] = sub  -- a crash window ends with the items it was for
    else
      redis.call('LTRIM', list_key, finished, '-1')
      local head_offset = entry_offset(head)
      if head_offset then
        moved[#moved + 1] = head_offset
        moved[#moved + 1] = sub
      end
    end
  end

  if action == 'k' then
    extend(sub)
    replies[i] = {1, finished}
  else
    if exact_mode and continues and tonumber(redis.call('HGET', K_EXACT, sub) or '0') > 0 then
      take = 1
    end
    local nexts = {}
    for j = finished + 1, math.min(finished + take, #read) do nexts[#nexts + 1] = read[j] end
    if continues and nexts[1] then
      extend(sub)
      local attempts = ''
      if finished == 0 and size[K_ATTEMPTS] > 0 then
        attempts = redis.call('HGET', K_ATTEMPTS, sub) or ''
      end
      local reply = {1, finished, attempts}
      for j = 1, #nexts do reply[j + 3] = nexts[j] end
      replies[i] = reply
    else
      released[#released + 1] = sub
      if nexts[1] then
        requeued[#requeued + 1] = sub
        ready_len = ready_len + 1
        replies[i] = {2, finished, 1}
      else
        replies[i] = {2, finished, 0}
      end
    end
  end
end

-- Empty hashes are not written: HDEL of fields that cannot be there is a command per call.
for s = 1, #drained, VARIADIC_CHUNK do
  redis.call('DEL', unpack(drained, s, math.min(s + VARIADIC_CHUNK - 1, #drained)))
end
if size[K_ATTEMPTS] > 0 then call_chunked('HDEL', K_ATTEMPTS, cleared) end
call_chunked('ZREM', K_LATE, late)
call_chunked('ZREM', K_HEADS, emptied)
if size[K_EXACT] > 0 then call_chunked('HDEL', K_EXACT, emptied) end
call_chunked('ZADD', K_HEADS, moved, 2)
call_chunked('HDEL', K_OWNERS, released)
call_chunked('ZREM', K_LEASES, released)
call_chunked('RPUSH', K_READY, requeued)
if #extends > 0 then
  -- XX: never re-create a lease; `released` and `extends` name different sub keys.
  for s = 1, #extends, 2 * VARIADIC_CHUNK do
    redis.call('ZADD', K_LEASES, 'XX',
      unpack(extends, s, math.min(s + 2 * VARIADIC_CHUNK - 1, #extends)))
  end
end
return replies
