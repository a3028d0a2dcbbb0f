#!lua flags=allow-oom
-- Record finished items of one or more leases of a partition, then keep, continue or release.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13..]   the queue list of each lease in the call
-- ARGV[1]      lease duration ms
-- ARGV[2]      batch: items to hand out when a lease continues
-- ARGV[3]      n, the number of leases
-- ARGV[4..]    per lease: extra-key index, sub key, token, action, exact ("1" when the lease
--              runs in single-step mode after a crash, else "0"), held, k, then k offsets in
--              order
--              held: how many entries the worker holds right after the k reported ones, read
--              earlier and not finished (a worker that finishes a window of entries out of
--              order reports its finished prefix only, and reads on while it holds the rest);
--              a whole number, 0 <= held <= batch, above 0 with "k" and "c" only (a lease whose
--              worker holds entries is never released). 0: what follows is all there is.
--              action "k" keep: record, extend the lease
--                     "c" continue: record, then hand out the next batch, or release if empty;
--                         with held > 0: record, extend the lease, and hand out the entries
--                         after the held ones, at most batch - held (1 - held in single-step
--                         mode), none if there are none: the lease is kept all the same
--                     "y" yield: like "c" when no other sub key of the partition is waiting,
--                         else like "r" (a long-held lease gives way; fairness)
--                     "r" release: record, drop the lease, requeue the sub key if items remain
--
-- Returns one reply per lease: {code, finished, attempts, entry1, entry2, ...} when kept,
-- {2, finished, requeued} when released, {-1, 0} when fenced
--   code -1 fenced (the token does not own the lease; nothing written),
--         1 lease kept (entries: the next batch, for "c"/"y"; with held > 0, what follows the
--         held entries), 2 lease released
--   requeued: 1 when the released sub key has items left and went back to `ready` (its
--   worker rings the partition's bell for it), else 0
--   attempts: the "offset|n" record of the new head item, or "" (in the replies of "c"/"y" only)
--   finished: how many entries this call took off the head of the queue (each one a given
--   offset's)
--
-- Malformed arguments raise an error reply before anything is written.
-- Idempotent: an offset is recorded only while its entry is still at the head of the queue.
-- A retried call may carry more offsets than its earlier call, when that one was applied but
-- its reply lost (the worker rebuilds the call from its state, and more items finished since):
-- when the head does not start with "<first offset>|", the offsets before the one it starts
-- with were recorded by the earlier call and are skipped, and the entries from the head are
-- matched against the offsets from that one on. A head that starts with none: nothing recorded.
-- The entries a worker holds (held > 0) follow the ones it reported, in a retried call too: the
-- new entries are those after the finished and the held ones.
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
-- table per lease costs more than the reads). Its list, held count and offset count, checked
-- here, are kept (converting them again costs a tonumber each). Names an argument of lease i in
-- an error.
local starts, list_of, held_of, count_of = {}, {}, {}, {}
local function bad_lease(i, what, value)
  return bad_argument('complete_items', what .. ' of lease ' .. string.format('%d', i), value)
end
local argc, floor = #ARGV, math.floor
local a = 4
for i = 1, n do
  local key_index, k, action = tonumber(ARGV[a]), tonumber(ARGV[a + 6]), ARGV[a + 3]
  -- whole(key_index, 1) and whole(k, 0) written out: two function calls per lease otherwise.
  local list_key = key_index and key_index == floor(key_index) and key_index >= 1 and
    KEYS[FIRST_EXTRA_KEY + key_index - 1]
  if not list_key then return bad_lease(i, 'key index', ARGV[a]) end
  if not ARGV[a + 1] or not ARGV[a + 2] then return bad_lease(i, 'sub key/token', nil) end
  if action ~= 'k' and action ~= 'c' and action ~= 'y' and action ~= 'r' then
    return bad_lease(i, 'action', action)
  end
  -- "0", what every lease sends but a lanes worker's that holds entries, needs no conversion.
  local held = 0
  if ARGV[a + 5] ~= '0' then
    held = tonumber(ARGV[a + 5])
    if not (held and held == floor(held) and held >= 0 and held <= batch) or
      (held > 0 and action ~= 'k' and action ~= 'c') then
      return bad_lease(i, 'held', ARGV[a + 5])
    end
  end
  if not (k and k == floor(k) and k >= 0) or a + 6 + k > argc then
    return bad_lease(i, 'offset count', ARGV[a + 6])
  end
  for j = a + 7, a + 6 + k do
    -- find, not match: the same test without making the matched string.
    if not string.find(ARGV[j], '^%d+$') then return bad_lease(i, 'offset', ARGV[j]) end
  end
  starts[i], list_of[i], held_of[i], count_of[i] = a, list_key, held, k
  a = a + 7 + k
end

-- Nothing may fail after the first write. Before it: the type of every fixed key written below,
-- or read after a write (one probe per key and call, see wrong_type), and every list read: the
-- read each lease needs anyway, with pcall, is its list's type check too.
local err, size = wrong_type('complete_items',
  {K_OWNERS, K_LEASES, K_READY, K_HEADS, K_LATE, K_ATTEMPTS, K_EXACT})
if err then return err end
local late_size, attempts_size = size[K_LATE], size[K_ATTEMPTS]

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

-- What a lease finished: the entries at the head of its read that match its k offsets (from
-- ARGV[first]), in order. Returns how many, and where in ARGV the offsets matched start: at the
-- first one, or in a retried call whose earlier call was applied (its reply lost) and which
-- carries more offsets than it did, at the one the head starts with: those before it were taken
-- off by the earlier call. Searched only when the head is not the first offset's (offsets
-- ascend: at most one matches); none: nothing finished.
local function finished_run(read, first, k)
  local finished, from = 0, first
  if k > 0 and read[1] then
    if not starts_with_field(read[1], ARGV[first]) then
      from = nil
      for j = first + 1, first + k - 1 do
        if starts_with_field(read[1], ARGV[j]) then
          from = j
          break
        end
      end
    end
    if from then
      finished = 1
      for j = 2, math.min(first + k - from, #read) do
        if not starts_with_field(read[j], ARGV[from + j - 1]) then break end
        finished = j
      end
    end
  end
  return finished, from
end

-- One read per owned lease (the owner record starts with "<token>|", see parse_owner; the
-- prefix is all the fencing check needs): the k entries the worker finished (checked against
-- their offsets), then what follows them (the new head, or the next batch when it may continue
-- and its worker holds no entries; one that holds some and continues is in `holding`).
-- The tables of this call are filled through counters: `#t` is a search per append.
local owned, lists, counts, nowned = {}, {}, {}, 0
local holding, nholding = {}, 0
for i = 1, n do
  local owner = owners[i]
  if owner and starts_with_field(owner, ARGV[starts[i] + 2]) then
    local action, take = ARGV[starts[i] + 3], 1
    nowned = nowned + 1
    if held_of[i] > 0 then
      if action == 'c' then
        nholding = nholding + 1
        holding[nholding] = nowned
      end
    elseif action == 'c' or (action == 'y' and ready_len == 0) then
      take = batch
    end
    owned[nowned], lists[nowned], counts[nowned] = i, list_of[i], count_of[i] + take
  end
end
local reads
err, reads = read_lists('complete_items', lists, counts, nowned)
if err then return err end

-- The top-up read of a lease whose worker holds entries and continues: its new entries come
-- after the finished and the held ones, so their LRANGE starts at finished + held of the list
-- as it is now, before the first write (its type checked by the first read). The held entries
-- are not read again. What the lease finished is counted here for it, and again in the loop
-- below (the same read: the same count): keeping every lease's count from a pass before the
-- loop cost the common path (held 0) ~3% of the script. A worker holding a whole batch gets
-- no more: nothing to read.
local topups = {}
for t = 1, nholding do
  local h = holding[t]
  local i = owned[h]
  local held = held_of[i]
  if held < batch then
    local finished = finished_run(reads[h], starts[i] + 7, count_of[i])
    topups[h] = redis.call('LRANGE', lists[h], string.format('%d', finished + held),
      string.format('%d', finished + batch - 1))
  end
end

local now = now_ms()
local replies = {}  -- per lease; a lease not owned is fenced: {-1, 0}, filled in at the end

-- Writes to the partition's shared keys that only concern each lease's own member are
-- collected and sent once per call after the loop (chunked, as every variadic call): a lease
-- then costs its own list's commands only. Nothing in the loop reads these members again.
local extends, nextends = {}, 0    -- ZADD leases XX: deadline, sub
local moved, nmoved = {}, 0        -- ZADD heads: new head offset, sub
local emptied, nemptied = {}, 0    -- ZREM heads, HDEL exact: queue now empty
local drained = {}                 -- DEL: the lists of `emptied`
local released, nreleased = {}, 0  -- HDEL owners, ZREM leases
local cleared, ncleared = {}, 0    -- HDEL attempts: the head moved
local late = {}                    -- ZREM late: finished offsets, when any were accepted late
local requeued = {}                -- RPUSH ready: released with items left
local deadline = string.format('%d', now + lease_ms)  -- formatted once, not per element

for h = 1, nowned do
  local i, list_key, read = owned[h], lists[h], reads[h]
  local at = starts[i]
  local sub, action, exact_mode = ARGV[at + 1], ARGV[at + 3], ARGV[at + 4] == '1'
  local finished, from = finished_run(read, at + 7, count_of[i])
  local held = held_of[i]
  local continues = false
  local take = 1  -- entries wanted past the finished (and held) ones: the new head at least
  if action ~= 'k' then
    continues = action == 'c' or (action == 'y' and ready_len == 0)
    if continues then take = batch end
  end
  if finished > 0 then
    if late_size > 0 then
      for j = from, from + finished - 1 do late[#late + 1] = ARGV[j] end
    end
    ncleared = ncleared + 1
    cleared[ncleared] = sub
    if exact_mode then
      consume_exact(sub, finished)
      end_isolation(sub)  -- flagged again by its worker before the next item starts
    end
    -- The head moved: keep `heads` in step. A corrupt new head has no offset: the old score
    -- stays, which can only hold the watermark back until the entry is dead-lettered.
    local head = read[finished + 1]
    if not head then
      -- The read holds the whole list (it asked for more than `finished`): it is empty now.
      nemptied = nemptied + 1
      drained[nemptied] = list_key
      emptied[nemptied] = sub  -- a crash window ends with the items it was for
    else
      redis.call('LTRIM', list_key, finished, '-1')
      local head_offset = entry_offset(head)
      if head_offset then
        moved[nmoved + 1], moved[nmoved + 2] = head_offset, sub
        nmoved = nmoved + 2
      end
    end
  end

  if action == 'k' then
    extends[nextends + 1], extends[nextends + 2] = deadline, sub
    nextends = nextends + 2
    replies[i] = {1, finished}
  else
    if exact_mode and continues and tonumber(redis.call('HGET', K_EXACT, sub) or '0') > 0 then
      take = 1
    end
    -- What follows the finished entries: read[finished + 1 .. finished + take] (take >= 1).
    -- A lease whose worker holds entries ("c" only) is kept even with nothing to add: its
    -- new entries are the top-up's first take - held (the top-up read at most batch - held).
    if continues and (read[finished + 1] or held > 0) then
      extends[nextends + 1], extends[nextends + 2] = deadline, sub
      nextends = nextends + 2
      local attempts = ''
      if finished == 0 and attempts_size > 0 then
        attempts = redis.call('HGET', K_ATTEMPTS, sub) or ''
      end
      local reply = {1, finished, attempts}
      if held == 0 then
        for j = finished + 1, math.min(finished + take, #read) do
          reply[j - finished + 3] = read[j]
        end
      elseif topups[h] then
        local topup = topups[h]
        for j = 1, math.min(take - held, #topup) do reply[j + 3] = topup[j] end
      end
      replies[i] = reply
    else
      nreleased = nreleased + 1
      released[nreleased] = sub
      if read[finished + 1] then
        requeued[#requeued + 1] = sub
        ready_len = ready_len + 1
        replies[i] = {2, finished, 1}
      else
        replies[i] = {2, finished, 0}
      end
    end
  end
end
for i = 1, n do
  if not replies[i] then replies[i] = {-1, 0} end  -- fenced: nothing written
end

-- Empty hashes are not written: HDEL of fields that cannot be there is a command per call.
for s = 1, nemptied, VARIADIC_CHUNK do
  redis.call('DEL', unpack(drained, s, math.min(s + VARIADIC_CHUNK - 1, nemptied)))
end
if attempts_size > 0 then call_chunked('HDEL', K_ATTEMPTS, cleared) end
call_chunked('ZREM', K_LATE, late)
call_chunked('ZREM', K_HEADS, emptied)
if size[K_EXACT] > 0 then call_chunked('HDEL', K_EXACT, emptied) end
call_chunked('ZADD', K_HEADS, moved, 2)
call_chunked('HDEL', K_OWNERS, released)
call_chunked('ZREM', K_LEASES, released)
call_chunked('RPUSH', K_READY, requeued)
if nextends > 0 then
  -- XX: never re-create a lease; `released` and `extends` name different sub keys.
  for s = 1, nextends, 2 * VARIADIC_CHUNK do
    redis.call('ZADD', K_LEASES, 'XX',
      unpack(extends, s, math.min(s + 2 * VARIADIC_CHUNK - 1, nextends)))
  end
end
return replies
