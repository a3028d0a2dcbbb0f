#!lua flags=allow-oom
-- Extend the leases a worker holds in one partition.
--
-- KEYS[1..12]  the partition's fixed keys
-- ARGV[1]      lease duration ms
-- ARGV[2..]    pairs: sub key, token
--
-- Returns the 1-based indexes of the pairs whose lease is lost (token no longer owns it).
-- Idempotent.
--
-- Shebang flags: allow-oom: a renewal only rewrites existing deadlines; refusing it at maxmemory would let
-- live leases expire and charge their items an attempt.
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local lease_ms = tonumber(ARGV[1])
if not lease_ms or lease_ms < 1 then return bad_argument('extend_leases', 'lease ms', ARGV[1]) end
if #ARGV % 2 ~= 1 then return bad_argument('extend_leases', 'pairs', 'a sub key without token') end
local now = now_ms()
local lost = {}
local i = 0
for a = 2, #ARGV, 2 do
  i = i + 1
  local sub, token = ARGV[a], ARGV[a + 1]
  if owner_token(sub) == token then
    extend_lease(sub, lease_ms, now)
  else
    lost[#lost + 1] = i
  end
end
return lost
