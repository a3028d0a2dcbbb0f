-- Prototype (a design spike, not the product): enqueue a batch of one partition into its lanes.
--
-- KEYS[1]      the partition's accepted offsets (a list, as the product keeps them)
-- KEYS[2]      the partition's meta hash (highest accepted offset)
-- KEYS[3..]    the lane lists the batch touches
-- ARGV[1]      n items, ARGV[2] g lanes, ARGV[3 .. 2+n] offsets in order,
--              then per lane j: count, then its entries ("<offset>|<sub>|<payload>") in order
-- Returns n. One variadic RPUSH per lane (not per sub key): the point of lanes.
local n, g = tonumber(ARGV[1]), tonumber(ARGV[2])
local CHUNK = 2000
for s = 3, 2 + n, CHUNK do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, s, math.min(s + CHUNK - 1, 2 + n)))
end
local a = 3 + n
for j = 1, g do
  local count = tonumber(ARGV[a])
  for s = a + 1, a + count, CHUNK do
    redis.call('RPUSH', KEYS[2 + j], unpack(ARGV, s, math.min(s + CHUNK - 1, a + count)))
  end
  a = a + 1 + count
end
redis.call('HSET', KEYS[2], 'max', ARGV[2 + n])
return n
