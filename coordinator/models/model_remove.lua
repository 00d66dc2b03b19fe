-- model_remove.lua: delete a model profile. Its breaker record goes with it only when it holds
-- nothing a re-added profile must inherit: a closed breaker with no cooldown running (none, or
-- cooldown_until_ms <= now), no failure in its streak that still counts (within
-- failure_decay_ms) and none in its window. Any other record is kept as it is (an open or
-- half-open breaker, a billing or Retry-After cooldown, a failure streak, failures in the
-- window): removing and re-adding a profile is no way around any of them. A corrupt record is
-- kept too (the status of a re-added profile shows it; model_reset repairs it).
-- KEYS[1..5]  the static {models} keys (see _model.lua; profiles, breakers, events and ranked
--   are touched)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (failure_decay_ms is read)
-- ARGV[3] profile id
-- Returns 1 if the profile existed, else 0.
--!include _model.lua

local id = ARGV[MARG]
local now = now_ms()
local existed = redis.call('HDEL', K_PROFILES, id)
redis.call('ZREM', K_RANKED, id)
local raw = redis.call('HGET', K_BREAKERS, id)
local b = raw and parse_breaker(raw, id)  -- nil for a corrupt record: it stays
if b then
  if b.state ~= 'closed' then
    if refresh(id, b, now) then save_breaker(id, b) end
  elseif (b.cooldown_until_ms or 0) <= now and next(counting_streak(b, now)) == nil
      and not string.find(b.window, '1', 1, true) then
    redis.call('HDEL', K_BREAKERS, id)
  end
end
if existed == 1 then emit('profile:removed', id, {}, now) end
return existed
