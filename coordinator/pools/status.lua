-- status.lua: every profile of a pool with its health, on Redis time.
-- KEYS[1..7]  the static pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] failure window ms
-- Returns {now, {id, definition JSON or '', state JSON or '', cooling until ms or '',
--   ready 0|1, effective failures, effective billing failures, broken field or '',
--   last used ms or ''}...,
--   {pair, until}...}   (the broken field names the first invalid stored value, if any)
--   where the last element lists (profile|model) cooldowns as a flat array.
-- Recoveries that are due are applied first (and announced once), as in every pool script.
--!include _pool_admin.lua

local window = tonumber(ARGV[2])
local now = now_ms()
sweep(now)
local rows = {}
local ids = redis.call('HKEYS', K_PROFILES)
for _, id in ipairs(ids) do
  local raw_def = redis.call('HGET', K_PROFILES, id) or ''
  local raw_state = redis.call('HGET', K_STATE, id) or ''
  local cooling = redis.call('ZSCORE', K_COOLING, id) or ''
  local ready = redis.call('ZSCORE', K_READY, id) and 1 or 0
  local _def, _raw, def_broken = load_def(id)
  local state, state_broken = load_state(id)
  local failures, billing = 0, 0
  if state then
    if now - (state.last_failure_ms or 0) <= window then failures = state.failures or 0 end
    if now - (state.last_billing_ms or 0) <= window then billing = state.billing_failures or 0 end
  end
  rows[#rows + 1] = {id, raw_def, raw_state, cooling, ready, failures, billing,
    def_broken or state_broken or '', redis.call('HGET', K_META, 'used:' .. id) or ''}
end
local pairs_cooling = {}
local all = redis.call('ZRANGE', K_COOLING, 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  if string.find(all[i], '|', 1, true) then
    pairs_cooling[#pairs_cooling + 1] = all[i]
    pairs_cooling[#pairs_cooling + 1] = all[i + 1]
  end
end
return {now, rows, pairs_cooling}
