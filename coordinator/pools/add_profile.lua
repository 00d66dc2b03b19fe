-- add_profile.lua: create or update a profile; an update keeps its health history.
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] definition JSON object (validated by
--   the caller, without created_ms/updated_ms, which this script appends as text: cjson
--   keeps 14 significant digits, so re-encoding would turn metadata such as 12345678901234567
--   into 1.2345678901235e+16; the caller's JSON is stored byte for byte instead)
-- Returns {'created', gen} | {'updated', gen}
-- A new profile joins the end of the rotation with a new generation (the "<id>:gen" state
-- field: sticky sessions bound to an earlier profile of the same id do not carry over). An
-- update keeps counters, cooldowns and the generation, and re-ranks the profile if its priority
-- or type changed.
--!include _pool_rotation.lua

local id = ARGV[2]
local def = cjson.decode(ARGV[3])
local body = string.sub(ARGV[3], 1, -2)  -- the object without its closing brace
local now = now_ms()
check_types()  -- (before the first write: see _pool.lua)
sweep(now)

local old = load_def(id)
local existed = redis.call('HEXISTS', K_PROFILES, id) == 1
local created_ms = (existed and old and tonumber(old.created_ms)) or now
redis.call('HSET', K_PROFILES, id,
  body .. ',"created_ms":' .. int(created_ms) .. ',"updated_ms":' .. int(now) .. '}')

if not existed then
  drop_profile_fields(id)  -- left by an earlier profile of this id, if any
  local gen = next_counter('gen')
  write_fields(id, {gen = gen})
  enqueue(id, def)
  emit('profile:added', id, {type = def.type, priority = def.priority}, now)
  return {'created', gen}
end

local gen = tonumber(redis.call('HGET', K_STATE, id .. ':gen'))
if not gen then  -- deleted or edited by hand: a new one (bindings to the old one stop holding)
  gen = next_counter('gen')
  write_fields(id, {gen = gen})
end
-- Re-rank if it is in the rotation (an old entry computed from the old definition, if any).
local seq = redis.call('ZSCORE', K_READY, id)
if seq then
  if old then redis.call('ZREM', K_RANKED, rank_member(old, seq, id)) end
  redis.call('ZADD', K_RANKED, 0, rank_member(def, seq, id))
end
emit('profile:added', id, {type = def.type, priority = def.priority, updated = true}, now)
return {'updated', gen}
