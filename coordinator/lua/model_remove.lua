-- model_remove.lua: delete a model profile. A breaker that is not closed is kept (removing and
-- re-adding a profile is no way around an open breaker); a closed one is deleted.
-- KEYS[1..5]  the static {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration   ARGV[3] profile id
-- Returns 1 if the profile existed, else 0.
--!include _model.lua

local id = ARGV[MARG]
local now = now_ms()
local existed = redis.call('HDEL', K_PROFILES, id)
redis.call('ZREM', K_RANKED, id)
local b = parse_breaker(redis.call('HGET', K_BREAKERS, id), id)
if b then
  if b.state ~= 'closed' then refresh(id, b, now) end
  if b.state == 'closed' then
    redis.call('HDEL', K_BREAKERS, id)
  else
    save_breaker(id, b)
  end
end
if existed == 1 then emit('profile:removed', id, {}, now) end
return existed
