-- export_pool.lua: a consistent raw snapshot of one pool (secrets stay ciphertext).
-- KEYS[1..10]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms
-- Returns {now, profiles (flat HGETALL), state (flat), ready (id, seq flat),
--   cooling (id, until flat), model_cooling (pair, until flat), model_state (flat), meta (flat),
--   usage (flat)}
--!include _pool.lua

local now = now_ms()
return {
  now,
  redis.call('HGETALL', K_PROFILES),
  redis.call('HGETALL', K_STATE),
  redis.call('ZRANGE', K_READY, 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', K_COOLING, 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', K_MCOOLING, 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', K_MSTATE),
  redis.call('HGETALL', K_META),
  redis.call('HGETALL', K_USAGE),
}
