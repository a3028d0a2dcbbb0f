#!lua flags=allow-oom
-- Elect the namespace's one reaper: take the reaper lock when it is free, renew it while this
-- worker holds the same term, or give it up.
--
-- KEYS[1]  ws:{ns}:reaper       STRING "term|worker id", with a TTL
-- KEYS[2]  ws:{ns}:reaper_term  STRING counter: every new holder gets the next term
-- ARGV[1]  worker id
-- ARGV[2]  the term the caller believes it holds ("0": none)
-- ARGV[3]  TTL in ms; "0" gives the lock up (only if the caller holds that very term)
--
-- Returns {held, term, ttl_ms, server_ms}:
--   held 1: the caller is the reaper for `term` until ttl_ms from now;
--   held 0: `term` is the holder's (0 when free) and ttl_ms what is left of its lock.
-- The term fences the lock: a holder that was paused past its TTL cannot renew a lock taken
-- since, even under the same worker id (a worker restarted with a fixed --name). Nothing the
-- reaper writes needs the term: every expiry re-checks its lease deadline in server time, so
-- a stale reaper running one scan too many only costs commands.
-- Idempotent: a re-sent call renews or re-reads the same lock.
--
-- Shebang flags: allow-oom: electing the reaper (two small keys) must work at maxmemory, or crashed
-- workers' leases would never be taken back.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).

local lock, terms = KEYS[1], KEYS[2]
local id, my_term, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mine = my_term .. '|' .. id
local current = redis.call('GET', lock)

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function term_of(value)
  return tonumber(string.match(value, '^(%d+)|') or '0')
end

if ttl == 0 then
  if current == mine then redis.call('DEL', lock) end
  return {0, 0, 0, server_ms()}
end
if current == mine then
  redis.call('PEXPIRE', lock, ttl)
  return {1, term_of(mine), ttl, server_ms()}
end
if current then
  local left = redis.call('PTTL', lock)
  -- A lock without a TTL was not set here (an operator, a restore): it would stop reaping for
  -- good, so it is taken over like a free one.
  if left >= 0 then return {0, term_of(current), left, server_ms()} end
end
local term = redis.call('INCR', terms)
redis.call('SET', lock, string.format('%d', term) .. '|' .. id, 'PX', ttl)
return {1, term, ttl, server_ms()}
