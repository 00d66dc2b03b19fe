-- import_pool.lua: replace one pool's profiles and health with a snapshot (format 2, see
-- AuthProfileManager.import_state, which converts older formats first).
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] snapshot JSON:
--   {profiles = {id = definition JSON}, state = {id = {field = value}},
--    model_state = {"<id>|<model>" = {field = value}}, ready = {{id, seq}...},
--    cooling = {{id, until}...}, model_cooling = {{pair, until}...}, meta = {seq = n, gen = n}}
--   (values are texts, as stored; the caller checked that field names hold no ':')
-- Returns the number of profiles imported. The event stream is kept; sessions are not part of
-- a snapshot. The ranked index is rebuilt from the definitions.
--!include _pool_rotation.lua

local snap = cjson.decode(ARGV[2])
local now = now_ms()
-- Every pool key but the events is deleted and written anew (that repairs a key of another
-- type); the events stream is kept, so it must be one before anything is written.
check_types(5)
redis.call('DEL', K_PROFILES, K_STATE, K_COOLING, K_READY, K_RANKED, K_META)  -- not the events
local count = 0
for id, raw in pairs(snap.profiles) do
  redis.call('HSET', K_PROFILES, id, raw)
  count = count + 1
end
for _, states in ipairs({snap.state, snap.model_state}) do
  for member, fields in pairs(states) do write_fields(member, fields) end
end
for _, entry in ipairs(snap.ready) do
  redis.call('ZADD', K_READY, entry[2], entry[1])
  local def = load_def(entry[1])
  if def then redis.call('ZADD', K_RANKED, 0, rank_member(def, entry[2], entry[1])) end
end
for _, list in ipairs({snap.cooling, snap.model_cooling}) do
  for _, entry in ipairs(list) do redis.call('ZADD', K_COOLING, entry[2], entry[1]) end
end
redis.call('HSET', K_META, 'seq', int(snap.meta.seq or 0), 'gen', int(snap.meta.gen or 0))
emit('pool:imported', '', {profiles = count}, now)
return count
