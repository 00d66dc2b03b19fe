-- mark_success.lua: a call on this profile succeeded; reset its failure counters.
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] model ('' for none)
-- Returns {'missing'} | {'ok', repaired field or ''}
-- A success does not lift a running cooldown (a call admitted before the failure may finish
-- after it); it only resets the counters, so the next failure starts the schedule again.
-- Most calls succeed, so a success with nothing to reset (counters absent or zero) writes
-- nothing. A counter edited into garbage is reset to zero (and named in the reply); other
-- broken fields are left for a failure or clear_cooldown to repair.
--!include _pool.lua

-- (The fields are named one by one, not built in a loop: this is the most frequent report, and
-- building the lists cost it a third of its Redis time.)
local id, model = ARGV[2], ARGV[3]
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
local stored = redis.call('HMGET', K_STATE, id .. ':failures', id .. ':billing_failures')
local failures, failures_ok = read_number(stored[1])
local billing, billing_ok = read_number(stored[2])
local broken = (not failures_ok and 'failures') or (not billing_ok and 'billing_failures') or nil
if broken or (failures or 0) > 0 or (billing or 0) > 0 then
  redis.call('HSET', K_STATE, id .. ':failures', 0, id .. ':billing_failures', 0)
end
if model ~= '' then
  local pair = id .. '|' .. model .. ':'
  redis.call('HDEL', K_STATE, pair .. 'failures', pair .. 'last_failure_ms')
end
return {'ok', broken or ''}
