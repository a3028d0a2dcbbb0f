#!lua flags=allow-oom
-- Lease up to `max_leases` runnable sub keys of one partition to a worker.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13]     this worker's claim record (answer of its last claim, for retried calls)
-- ARGV[1]      worker id
-- ARGV[2]      request id (unique per call of this worker)
-- ARGV[3]      max_leases (>= 1)
-- ARGV[4]      lease duration ms
-- ARGV[5]      batch: items the worker takes per lease
-- ARGV[6]      max_attempts
-- ARGV[7]      on exhausted: "d" dead-letter or "b" block
-- ARGV[8]      the prefix of the partition's queue keys (keys.PartitionKeys.queue_prefix): a
--              sub key's list is prefix .. sub key. The lists are not known before the claim;
--              they share the partition's hash tag, so they live in the slot of KEYS.
--
-- Returns {ready_left, sub1, token1, attempts1, exact1, count1, entry1 .. entry<count1>,
--          sub2, ...}
--   ready_left  how many runnable sub keys are left (for other workers, or to prefetch)
--   tokenN    the fencing token of the new lease (grows per partition)
--   attemptsN "offset|n" record of the head item, or ""
--   exactN    items left to run one at a time (after an unattributed crash), "0" if none
--   countN    how many entries follow: the lease's first batch, the head of its list (one
--             entry while exactN > 0, else up to `batch`). Handed back in the claim's own
--             reply, so a lease costs no separate read (and no round trip) before it runs.
--
-- Malformed arguments raise an error reply before anything is written.
-- Idempotent per request id: a retried call returns the first call's answer.
--
-- Shebang flags: allow-oom: claiming is how workers drain a full Redis (each claim grows it only by a
-- lease and a claim record, bounded by the sub keys leased), so it runs at maxmemory. The
-- queue lists it reads are not in KEYS (see ARGV[8]); they share the slot of KEYS, which is
-- what Redis checks without allow-cross-slot-keys.
-- (docs/scaling.md, "Scripts stay in their slot").
--@include partition.lua

local worker, request_id = ARGV[1], ARGV[2]
local max_leases, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local batch, max_attempts, mode = ARGV[5], ARGV[6], ARGV[7]
local queue_prefix = ARGV[8]
local record_key = KEYS[FIRST_EXTRA_KEY]

-- Every argument is checked before the first write (the LPOP): nothing may fail after it.
local function whole(value, least)
  local n = tonumber(value)
  return n and n == math.floor(n) and n >= least
end
if not worker or worker == '' then return bad_argument('claim_sub_keys', 'worker id', worker) end
if not request_id or request_id == '' then
  return bad_argument('claim_sub_keys', 'request id', request_id)
end
if not whole(max_leases, 1) then return bad_argument('claim_sub_keys', 'max_leases', ARGV[3]) end
if not whole(lease_ms, 1) then return bad_argument('claim_sub_keys', 'lease ms', ARGV[4]) end
if not string.match(batch or '', '^%d+$') then
  return bad_argument('claim_sub_keys', 'batch', batch)
end
if not string.match(max_attempts or '', '^%d+$') then
  return bad_argument('claim_sub_keys', 'max_attempts', max_attempts)
end
if mode ~= 'd' and mode ~= 'b' then
  return bad_argument('claim_sub_keys', 'on exhausted', mode)
end
if not queue_prefix or queue_prefix == '' then
  return bad_argument('claim_sub_keys', 'queue key prefix', queue_prefix)
end
local first_read = math.max(tonumber(batch), 1)

-- The reply: each lease of `answer` followed by the first entries of its list. Read at reply
-- time, also for a retried call: the lease keeps everyone else off the list, so what a retry
-- reads is what the first call would have read (or the lease is gone and fenced anyway).
local function with_first_batches(answer)
  local reply = {answer[1]}
  for i = 2, #answer, 4 do
    local sub, exact = answer[i], answer[i + 3]
    local take = first_read
    if tonumber(exact) > 0 then take = 1 end
    local entries = redis.call('LRANGE', queue_prefix .. sub, 0, take - 1)
    reply[#reply + 1] = sub
    reply[#reply + 1] = answer[i + 1]
    reply[#reply + 1] = answer[i + 2]
    reply[#reply + 1] = exact
    reply[#reply + 1] = #entries
    for j = 1, #entries do reply[#reply + 1] = entries[j] end
  end
  return reply
end

-- Records are length-prefixed fields, binary safe: "<len>:<bytes>" repeated.
local function pack(items)
  local parts = {}
  for i, v in ipairs(items) do
    local s = tostring(v)
    parts[i] = string.format('%d', #s) .. ':' .. s
  end
  return table.concat(parts)
end

local function unpack_record(s, from)
  local items, pos = {}, from
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    local len = tonumber(string.sub(s, pos, colon - 1))
    items[#items + 1] = string.sub(s, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return items
end

local previous = redis.call('GET', record_key)
if previous then
  local newline = string.find(previous, '\n', 1, true)
  if string.sub(previous, 1, newline - 1) == request_id then
    local answer = unpack_record(previous, newline + 1)
    answer[1] = tonumber(answer[1])
    return with_first_batches(answer)
  end
end

-- Nothing may fail after the LPOP: the keys written below, and the lists read for the reply,
-- must be of their type (see wrong_type).
local err = wrong_type('claim_sub_keys',
  {K_READY, K_OWNERS, K_META, K_LEASES, K_ATTEMPTS, K_EXACT})
if err then return err end
local lists = {}
for j, sub in ipairs(redis.call('LRANGE', K_READY, 0, max_leases - 1)) do
  lists[j] = queue_prefix .. sub
end
err = wrong_type('claim_sub_keys', {}, lists)
if err then return err end

local now = now_ms()
local answer = {0}
local popped = redis.call('LPOP', K_READY, max_leases)
if popped then
  -- A sub key is in `ready` only when unleased; the check makes a double lease impossible.
  local owned = call_chunked('HMGET', K_OWNERS, popped)
  local subs = {}
  for j, sub in ipairs(popped) do
    if not owned[j] then subs[#subs + 1] = sub end
  end
  if #subs > 0 then
    local token = tonumber(redis.call('HINCRBY', K_META, 'token', #subs)) - #subs
    local deadline = now + lease_ms
    local suffix = '|-|' .. batch .. '|' .. max_attempts .. '|' .. mode .. '|' .. worker
    local deadlines, owners, tokens = {}, {}, {}
    for j, sub in ipairs(subs) do
      tokens[j] = string.format('%d', token + j)
      deadlines[2 * j - 1], deadlines[2 * j] = deadline, sub
      owners[2 * j - 1], owners[2 * j] = sub, tokens[j] .. suffix
    end
    call_chunked('ZADD', K_LEASES, deadlines, 2)
    call_chunked('HSET', K_OWNERS, owners, 2)
    local attempts = call_chunked('HMGET', K_ATTEMPTS, subs)
    local exact = call_chunked('HMGET', K_EXACT, subs)
    for j, sub in ipairs(subs) do
      answer[#answer + 1] = sub
      answer[#answer + 1] = tokens[j]
      answer[#answer + 1] = attempts[j] or ''
      answer[#answer + 1] = exact[j] or '0'
    end
  end
end
answer[1] = redis.call('LLEN', K_READY)
redis.call('SET', record_key, request_id .. '\n' .. pack(answer), 'PX', math.max(lease_ms * 2, 60000))
return with_first_batches(answer)
