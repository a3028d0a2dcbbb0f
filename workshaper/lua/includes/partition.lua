-- Shared by every per-partition script. KEYS[1..12] are the partition's fixed keys, in the
-- order of keys.PARTITION_KEY_NAMES; script-specific keys start at KEYS[13].

-- The globals the scripts use, read once per call: a global is a table lookup at each use, and
-- the hot scripts use them per lease and item. (Call sites keep the form redis.call('CMD', ...):
-- access.py reads the commands from it.)
local redis, string, math, table = redis, string, math, table
local tonumber, tostring, type, unpack, ipairs = tonumber, tostring, type, unpack, ipairs
local KEYS, ARGV = KEYS, ARGV
local K_META, K_ACCEPTED, K_HEADS, K_LATE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_READY, K_LEASES, K_OWNERS, K_ATTEMPTS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_EXACT, K_BLOCKED, K_DEAD, K_CLOCK = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local FIRST_EXTRA_KEY = 13

-- Lua's unpack() has a stack limit (about 8,000 values on Redis): a variadic call past it
-- raises, and a script that raises after its first write leaves half its work done. So every
-- variadic call goes through call_chunked, in calls of at most VARIADIC_CHUNK values.
local VARIADIC_CHUNK = 1000

-- redis.call(command, key, values[first..last]) in chunks of whole elements of `width` values
-- (2 for score/member or field/value pairs). Returns the replies of array-valued commands
-- (HMGET) concatenated in order, nil values kept as false.
local function call_chunked(command, key, values, width, first, last)
  first, last = first or 1, last or #values
  local step = VARIADIC_CHUNK * (width or 1)
  if first <= last and last - first < step then
    -- One chunk, as nearly every call: its reply is returned as it is, not copied.
    local reply = redis.call(command, key, unpack(values, first, last))
    if type(reply) == 'table' then return reply end
    return {}
  end
  local replies = {}
  for s = first, last, step do
    local reply = redis.call(command, key, unpack(values, s, math.min(s + step - 1, last)))
    if type(reply) == 'table' then
      for i = 1, #reply do replies[#replies + 1] = reply[i] end
    end
  end
  return replies
end

-- Raise (before any write) naming the script and the bad argument.
local function bad_argument(script, what, value)
  return redis.error_reply(script .. ': bad argument ' .. what .. ': ' .. tostring(value))
end

-- A key of the wrong type (an operator's typo, a foreign writer) makes every command on it
-- raise WRONGTYPE, and a script that raises after its first write leaves half its work done
-- (a claim that popped `ready` strands those sub keys for good). So before its first write a
-- script touches each key it will write, or read after that write, with an O(1) read of the
-- key's type: a wrong type then fails the call with nothing changed, and once the key is
-- repaired the next call works. A missing key passes (every command treats it as empty).
local KEY_TYPE = {
  [K_META] = 'hash', [K_ACCEPTED] = 'list', [K_HEADS] = 'zset', [K_LATE] = 'zset',
  [K_READY] = 'list', [K_LEASES] = 'zset', [K_OWNERS] = 'hash', [K_ATTEMPTS] = 'hash',
  [K_EXACT] = 'hash', [K_BLOCKED] = 'hash', [K_DEAD] = 'hash', [K_CLOCK] = 'zset',
}

-- The error reply of a command that failed on `key` (WRONGTYPE), naming the script and the key.
local function key_error(script, key, reply)
  return redis.error_reply(reply.err .. ' (' .. script .. ': key ' .. key .. ')')
end

-- Check the type of each fixed key in `fixed` and of each queue list in `lists` (may be nil).
-- Returns an error reply naming the first key of the wrong type (for the caller to return),
-- else nil and the size of each fixed key (size[key]): a script skips a command on a hash or
-- set that is empty (HMGET, HDEL, ZREM of members that cannot be there), which most calls would
-- otherwise pay per sub key. The commands are written out at each call site, for access.py's
-- ACL rules.
local function wrong_type(script, fixed, lists)
  local size = {}
  local function probe(kind, key)
    local reply
    if kind == 'hash' then
      reply = redis.pcall('HLEN', key)
    elseif kind == 'zset' then
      reply = redis.pcall('ZCARD', key)
    else
      reply = redis.pcall('LLEN', key)
    end
    if type(reply) == 'table' and reply.err then return key_error(script, key, reply) end
    size[key] = reply
    return nil
  end
  for _, key in ipairs(fixed) do
    local err = probe(KEY_TYPE[key], key)
    if err then return err end
  end
  lists = lists or {}
  -- A key that does not exist has no type to be wrong. One EXISTS for all the lists first: new
  -- lists (one sub key per item: every list of an enqueue) then cost no probe of their own.
  local existing = 0
  if #lists > 1 then
    for s = 1, #lists, VARIADIC_CHUNK do
      local last = math.min(s + VARIADIC_CHUNK - 1, #lists)
      existing = existing + redis.call('EXISTS', unpack(lists, s, last))
    end
  else
    existing = #lists
  end
  if existing > 0 then
    for _, key in ipairs(lists) do
      local err = probe('list', key)
      if err then return err end
    end
  end
  return nil, size
end

-- The first counts[i] entries of each list lists[i] (i = 1..n), read with redis.pcall before
-- the caller's first write: the read a script needs anyway is also the type check of
-- wrong_type, so a list of the wrong type fails the call with nothing changed, at no extra
-- command. Returns an error reply naming the key, or nil and the entries of each list.
-- A number argument costs Lua a sprintf per call: each distinct stop index is formatted once.
local function read_lists(script, lists, counts, n)
  local reads, stops = {}, {}
  for i = 1, n do
    local stop = stops[counts[i]]
    if not stop then
      stop = string.format('%d', counts[i] - 1)
      stops[counts[i]] = stop
    end
    local reply = redis.pcall('LRANGE', lists[i], '0', stop)
    if reply.err then return key_error(script, lists[i], reply) end
    reads[i] = reply
  end
  return nil, reads
end

-- Server time in ms: leases never depend on a worker's clock.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Owner record: "token|flag|batch|max_attempts|exhausted_mode|worker". flag is "i" while the
-- lease runs isolated (its worker runs nothing else: a crash then is this item's), else "-".
local function parse_owner(value)
  if not value then return nil end
  local token, flag, batch, max_attempts, mode, worker =
    string.match(value, '^(%d+)|(.)|(%d+)|(%d+)|(%a)|(.*)$')
  if not token then return nil end
  return {token = token, isolated = flag == 'i', batch = tonumber(batch),
          max_attempts = tonumber(max_attempts), mode = mode, worker = worker, raw = value}
end

-- The owner record with its isolation flag set to `flag` ("i" or "-").
local function with_flag(owner, flag)
  return owner.token .. '|' .. flag .. string.sub(owner.raw, #owner.token + 3)
end

local function owner_token(sub)
  local owner = parse_owner(redis.call('HGET', K_OWNERS, sub))
  if owner then return owner.token end
  return nil
end

-- Does `s` start with the field `value` and its "|" ("<offset>|..." entries, "<token>|..." owner
-- records)? Runs per item and lease, so it makes no string.
local function starts_with_field(s, value)
  return string.byte(s, #value + 1) == 124 and string.find(s, value, 1, true) == 1
end

-- Does the list's first entry start with prefix ("<offset>|")?
local function head_matches(list_key, prefix)
  local head = redis.call('LINDEX', list_key, 0)
  return head and string.sub(head, 1, #prefix) == prefix
end

local function entry_offset(entry)
  return string.match(entry, '^(%d+)|')
end

-- How far LPOS scans `accepted` before accepted_rank falls back to a binary search.
local RANK_SCAN = 2000

-- `accepted` is sorted ascending, without repeats. Returns how many elements are below `value`
-- (or at most `value` when `inclusive`). The value asked for is nearly always an accepted
-- offset near the head (the lowest unfinished one, the watermark just acked): LPOS finds it in
-- one command, scanning at most RANK_SCAN entries. Else a binary search with LINDEX (each one
-- walks the list: about 17 of them on 200,000 entries).
local function accepted_rank(value, inclusive)
  local at = redis.call('LPOS', K_ACCEPTED, string.format('%d', value), 'MAXLEN', RANK_SCAN)
  if at then
    if inclusive then return at + 1 end
    return at
  end
  local lo, hi = 0, redis.call('LLEN', K_ACCEPTED)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local v = tonumber(redis.call('LINDEX', K_ACCEPTED, mid))
    if v < value or (inclusive and v == value) then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- Keep `heads` in step with a sub key's queue after its first entries were removed or added:
-- the score is the head item's offset, the member leaves when the queue is empty. A corrupt
-- head (no offset) keeps the old score, which can only hold the watermark back.
local function refresh_head(sub, list_key)
  local head = redis.call('LINDEX', list_key, 0)
  if not head then
    redis.call('ZREM', K_HEADS, sub)
    redis.call('HDEL', K_EXACT, sub)  -- a crash window ends with the items it was for
    return
  end
  local offset = entry_offset(head)
  if offset then redis.call('ZADD', K_HEADS, offset, sub) end
end

-- The clock: one sample per enqueue call and millisecond, member = server ms, score = the
-- highest offset accepted by then. The first sample at or above an offset tells when that
-- offset was accepted (to the batch), which is how operators see the age of an unfinished item
-- without a timestamp per item. Samples at or below the acked watermark are trimmed.
local function record_clock(highest_offset)
  redis.call('ZADD', K_CLOCK, highest_offset, string.format('%d', now_ms()))
end

-- Finished offsets that had been accepted out of order leave `late`.
local function forget_late(offsets, count)
  if count > 0 and redis.call('EXISTS', K_LATE) == 1 then
    call_chunked('ZREM', K_LATE, offsets, 1, 1, count)
  end
end

-- The lowest unfinished offset of the partition, or nil when every accepted item finished.
local function lowest_unfinished()
  local low = redis.call('ZRANGE', K_HEADS, 0, 0, 'WITHSCORES')[2]
  low = low and tonumber(low)
  local late = redis.call('ZRANGE', K_LATE, 0, 0, 'WITHSCORES')[2]
  if late and (not low or tonumber(late) < low) then low = tonumber(late) end
  return low
end

-- Attempts of the head item that ended without success. The record names its offset, so a
-- record left from an earlier head never counts for a new one.
local function attempts_of(sub, offset)
  local record = redis.call('HGET', K_ATTEMPTS, sub)
  if not record or not offset then return 0 end
  local rec_offset, count = string.match(record, '^(%d+)|(%d+)$')
  if rec_offset == offset then return tonumber(count) end
  return 0
end

local function set_attempts(sub, offset, count)
  redis.call('HSET', K_ATTEMPTS, sub, offset .. '|' .. string.format('%d', count))
end

-- After `count` items of sub finished, shorten its single-step (exact) window.
local function consume_exact(sub, count)
  local left = tonumber(redis.call('HGET', K_EXACT, sub) or '0')
  if left <= 0 then return end
  if left <= count then
    redis.call('HDEL', K_EXACT, sub)
  else
    redis.call('HSET', K_EXACT, sub, string.format('%d', left - count))
  end
end

-- The lease's isolated item ended (finished, failed, dead-lettered): nothing of it runs until
-- its worker flags the next one, so a crash in between is not charged in full.
local function end_isolation(sub)
  local owner = parse_owner(redis.call('HGET', K_OWNERS, sub))
  if owner and owner.isolated then redis.call('HSET', K_OWNERS, sub, with_flag(owner, '-')) end
end

local function extend_lease(sub, lease_ms, now)
  redis.call('ZADD', K_LEASES, 'XX', now + lease_ms, sub)
end

-- Drop the lease; if the sub key still has items, queue it for the next worker.
local function release_lease(sub, list_key, requeue)
  redis.call('HDEL', K_OWNERS, sub)
  redis.call('ZREM', K_LEASES, sub)
  if requeue and redis.call('LLEN', list_key) > 0 then
    redis.call('RPUSH', K_READY, sub)
    return true
  end
  return false
end

-- The stored form of a dead letter or blocked record: "<error json>\n<attempts>\n<ms>\n<entry>".
local function failure_record(error_json, attempts, now, entry)
  return error_json .. '\n' .. string.format('%d', attempts) .. '\n' ..
    string.format('%d', now) .. '\n' .. entry
end

-- The error JSON object with the (encoded) sub key added as "sub_hex", so a dead letter can be
-- replayed under its sub key's order. Hex, because a bytes sub key need not be UTF-8.
local function with_sub_key(error_json, sub)
  if string.sub(error_json, 1, 1) ~= '{' then return error_json end
  local hex = string.gsub(sub, '.', function(c) return string.format('%02x', string.byte(c)) end)
  local rest = string.sub(error_json, 2)
  if string.match(rest, '^%s*}') then return '{"sub_hex":"' .. hex .. '"' .. rest end
  return '{"sub_hex":"' .. hex .. '",' .. rest
end

-- Take the head item of sub out of its queue as finished-by-giving-up, keeping its record.
local function dead_letter_head(sub, list_key, error_json, attempts, now)
  local entry = redis.call('LPOP', list_key)
  if not entry then return false end
  local offset = entry_offset(entry)
  local record = failure_record(with_sub_key(error_json, sub), attempts, now, entry)
  if offset then
    redis.call('HSET', K_DEAD, offset, record)
  else
    -- No offset to file it under: "corrupt:<ms>:<n>" with the first n free, so corrupt entries
    -- dead-lettered in the same millisecond all keep their record.
    local field, n = nil, 0
    repeat
      n = n + 1
      field = 'corrupt:' .. string.format('%d', now) .. ':' .. string.format('%d', n)
    until redis.call('HSETNX', K_DEAD, field, record) == 1
  end
  refresh_head(sub, list_key)
  if offset then forget_late({offset}, 1) end
  redis.call('HDEL', K_ATTEMPTS, sub)
  consume_exact(sub, 1)
  return true
end
