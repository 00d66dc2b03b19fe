-- model_status.lua: every model profile with its breaker, on Redis time. Due open -> half-open
-- transitions are applied (and announced once) first.
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration
-- Returns {now, {row...}}, a row per profile as status_row in _model.lua makes it: {id,
--   definition JSON, breaker JSON, broken field, failure counts by kind JSON, broken count
--   field}.
--!include _model.lua

local now = now_ms()
local rows = {}
local ids = redis.call('HKEYS', K_PROFILES)
table.sort(ids)
for _, id in ipairs(ids) do
  rows[#rows + 1] = status_row(id, now)
end
return {now, rows}
