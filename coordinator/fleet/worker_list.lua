-- worker_list.lua: every live worker's heartbeat, newest first; index entries whose heartbeat
-- expired (a worker that died) are dropped from the index.
-- KEYS[1] the workers' index ZSET   KEYS[2..] each indexed worker's heartbeat HASH, in the
-- order of ARGV[2..]
-- ARGV[1] clock offset ms   ARGV[2..] worker ids (as read from the index by the caller)
-- Returns {now, {field, value, ...}, ...} for the workers whose heartbeat still exists.

local now = now_ms()
local out = {now}
for i = 2, #ARGV do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    out[#out + 1] = fields
  end
end
return out
