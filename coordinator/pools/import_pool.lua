-- import_pool.lua: replace one pool's profiles and health with a snapshot from export_pool.
-- KEYS[1..7]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] snapshot JSON:
--   {profiles = {id = definition JSON}, state = {id = state JSON}, ready = {{id, seq}...},
--    cooling = {{id, until}...}, model_cooling = {{pair, until}...},
--    model_state = {pair = JSON}, meta = {seq = n, gen = n}, usage = {id = last used ms}}
-- Returns the number of profiles imported. The event stream is kept; sessions are not part of
-- a snapshot. The ranked index is rebuilt from the definitions.
--!include _pool_rotation.lua

local snap = cjson.decode(ARGV[2])
local now = now_ms()
redis.call('DEL', K_PROFILES, K_STATE, K_COOLING, K_READY, K_RANKED, K_META)  -- not the events
local count = 0
for id, raw in pairs(snap.profiles or {}) do
  redis.call('HSET', K_PROFILES, id, raw)
  count = count + 1
end
for id, raw in pairs(snap.state or {}) do redis.call('HSET', K_STATE, id, raw) end
for _, entry in ipairs(snap.ready or {}) do
  redis.call('ZADD', K_READY, entry[2], entry[1])
  local def = load_def(entry[1])
  if def then redis.call('ZADD', K_RANKED, 0, rank_member(def, tonumber(entry[2]), entry[1])) end
end
for _, entry in ipairs(snap.cooling or {}) do redis.call('ZADD', K_COOLING, entry[2], entry[1]) end
for _, entry in ipairs(snap.model_cooling or {}) do
  redis.call('ZADD', K_COOLING, entry[2], entry[1])
end
for pair, raw in pairs(snap.model_state or {}) do redis.call('HSET', K_STATE, pair, raw) end
for id, ms in pairs(snap.usage or {}) do redis.call('HSET', K_META, 'used:' .. id, int(ms)) end
local meta = snap.meta or {}
redis.call('HSET', K_META, 'seq', int(tonumber(meta.seq) or 0), 'gen', int(tonumber(meta.gen) or 0))
emit('pool:imported', '', {profiles = count}, now)
return count
