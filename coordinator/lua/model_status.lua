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
  local raw_def = redis.call('HGET', K_PROFILES, id) or ''
  local _, _, bad = load_def(id)
  local b, bbad = parse_breaker(redis.call('HGET', K_BREAKERS, id))
  if b then
    if b.state ~= 'closed' and rare().refresh(id, b, now) then
      redis.call('HSET', K_BREAKERS, id, cjson.encode(b))
    end
  end
  local raw_b = redis.call('HGET', K_BREAKERS, id) or ''
  rows[#rows + 1] = {id, raw_def, raw_b, bad or bbad or ''}
end
return {now, rows}
