#!lua flags=no-writes
-- The oldest head items of a partition (its possibly stuck sub keys), for operators. Read-only.
--
-- KEYS[1..12]  the partition's fixed keys
-- ARGV[1]      limit: the most rows
-- ARGV[2]      older_than_ms: only heads accepted at least this long ago (blocked ones always)
--
-- Returns {now_ms, sub1, head_offset1, accepted_ms1, owner1, deadline1, attempts1, blocked1, ...}
--   accepted_ms: "" when no clock sample covers the offset; owner: the owners record or "";
--   deadline: lease deadline ms or ""; attempts: the "offset|n" record or ""; blocked: 1 or 0
--
-- It never scans all sub keys: `heads` is ordered by head offset, and offsets grow with time,
-- so its first members are the oldest heads; the walk stops at the first head that is too
-- young. Blocked sub keys (waiting for an operator) are added from `blocked`.
--
-- Shebang flags: no-writes: it only reads, so the admin runs it with EVALSHA_RO (on a read-only ACL), and
-- at maxmemory too.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local limit, older_than = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local out = {now}
local seen = {}
local rows = 0

local function add(sub, offset, accepted)
  seen[sub] = true
  rows = rows + 1
  local deadline = redis.call('ZSCORE', K_LEASES, sub)
  out[#out + 1] = sub
  out[#out + 1] = offset
  out[#out + 1] = accepted
  out[#out + 1] = redis.call('HGET', K_OWNERS, sub) or ''
  out[#out + 1] = deadline or ''
  out[#out + 1] = redis.call('HGET', K_ATTEMPTS, sub) or ''
  out[#out + 1] = redis.call('HEXISTS', K_BLOCKED, sub)
end

local function accepted_at(offset)
  return redis.call('ZRANGEBYSCORE', K_CLOCK, offset, '+inf', 'LIMIT', 0, 1)[1] or ''
end

for _, sub in ipairs(redis.call('HKEYS', K_BLOCKED)) do
  if rows >= limit then break end
  local offset = redis.call('ZSCORE', K_HEADS, sub) or ''
  add(sub, offset, offset ~= '' and accepted_at(offset) or '')
end

local heads = redis.call('ZRANGE', K_HEADS, 0, limit - 1, 'WITHSCORES')
for i = 1, #heads, 2 do
  if rows >= limit then break end
  local sub, offset = heads[i], heads[i + 1]
  if not seen[sub] then
    local accepted = accepted_at(offset)
    if accepted ~= '' and now - tonumber(accepted) < older_than then break end
    add(sub, offset, accepted)
  end
end
return out
