-- model_status.lua: every model profile with its breaker, on Redis time. Due open -> half-open
-- transitions are applied (and announced once) first.
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration
-- Returns {now, {{id, definition JSON ('' if unreadable), breaker JSON ('' if corrupt),
--   broken field ('' if sound)}...}}; the breaker JSON holds the fields of _model.lua, with
--   streak a list of ms and permits an object token -> expiry ms.
--!include _model.lua

local now = now_ms()
local rows = {}
local ids = redis.call('HKEYS', K_PROFILES)
table.sort(ids)
for _, id in ipairs(ids) do
  local _, raw_def, bad = load_def(id)
  local b, bbad = load_breaker(id)
  local breaker = ''
  if b then
    if b.state ~= 'closed' and refresh(id, b, now) then save_breaker(id, b) end
    breaker = cjson.encode(b)
  end
  rows[#rows + 1] = {id, raw_def or '', breaker, bad or bbad or ''}
end
return {now, rows}
