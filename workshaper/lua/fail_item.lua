#!lua
-- Record a failed attempt of the head item of a leased sub key; retry, dead-letter or block.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13]     the sub key's queue list
-- ARGV[1]      sub key
-- ARGV[2]      token
-- ARGV[3]      head prefix: "<offset>|", or the whole entry (maybe empty) when it has no
--              readable offset
-- ARGV[4]      offset ("" when unreadable)
-- ARGV[5]      attempt number that failed (1-based)
-- ARGV[6]      max_attempts
-- ARGV[7]      on exhausted: "d" dead-letter or "b" block
-- ARGV[8]      "1" to dead-letter at once (a corrupt item no attempt can fix), else "0"
-- ARGV[9]      error as JSON (type, message, traceback, worker)
-- ARGV[10]     lease duration ms
--
-- Returns {code, attempts}
--   -1 fenced (nothing written), 0 the item is no longer at the head (a retried call that
--   already dead-lettered it), 1 retry later (lease extended), 2 dead-lettered (lease held,
--   continue with the next item), 3 blocked (lease released; the sub key waits for an operator)
--
-- Malformed arguments raise an error reply before anything is written.
-- Idempotent: the attempts record only grows to the attempt number given.
--
-- Shebang flags: none: a failure record (attempts, a dead letter with its error) grows memory, so at
-- maxmemory Redis refuses it before it runs; the worker keeps it and sends it again after a
-- backoff (README, "Redis at maxmemory").
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local sub, token, prefix, offset = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local attempt, max_attempts = tonumber(ARGV[5]), tonumber(ARGV[6])
local mode, force, error_json, lease_ms = ARGV[7], ARGV[8] == '1', ARGV[9], tonumber(ARGV[10])
local list_key = KEYS[FIRST_EXTRA_KEY]

-- Every argument is checked before the first write: nothing may fail after it.
if not sub or not token or not prefix then
  return bad_argument('fail_item', 'sub key/token/head prefix', nil)
end
if offset ~= '' and not string.match(offset or '', '^%d+$') then
  return bad_argument('fail_item', 'offset', offset)
end
-- An entry with a readable offset is recognised by its prefix "<offset>|". One without is
-- recognised by its whole bytes, compared exactly: they may be empty (a zero-byte entry must
-- be dead-lettered like any other corrupt one), and a prefix match would then match any head.
if offset ~= '' and prefix == '' then return bad_argument('fail_item', 'head prefix', prefix) end
if not attempt or attempt < 1 then return bad_argument('fail_item', 'attempt', ARGV[5]) end
if not max_attempts or max_attempts < 1 then
  return bad_argument('fail_item', 'max_attempts', ARGV[6])
end
if mode ~= 'd' and mode ~= 'b' then return bad_argument('fail_item', 'on exhausted', mode) end
if not error_json then return bad_argument('fail_item', 'error', nil) end
if not lease_ms or lease_ms < 1 then return bad_argument('fail_item', 'lease ms', ARGV[10]) end

-- Nothing may fail after the first write either: every key written below is of its type.
local err = wrong_type('fail_item',
  {K_OWNERS, K_ATTEMPTS, K_BLOCKED, K_LEASES, K_DEAD, K_HEADS, K_EXACT, K_LATE}, {list_key})
if err then return err end

if owner_token(sub) ~= token then return {-1, 0} end
if offset == '' then
  if redis.call('LINDEX', list_key, 0) ~= prefix then return {0, 0} end
elseif not head_matches(list_key, prefix) then
  return {0, 0}
end
local now = now_ms()

local count = attempts_of(sub, offset ~= '' and offset or nil)
if offset ~= '' and attempt > count then
  count = attempt
  set_attempts(sub, offset, count)
end

if force or count >= max_attempts then
  if mode == 'b' and not force then
    local head = redis.call('LINDEX', list_key, 0)
    redis.call('HSET', K_BLOCKED, sub, failure_record(error_json, count, now, head))
    release_lease(sub, list_key, false)
    return {3, count}
  end
  dead_letter_head(sub, list_key, error_json, count, now)
  end_isolation(sub)
  extend_lease(sub, lease_ms, now)
  return {2, count}
end
end_isolation(sub)  -- nothing runs during the backoff: a crash then is not this item's
extend_lease(sub, lease_ms, now)
return {1, count}
