#!lua
-- Flag a lease as running isolated: its worker runs nothing else until the flag is cleared, so
-- if the worker dies now the crash is this lease's head item's (expire_lease then charges it in
-- full). Cleared by complete_items when the sub key's single-step window ends, or with the
-- lease.
--
-- KEYS[1..12]  the partition's fixed keys
-- ARGV[1]      sub key
-- ARGV[2]      token
--
-- Returns 1, or -1 when the token no longer owns the lease (nothing written).
-- Idempotent.
--
-- Shebang flags: none: the flag grows memory; at maxmemory Redis refuses it before it runs, and the worker
-- sends it again after a backoff before it runs the item (README, "Redis at maxmemory").
-- Every key it touches is in KEYS or in the slot of KEYS: Redis checks that (scaling.md).
--@include partition.lua

local sub, token = ARGV[1], ARGV[2]
local owner = parse_owner(redis.call('HGET', K_OWNERS, sub))
if not owner or owner.token ~= token then return -1 end
if not owner.isolated then redis.call('HSET', K_OWNERS, sub, with_flag(owner, 'i')) end
return 1
