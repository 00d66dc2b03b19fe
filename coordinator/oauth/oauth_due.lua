-- oauth_due.lua: the credentials whose access token expires within a window (for the refresh
-- worker), read from the expiry index on Redis time. Read-only.
-- KEYS[1] expiry ZSET
-- ARGV[1] clock offset ms   ARGV[2] window ms   ARGV[3] at most this many ids
-- Returns {now, id1, expires_at1, id2, expires_at2, ...}, soonest first.

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + tonumber(ARGV[2]),
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {int(now)}
for i = 1, #due, 2 do
  out[#out + 1] = due[i]
  out[#out + 1] = int(due[i + 1])
end
return out
