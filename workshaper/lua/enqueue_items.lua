#!lua
-- Enqueue a batch of items into one partition, in order, with dedupe and backpressure.
--
-- KEYS[1..12]  the partition's fixed keys (includes/partition.lua)
-- KEYS[13..]   the queue list of each sub key group (group j -> KEYS[12 + j])
-- ARGV[1]      request id: unique per call of this producer process (a re-sent call has the
--              same id and gets the answer of its first run, not "duplicate" for its own items)
-- ARGV[2]      max_in_queue: accepted-but-not-acked items allowed in this partition
-- ARGV[3]      the highest offset the caller saw accepted in this partition (-1: none). If the
--              partition's highest accepted offset is below it, Redis lost writes (restarted
--              from an older snapshot, a failover to a lagging replica): nothing is written
--              and every status is 5, so the caller can enqueue the lost items again before
--              anything later is accepted and the watermark moves over them.
-- ARGV[4]      n, the number of items
-- ARGV[5]      g, the number of sub key groups
-- ARGV[6 .. 5+n]        the items' offsets, in item order
-- ARGV[6+n .. 5+2n]     the items' group numbers (1-based), in item order
-- then per group j: encoded sub key, count, then its items' queue entries in item order
--
-- Returns the integer n when every item was accepted, else one status per item, in order:
--   0 accepted, 1 duplicate (pending, running or finished above the watermark),
--   2 already acked (at or below the acked watermark),
--   3 full (max_in_queue reached: this item and every later one were not written; a
--     duplicate is reported as a duplicate even then, so a replaying producer never blocks),
--   4 being acked (above the acked watermark but at or below the watermark offered to the
--     ack callback and not committed yet: finished, or a gap the ack will cover),
--   5 lost writes (see ARGV[3]): nothing was written
--
-- Fast path: offsets strictly increasing, all above every accepted one, and room for all of
-- them: each group's entries go from ARGV to its list in one RPUSH, with no per-item work.
-- Those RPUSHes are its first writes, before `accepted` and the rest: a list of the wrong type
-- fails its RPUSH (through redis.pcall), the groups pushed before it are trimmed off their
-- lists' tails again, and the call fails naming the list with every key as it was.
-- Otherwise each item is decided in order. An offset at or below the highest accepted one is a
-- re-delivery (binary search in `accepted` finds it: duplicate) or, rarely, a gap filled late
-- (inserted in order, and tracked in `late` so the watermark waits for it).
--
-- Idempotent: run twice with the same request id, the second run returns the first one's answer,
-- kept in meta field `request` ("<id>|n<count>" or "<id>|<one status digit per item>") until
-- the partition's next enqueue (one producer per partition: nothing else overwrites it between
-- a call and its re-send). Under another id, the same items are duplicates.
--
-- Shebang flags: none: it grows memory (queue entries), so at maxmemory Redis refuses it before it runs
-- (-OOM, nothing written; the producer raises RedisOutOfMemory). All its keys are in KEYS.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local request = ARGV[1]
local max_in_queue = tonumber(ARGV[2])
local expected_highest = tonumber(ARGV[3])
local n, groups = tonumber(ARGV[4]), tonumber(ARGV[5])
local OFFSETS, GROUP_OF = 5, 5 + n  -- ARGV[OFFSETS + i] / ARGV[GROUP_OF + i], i = 1..n
local CHUNK = 2000  -- Lua's unpack() has a stack limit: write in chunks

local meta = redis.call('HMGET', K_META, 'acked', 'offer', 'max', 'request')
if meta[4] and string.sub(meta[4], 1, #request + 1) == request .. '|' then
  local answer = string.sub(meta[4], #request + 2)
  if string.sub(answer, 1, 1) == 'n' then return tonumber(string.sub(answer, 2)) end
  local statuses = {}
  for i = 1, #answer do statuses[i] = string.byte(answer, i) - 48 end
  return statuses
end
local acked = tonumber(meta[1] or '-1')
local floor = math.max(acked, tonumber(meta[2] or '-1'))
local highest_s = meta[3]
local highest = tonumber(highest_s or '-1')
if highest < expected_highest then
  local statuses = {}
  for i = 1, n do statuses[i] = 5 end
  return statuses
end
local in_queue = redis.call('LLEN', K_ACCEPTED)
-- Nothing may fail after the first write: every key written below, or read after a write, is
-- of its type (one probe per fixed key and call; `meta` and `accepted` were read above). The
-- queue lists are not probed here: the fast path's first writes are their RPUSHes, undone if
-- one fails; the general path probes them before it writes.
local err, size = wrong_type('enqueue_items', {K_HEADS, K_LATE, K_READY, K_OWNERS, K_CLOCK})
if err then return err end

-- Where each group's entries start in ARGV, and its sub key.
local group_sub, group_first = {}, {}
local a = 6 + 2 * n
for j = 1, groups do
  group_sub[j] = ARGV[a]
  group_first[j] = a + 2
  a = a + 2 + tonumber(ARGV[a + 1])
end

local function rpush_range(key, first, last)
  local len = 0
  for s = first, last, CHUNK do
    len = redis.call('RPUSH', key, unpack(ARGV, s, math.min(s + CHUNK - 1, last)))
  end
  return len
end

-- rpush_range to a queue list, each RPUSH through redis.pcall. Returns the list's length, or
-- the error reply (a table) and how many entries the RPUSHes before it pushed: a wrong type
-- fails the first RPUSH; a later one fails only in a malformed call (a nil value: a count
-- past the end of ARGV).
local function pcall_rpush_range(key, first, last)
  local len = 0
  for s = first, last, CHUNK do
    len = redis.pcall('RPUSH', key, unpack(ARGV, s, math.min(s + CHUNK - 1, last)))
    if type(len) == 'table' then return len, s - first end
  end
  return len
end

-- Queues that were empty get their first entry as head; they become runnable unless leased (a
-- leased sub key is picked up by its holder; a blocked one keeps its head item, so its queue is
-- never empty). One ZADD, HMGET and RPUSH for all of them, each through call_chunked (no HMGET
-- while nothing is leased). The tables grow through counters (`#t` is a search per append,
-- per sub key here); an entry without an offset adds no score, as `t[#t + 1] = nil` adds none.
local new_heads, new_subs, nheads, nsubs = {}, {}, 0, 0
local function new_head(entry, sub)
  local offset = entry_offset(entry)
  if offset then
    nheads = nheads + 1
    new_heads[nheads] = offset
  end
  if sub then
    nheads = nheads + 1
    new_heads[nheads] = sub
    nsubs = nsubs + 1
    new_subs[nsubs] = sub
  end
end

local function register_new_heads()
  call_chunked('ZADD', K_HEADS, new_heads, 2, 1, nheads)
  local owners = {}
  if size[K_OWNERS] > 0 then owners = call_chunked('HMGET', K_OWNERS, new_subs, 1, 1, nsubs) end
  local runnable, nrunnable = {}, 0
  for j = 1, nsubs do
    if not owners[j] then
      nrunnable = nrunnable + 1
      runnable[nrunnable] = new_subs[j]
    end
  end
  call_chunked('RPUSH', K_READY, runnable, 1, 1, nrunnable)
end

local function fast_path_applies()
  if in_queue + n > max_in_queue then return false end
  local previous = math.max(highest, floor)
  for i = 1, n do
    local offset = tonumber(ARGV[OFFSETS + i])
    if offset <= previous then return false end
    previous = offset
  end
  return true
end

if n > 0 and fast_path_applies() then
  -- The lists first, each RPUSH through redis.pcall: a list's type is checked by its RPUSH
  -- itself, at no command of its own (a probe cost an EXISTS per call and an LLEN per list
  -- that exists). If one fails, nothing but this call's entries was written yet, and they are
  -- at the tails of their lists: trim exactly those off (a list that was new ends empty, and
  -- Redis deletes an empty list), and the call fails with every key as it was. LTRIM rather
  -- than RPOP: it replies no entries, and the producer's ACL allows it already (a user set up
  -- from an older `workshaper acl` line would refuse an RPOP, and the undo would stop halfway).
  for j = 1, groups do
    local list, first = KEYS[FIRST_EXTRA_KEY + j - 1], group_first[j]
    local count = tonumber(ARGV[first - 1])
    local len, done
    if count == 1 then
      -- One entry (one sub key per item): its RPUSH without the range's loop and unpack.
      len, done = redis.pcall('RPUSH', list, ARGV[first]), 0
    else
      len, done = pcall_rpush_range(list, first, first + count - 1)
    end
    if type(len) == 'table' then
      if done > 0 then redis.call('LTRIM', list, 0, -done - 1) end
      for k = j - 1, 1, -1 do
        local pushed = tonumber(ARGV[group_first[k] - 1])
        if pushed > 0 then redis.call('LTRIM', KEYS[FIRST_EXTRA_KEY + k - 1], 0, -pushed - 1) end
      end
      return key_error('enqueue_items', list, len)
    end
    if len == count then new_head(ARGV[first], group_sub[j]) end
  end
  rpush_range(K_ACCEPTED, OFFSETS + 1, OFFSETS + n)
  register_new_heads()
  redis.call('HSET', K_META, 'max', ARGV[OFFSETS + n], 'request', request .. '|n' .. n)
  record_clock(ARGV[OFFSETS + n])
  return n
end

-- The general path: decide each item in order. It writes while it decides (`accepted` must
-- hold the fresh offsets before a later item is searched in it; a gap filled late is inserted
-- in place and added to `late`) and the lists last, so an undo would have to reverse LINSERTs
-- and ZADDs: it probes the lists' types before its first write instead (one EXISTS for all,
-- then an LLEN per list if any exists, see wrong_type). It runs for re-deliveries, gaps filled
-- late and a full partition, not for each call of a steady stream.
local lists = {}
for j = 1, groups do lists[j] = KEYS[FIRST_EXTRA_KEY + j - 1] end
err = wrong_type('enqueue_items', {}, lists)
if err then return err end

local statuses = {}
local taken = {}  -- group -> its entries accepted so far, in order
local cursor = {}  -- group -> how many of its entries were looked at
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

for i = 1, n do
  local offset_s, group = ARGV[OFFSETS + i], tonumber(ARGV[GROUP_OF + i])
  local entry = ARGV[group_first[group] + (cursor[group] or 0)]
  cursor[group] = (cursor[group] or 0) + 1
  local offset = tonumber(offset_s)
  local status
  if full then
    status = 3
  elseif offset <= acked then
    status = 2
  elseif offset <= floor then
    status = 4
  elseif seen[offset_s] or (offset <= highest and already_accepted(offset)) then
    status = 1
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
    local list = taken[group]
    if not list then
      list = {}
      taken[group] = list
    end
    list[#list + 1] = entry
  end
  statuses[i] = status
end
append_fresh()

for j = 1, groups do
  local entries = taken[j]
  if entries then
    local len = 0
    for s = 1, #entries, CHUNK do
      len = redis.call('RPUSH', KEYS[FIRST_EXTRA_KEY + j - 1],
        unpack(entries, s, math.min(s + CHUNK - 1, #entries)))
    end
    if len == #entries then new_head(entries[1], group_sub[j]) end
  end
end
register_new_heads()
if highest_s and highest_s ~= meta[3] then
  redis.call('HSET', K_META, 'max', highest_s)
end
redis.call('HSET', K_META, 'request', request .. '|' .. table.concat(statuses))
if highest_s and (nsubs > 0 or highest_s ~= meta[3]) then record_clock(highest_s) end
return statuses
