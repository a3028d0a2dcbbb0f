-- Prototype: lease one lane. KEYS[1] the lane's lease (a string "<token>|<worker>"), KEYS[2]
-- the partition's meta hash (token counter). ARGV[1] worker, ARGV[2] lease ms.
-- Returns the new token, or -1 when another worker holds the lane.
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, string.find(held, '|', 1, true) + 1) ~= ARGV[1] then return -1 end
local token = redis.call('HINCRBY', KEYS[2], 'token', 1)
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
