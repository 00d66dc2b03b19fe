-- clear_cooldown.lua: end a profile's cooldowns now and reset its counters (operator action).
-- KEYS[1..7]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id
-- Returns {'missing'} | {'cleared', was cooling 0|1}
-- Also repairs a state record edited into an invalid form (it is replaced by a clean one that
-- keeps the usage figures that are still readable).
--!include _pool_admin.lua

local id = ARGV[2]
local now = now_ms()
sweep(now)
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
local def = load_def(id)
local was_cooling = redis.call('ZREM', K_COOLING, id)
local pair_count = redis.call('ZCARD', K_COOLING)
drop_model_entries(id)
local pairs_cleared = pair_count - redis.call('ZCARD', K_COOLING)
if not redis.call('ZSCORE', K_READY, id) then enqueue(id, def) end
local state = load_state(id) or {}
state.failures = 0
state.billing_failures = 0
state.cooldown_until_ms = nil
state.cooldown_kind = nil
save_state(id, state)
if was_cooling == 1 or pairs_cleared > 0 then
  emit('profile:recovered', id, {manual = true}, now)
end
return {'cleared', (was_cooling == 1 or pairs_cleared > 0) and 1 or 0}
