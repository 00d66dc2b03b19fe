-- model_status.lua: every model profile with its breaker, on Redis time. Due open -> half-open
-- transitions are applied (and announced once) first.
-- KEYS[1..5]  the static {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration
-- Returns {now, {id, definition JSON, breaker JSON ('' if none), broken field ('' if sound)}...}
--!include _model.lua

local now = now_ms()
local rows = {}
local ids = redis.call('HKEYS', K_PROFILES)
table.sort(ids)
for _, id in ipairs(ids) do
  local _, raw_def, bad = load_def(id)
  local raw_b = redis.call('HGET', K_BREAKERS, id)
  local b, bbad = parse_breaker(raw_b, id)
  if b and b.state ~= 'closed' and refresh(id, b, now) then
    raw_b = save_breaker(id, b)
  end
  rows[#rows + 1] = {id, raw_def or '', raw_b or '', bad or bbad or ''}
end
return {now, rows}
