-- export_pool.lua: a consistent raw snapshot of one pool (secrets stay ciphertext).
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms
-- Returns {now, profiles (flat HGETALL), state (flat HGETALL: "<member>:<field>", value),
--   ready (id, seq flat), cooling (id or "<id>|<model>", until flat), meta (flat HGETALL)}
-- The caller groups the state fields by member and splits pairs from profiles, so that the
-- snapshot format does not depend on how the pool is laid out in Redis.
--!include _pool.lua

local now = now_ms()
return {
  now,
  redis.call('HGETALL', K_PROFILES),
  redis.call('HGETALL', K_STATE),
  redis.call('ZRANGE', K_READY, 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', K_COOLING, 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', K_META),
}
