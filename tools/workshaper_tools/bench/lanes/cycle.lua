-- Prototype: one round trip's work on one leased lane: record what finished, extend the
-- lease, read the next entries.
--
-- KEYS[1] the lane's lease, KEYS[2] the lane list, KEYS[3] the lane's finished set (offsets
-- finished above the lane's head: they wait for the items before them)
-- ARGV[1] token, ARGV[2] lease ms
-- ARGV[3] trim: entries at the head that finished (a contiguous prefix), ARGV[4] the offset of
--         the last of them (checked, so a retried call trims nothing twice)
-- ARGV[5] read from (index in the list after the trim), ARGV[6] read count
-- ARGV[7] a: offsets finished above the prefix, then ARGV[8 .. 7+a], then the offsets that
--         left the finished set with the trim (they were reported above earlier)
-- Returns {-1} fenced, else {1, trimmed, entry1, entry2, ...}.
local held = redis.call('GET', KEYS[1])
if not held or string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local trim, trimmed = tonumber(ARGV[3]), 0
if trim > 0 then
  local last = redis.call('LINDEX', KEYS[2], trim - 1)
  if last and string.sub(last, 1, #ARGV[4] + 1) == ARGV[4] .. '|' then
    redis.call('LTRIM', KEYS[2], trim, -1)
    trimmed = trim
  end
end
local above = tonumber(ARGV[7])
if above > 0 then redis.call('SADD', KEYS[3], unpack(ARGV, 8, 7 + above)) end
if #ARGV > 7 + above then redis.call('SREM', KEYS[3], unpack(ARGV, 8 + above, #ARGV)) end
local reply = {1, trimmed}
local count = tonumber(ARGV[6])
if count > 0 then
  local from = tonumber(ARGV[5]) - trimmed
  local entries = redis.call('LRANGE', KEYS[2], from, from + count - 1)
  for i = 1, #entries do reply[i + 2] = entries[i] end
end
return reply
