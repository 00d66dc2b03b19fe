-- add_profile.lua: create or update a profile; an update keeps its health history.
-- KEYS[1..7]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] definition JSON object (validated by
--   the caller, without gen/created_ms/updated_ms, which this script appends as text so that
--   the caller's JSON, metadata included, is stored byte for byte)
-- Returns {'created', gen} | {'updated', gen}
-- A new profile joins the end of the rotation with a new generation (sticky sessions bound to
-- an earlier profile of the same id do not carry over). An update keeps counters, cooldowns and
-- the generation, and re-ranks the profile if its priority or type changed.
--!include _pool_rotation.lua

local id = ARGV[2]
local def = cjson.decode(ARGV[3])
local body = string.sub(ARGV[3], 1, -2)  -- the object without its closing brace
local now = now_ms()
sweep(now)

local old, old_raw = load_def(id)
local existed = redis.call('HEXISTS', K_PROFILES, id) == 1
if existed and old then
  def.gen = old.gen
  def.created_ms = old.created_ms or now
else
  def.gen = redis.call('HINCRBY', K_META, 'gen', 1)
  def.created_ms = now
end
def.updated_ms = now
redis.call('HSET', K_PROFILES, id, body .. ',"gen":' .. int(def.gen) .. ',"created_ms":'
  .. int(def.created_ms) .. ',"updated_ms":' .. int(now) .. '}')

if not existed then
  redis.call('HDEL', K_STATE, id)
  enqueue(id, def)
  emit('profile:added', id, {type = def.type, priority = def.priority}, now)
  return {'created', def.gen}
end

-- Re-rank if it is in the rotation (an old entry computed from the old definition, if any).
local seq = redis.call('ZSCORE', K_READY, id)
if seq then
  if old then redis.call('ZREM', K_RANKED, rank_member(old, tonumber(seq), id)) end
  redis.call('ZADD', K_RANKED, 0, rank_member(def, tonumber(seq), id))
end
emit('profile:added', id, {type = def.type, priority = def.priority, updated = true}, now)
return {'updated', def.gen}
