#!lua flags=allow-oom
-- Remove registry entries whose heartbeat is older than a bound: workers that crashed or were
-- killed never unregister themselves.
--
-- KEYS[1]  ws:{ns}:workers  HASH worker id -> JSON with "seen" (server seconds)
-- ARGV[1]  max age in ms
--
-- An entry that is not a JSON object with a numeric "seen" is pruned too: nothing of ours
-- wrote it, or it was truncated. A live worker pruned while paused re-registers with its next
-- heartbeat. Returns the number of entries removed. Idempotent.
--
-- Shebang flags: allow-oom: it only deletes registry entries.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local max_age = tonumber(ARGV[1]) / 1000
local entries = redis.call('HGETALL', KEYS[1])
local stale = {}
for i = 1, #entries, 2 do
  local ok, info = pcall(cjson.decode, entries[i + 1])
  local seen = ok and type(info) == 'table' and tonumber(info['seen'])
  if not seen or now - seen > max_age then
    stale[#stale + 1] = entries[i]
  end
end
-- HDEL in chunks: a long argument list would overflow Lua's stack (unpack).
for i = 1, #stale, 1000 do
  redis.call('HDEL', KEYS[1], unpack(stale, i, math.min(i + 999, #stale)))
end
return #stale
