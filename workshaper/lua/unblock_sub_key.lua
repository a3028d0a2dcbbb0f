#!lua
-- Operator action on a sub key held by on_exhausted="block".
--
-- KEYS[1..12]  the partition's fixed keys
-- KEYS[13]     the sub key's queue list
-- KEYS[14]     this request's record (kept a minute: a re-sent call answers as the first)
-- ARGV[1]      sub key
-- ARGV[2]      "retry": run the head item again with fresh attempts
--              "dead_letter": give the head item up, then go on with the rest
-- ARGV[3]      operator note as JSON (type, message, traceback, worker), for "dead_letter"
--
-- Returns 1 when the sub key was blocked and is now runnable again (also to a re-sent call of
-- the same request), 0 when it was not blocked.
-- Malformed arguments raise an error reply before anything is written.
--
-- Shebang flags: none: an operator action that writes a request record and perhaps a dead letter; at
-- maxmemory Redis refuses it before it runs (the operator retries).
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local sub, action, note = ARGV[1], ARGV[2], ARGV[3]
local list_key, request_key = KEYS[FIRST_EXTRA_KEY], KEYS[FIRST_EXTRA_KEY + 1]
if not sub then return bad_argument('unblock_sub_key', 'sub key', nil) end
if action ~= 'retry' and action ~= 'dead_letter' then
  return bad_argument('unblock_sub_key', 'action', action)
end
if not note or not request_key then return bad_argument('unblock_sub_key', 'note/request', nil) end
if redis.call('EXISTS', request_key) == 1 then return 1 end
local record = redis.call('HGET', K_BLOCKED, sub)
if not record then return 0 end
redis.call('SET', request_key, '1', 'PX', 60000)
redis.call('HDEL', K_BLOCKED, sub)
redis.call('HDEL', K_ATTEMPTS, sub)
redis.call('HDEL', K_EXACT, sub)
if action == 'dead_letter' then
  local attempts = tonumber(string.match(record, '^[^\n]*\n(%d+)\n')) or 0
  dead_letter_head(sub, list_key, note, attempts, now_ms())
end
if redis.call('HEXISTS', K_OWNERS, sub) == 0 and redis.call('LLEN', list_key) > 0 then
  redis.call('RPUSH', K_READY, sub)
end
return 1
