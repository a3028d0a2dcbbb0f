#!lua flags=allow-oom
-- Take back an expired lease: charge the interrupted head item and requeue the sub key.
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13]     the sub key's queue list
-- ARGV[1]      sub key
-- ARGV[2]      id of the worker reaping (for the record)
--
-- After a crash nobody knows which item was running: a worker runs several items of a lease
-- and reports them in batches, and runs several leases at once. So the head item is charged
-- one attempt but never its last one, and the next `batch` items of the sub key form a
-- single-step window ("exact"): the worker that takes them runs them isolated, one at a time,
-- with nothing else running in its process, and flags the lease while each item runs. Only a
-- lease flagged isolated gets a full charge, which can dead-letter: that crash can only be its
-- head item's.
--
-- Returns {code, attempts}: 0 not expired (renewed meanwhile) or not leased, 1 requeued,
-- 2 head dead-lettered (rest requeued), 3 head blocked (sub key waits for an operator).
-- Idempotent: a second run finds no lease.
--
-- Shebang flags: allow-oom: taking back a crashed worker's lease lets its items run (and free memory);
-- it writes at most an attempts record and a dead letter.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local sub, reaper = ARGV[1], ARGV[2]
local list_key = KEYS[FIRST_EXTRA_KEY]
-- Nothing may fail after the first write: every key written below is of its type.
local err = wrong_type('expire_lease',
  {K_LEASES, K_OWNERS, K_EXACT, K_ATTEMPTS, K_BLOCKED, K_DEAD, K_HEADS, K_LATE, K_READY},
  {list_key})
if err then return err end
local now = now_ms()
local deadline = redis.call('ZSCORE', K_LEASES, sub)
if not deadline or tonumber(deadline) > now then return {0, 0} end

local owner = parse_owner(redis.call('HGET', K_OWNERS, sub))
release_lease(sub, list_key, false)
if not owner then return {0, 0} end

local head = redis.call('LINDEX', list_key, 0)
if not head then return {1, 0} end
local offset = entry_offset(head)
if not offset then
  redis.call('RPUSH', K_READY, sub)
  return {1, 0}
end

local count = attempts_of(sub, offset)
local in_window = tonumber(redis.call('HGET', K_EXACT, sub) or '0') > 0
if in_window and owner.isolated then
  count = count + 1
else
  count = math.max(count, math.min(count + 1, owner.max_attempts - 1))
  if not in_window then
    -- The window covers the items the dead worker may have been running: at most a batch of
    -- those queued now, never items enqueued later.
    local window = math.min(owner.batch, redis.call('LLEN', list_key))
    redis.call('HSET', K_EXACT, sub, string.format('%d', window))
  end
end
set_attempts(sub, offset, count)

local code = 1
if count >= owner.max_attempts then
  local error_json = cjson.encode({
    type = 'LeaseExpired',
    message = 'lease expired while running (attempt ' .. string.format('%d', count) ..
      '): worker ' .. owner.worker .. ' crashed or stalled',
    traceback = '',
    worker = reaper,
  })
  if owner.mode == 'b' then
    redis.call('HSET', K_BLOCKED, sub, failure_record(error_json, count, now, head))
    return {3, count}
  end
  dead_letter_head(sub, list_key, error_json, count, now)
  code = 2
end
if redis.call('LLEN', list_key) > 0 then redis.call('RPUSH', K_READY, sub) end
return {code, count}
