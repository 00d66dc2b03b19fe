-- mark_success.lua: a call on this profile succeeded; reset its failure counters.
-- KEYS[1..7]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] model (optional, '' for none)
-- Returns {'missing'} | {'ok', repaired field or ''}
-- A state record edited into garbage is replaced by a fresh one.
-- A success does not lift a running cooldown (a call admitted before the failure may finish
-- after it); it only resets the counters, so the next failure starts the schedule again.
--!include _pool.lua

local id, model = ARGV[2], ARGV[3] or ''
local now = now_ms()
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
local state, broken = load_state(id)
if not state then state = {} end
state.failures = 0
state.billing_failures = 0
state.successes = (state.successes or 0) + 1
state.last_success_ms = now
save_state(id, state)
if model ~= '' then redis.call('HDEL', K_STATE, id .. '|' .. model) end
return {'ok', broken or ''}
