-- model_add.lua: create or update a model profile. Its circuit breaker is left as it is, so
-- re-adding a profile never closes an open breaker.
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (unused)
-- ARGV[3] profile id   ARGV[4] definition JSON (validated by the caller)
-- ARGV[5] priority   ARGV[6] enabled: 1 | 0
-- ARGV[7] 1: only create (an existing profile is left as it is), else 0 (optional)
-- Returns {'created' | 'updated' | 'kept', breaker state ('' when kept)}
--!include _model.lua

local id, body = ARGV[MARG], ARGV[MARG + 1]
local priority, enabled = tonumber(ARGV[MARG + 2]), ARGV[MARG + 3] == '1'
local existed = redis.call('HEXISTS', K_PROFILES, id) == 1
if existed and ARGV[MARG + 4] == '1' then return {'kept', ''} end
local now = now_ms()
check_types()  -- (before the first write: see _model.lua)
redis.call('HSET', K_PROFILES, id, body)
if enabled then
  redis.call('ZADD', K_RANKED, -priority, id)
else
  redis.call('ZREM', K_RANKED, id)
end
local b = load_breaker(id)
local state = 'corrupt'
if b then
  if b.state ~= 'closed' and refresh(id, b, now) then
    save_breaker(id, b)
  end
  state = b.state
end
emit('profile:added', id, {priority = priority, enabled = enabled, updated = existed,
  breaker = state}, now)
if existed then return {'updated', state} end
return {'created', state}
