-- remove_profile.lua: delete a profile, its state fields and its place in the rotation.
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id
-- Returns 1 if it existed, else 0.
-- Sticky sessions bound to it become invalid at once: a binding names the profile's
-- generation, and a profile added again under the same id gets a new one.
--!include _pool_admin.lua

local id = ARGV[2]
local now = now_ms()
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return 0 end
check_types()  -- (before the first write: see _pool.lua)
local def = load_def(id)
dequeue(id, def)
redis.call('ZREM', K_COOLING, id)
redis.call('HDEL', K_PROFILES, id)
drop_profile_fields(id)
drop_model_entries(id)
emit('profile:removed', id, {}, now)
return 1
