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

-- Every argument is checked before the first write (the token counter): nothing may fail after it (a lease past 2^41 ms, ~70 years, would fail SET ... PX).
local function whole(value, least)
  local n = tonumber(value)
  return n and n == math.floor(n) and n >= least
end
if not worker or worker == '' then return bad_argument('claim_sub_keys', 'worker id', worker) end
if not request_id or request_id == '' then
  return bad_argument('claim_sub_keys', 'request id', request_id)
end
if not whole(max_leases, 1) then return bad_argument('claim_sub_keys', 'max_leases', ARGV[3]) end
if not whole(lease_ms, 1) or lease_ms > 2^41 then return bad_argument('claim_sub_keys', 'lease ms', ARGV[4]) end
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

-- The claim record, after "<request id>\n": "<ready_left> <first token>\n", each leased sub
-- key as "<length>:<bytes>" (binary safe), then "\n<j> <attempts> <exact>" for each lease j
-- whose head item has attempts or a crash window (rare). Tokens are consecutive from the
-- first. Cheap to write: formatting a number costs Lua a sprintf, so a claim formats one per
-- lease (its key's length), not one per field.
local function encode_record(ready_left, first_token, subs, nsubs, attempts, exact)
  local parts = {string.format('%d %d\n', ready_left, first_token)}
  for j = 1, nsubs do
    local sub = subs[j]
    parts[j + 1] = string.format('%d', #sub) .. ':' .. sub
  end
  -- A hash that was read has an entry (false if none) for every lease; else no lease has a line.
  if attempts[1] ~= nil or exact[1] ~= nil then
    for j = 1, nsubs do
      if attempts[j] or exact[j] then
        parts[#parts + 1] = string.format('\n%d %s %s', j, attempts[j] or '', exact[j] or '0')
      end
    end
  end
  return table.concat(parts)
end

-- The answer {ready_left, sub1, token1, attempts1, exact1, sub2, ...} of a record.
local function decode_record(s, from)
  local ready_left, first_token, pos = string.match(s, '^(%d+) (%d+)\n()', from)
  local answer, subs = {tonumber(ready_left)}, 0
  while true do
    local len, body = string.match(s, '^(%d+):()', pos)
    if not len then break end
    subs = subs + 1
    pos = body + tonumber(len)
    answer[#answer + 1] = string.sub(s, body, pos - 1)
    answer[#answer + 1] = string.format('%d', tonumber(first_token) + subs - 1)
    answer[#answer + 1] = ''
    answer[#answer + 1] = '0'
  end
  for j, attempts, exact in string.gmatch(string.sub(s, pos), '\n(%d+) ([%d|]*) (%d+)') do
    answer[4 * tonumber(j)], answer[4 * tonumber(j) + 1] = attempts, exact
  end
  return answer
end

local previous = redis.call('GET', record_key)
if previous then
  local newline = string.find(previous, '\n', 1, true)
  if string.sub(previous, 1, newline - 1) == request_id then
    return with_first_batches(decode_record(previous, newline + 1))
  end
end

-- Nothing may fail after the first write (a failure after the LTRIM of `ready` would strand
-- the sub keys it took). Before it: the type of each key written below (see
-- wrong_type), and every read, the first batch of each list included: read with pcall, it is
-- the type check of the list too, at no extra command.
local err, size = wrong_type('claim_sub_keys',
  {K_READY, K_OWNERS, K_META, K_LEASES, K_ATTEMPTS, K_EXACT})
if err then return err end
local popped = redis.call('LRANGE', K_READY, 0, max_leases - 1)
-- The tables of this call are filled through counters: `#t` is a search per append.
local npopped, nsubs = #popped, 0
local subs, attempts, exact, entries = {}, {}, {}, {}
if npopped > 0 then
  -- A sub key is in `ready` only when unleased; the check makes a double lease impossible.
  local owned = call_chunked('HMGET', K_OWNERS, popped)
  for j = 1, npopped do
    if not owned[j] then
      nsubs = nsubs + 1
      subs[nsubs] = popped[j]
    end
  end
  -- Most partitions have no retried head item and no crash window: an empty hash is not read.
  if nsubs > 0 and size[K_ATTEMPTS] > 0 then attempts = call_chunked('HMGET', K_ATTEMPTS, subs) end
  if nsubs > 0 and size[K_EXACT] > 0 then exact = call_chunked('HMGET', K_EXACT, subs) end
  -- The first batch of each list: its first entry while its crash window is open, else
  -- `batch` entries. Every window is looked at before the first read (a corrupt one fails the
  -- call first), and only when `exact` was read.
  local batch_stop, stops = string.format('%d', first_read - 1), {}
  if exact[1] ~= nil then
    for j = 1, nsubs do
      if exact[j] and tonumber(exact[j]) > 0 then stops[j] = '0' end
    end
  end
  -- As read_lists, without its tables: with pcall, each read is its list's type check too.
  for j = 1, nsubs do
    local list = queue_prefix .. subs[j]
    local read = redis.pcall('LRANGE', list, '0', stops[j] or batch_stop)
    if read.err then return key_error('claim_sub_keys', list, read) end
    entries[j] = read
  end
end

-- The writes. The token counter first: a corrupt one fails HINCRBY before anything else.
local reply = {size[K_READY] - npopped}
local first_token = 0
if nsubs > 0 then
  first_token = tonumber(redis.call('HINCRBY', K_META, 'token', nsubs)) - nsubs + 1
end
if npopped > 0 then
  -- The LRANGE's entries leave `ready`: LTRIM, not LPOP, whose reply (the same entries again)
  -- would be converted to a Lua table for nothing.
  redis.call('LTRIM', K_READY, string.format('%d', npopped), '-1')
end
if nsubs > 0 then
  -- Formatted once: a number argument would be formatted per element (as a float).
  local deadline = string.format('%d', now_ms() + lease_ms)
  local suffix = '|-|' .. batch .. '|' .. max_attempts .. '|' .. mode .. '|' .. worker
  local deadlines, owners, at = {}, {}, 1
  for j = 1, nsubs do
    local sub = subs[j]
    local token = string.format('%d', first_token + j - 1)
    deadlines[2 * j - 1], deadlines[2 * j] = deadline, sub
    owners[2 * j - 1], owners[2 * j] = sub, token .. suffix
    local first = entries[j]
    local count = #first
    reply[at + 1], reply[at + 2], reply[at + 3] = sub, token, attempts[j] or ''
    reply[at + 4], reply[at + 5] = exact[j] or '0', count
    for i = 1, count do reply[at + 5 + i] = first[i] end
    at = at + 5 + count
  end
  call_chunked('ZADD', K_LEASES, deadlines, 2)
  call_chunked('HSET', K_OWNERS, owners, 2)
end
redis.call('SET', record_key, request_id .. '\n' .. encode_record(reply[1], first_token, subs,
  nsubs, attempts, exact), 'PX', math.max(lease_ms * 2, 60000))
return reply
