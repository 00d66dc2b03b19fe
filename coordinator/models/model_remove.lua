-- model_remove.lua: delete a model profile. Its breaker fields go with it only when it holds
-- nothing a re-added profile must inherit: a closed breaker with no cooldown running (none, or
-- cooldown_until_ms <= now), no failure in its streak that still counts (within
-- failure_decay_ms) and none in its window. Any other record is kept as it is (an open or
-- half-open breaker, a billing or Retry-After cooldown, a failure streak, failures in the
-- window): removing and re-adding a profile is no way around any of them. A corrupt breaker
-- is kept too (the status of a re-added profile shows it; model_reset repairs it). The failure
-- counts by kind go and stay with the rest of the breaker.
-- KEYS[1..5]  the {models} keys (see _model.lua; profiles, breakers, events and ranked
--   are touched)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (failure_decay_ms is read)
-- ARGV[3] profile id
-- Returns 1 if the profile existed, else 0.
--!include _model.lua

local id = ARGV[MARG]
local now = now_ms()
check_types()  -- (before the first write: see _model.lua)
local existed = redis.call('HDEL', K_PROFILES, id)
redis.call('ZREM', K_RANKED, id)
local b = load_breaker(id)  -- nil for a corrupt breaker: it stays
if b then
  if b.state ~= 'closed' then
    if refresh(id, b, now) then save_breaker(id, b) end
  elseif (b.cooldown_until_ms or 0) <= now and next(counting_streak(b, now)) == nil
      and not string.find(b.window, '1', 1, true) then
    delete_breaker(id, true)
  end
  -- Removal ends the epoch, and the epoch field outlives the rest: a selection made before
  -- the removal never counts after the profile is added again (epochs never repeat).
  if existed == 1 then redis.call('HSET', K_BREAKERS, id .. ':epoch', int(b.epoch + 1)) end
end
if existed == 1 then emit('profile:removed', id, {}, now) end
return existed
