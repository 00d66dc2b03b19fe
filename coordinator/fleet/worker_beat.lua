-- worker_beat.lua: write one worker's heartbeat (or remove it), on Redis time.
-- KEYS[1] the worker's heartbeat HASH   KEYS[2] the workers' index ZSET
-- ARGV[1] clock offset ms   ARGV[2] worker id   ARGV[3] TTL ms (0: remove the heartbeat)
-- ARGV[4..] field, value, field, value... written into the hash
-- Returns the beat time (ms).

local id, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
if ttl == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], id)
  return now
end
redis.call('HSET', KEYS[1], 'beat_ms', now)
for i = 4, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, id)
return now
