-- model_reset.lua: an operator closes a profile's breaker and ends its cooldown now.
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration   ARGV[3] profile id
-- ARGV[4] 'close': keep the failure counts by kind; else (a reset) they are deleted too
-- Returns {'missing'} | {previous state ('corrupt' if the record was broken)}
-- A corrupt breaker is replaced by a fresh closed one (the repair for a hand edit; a reset
-- repairs a broken failure count too). failures_total and the last error are kept.
--!include _model.lua

local id, keep_counts = ARGV[MARG], ARGV[MARG + 1] == 'close'
local now = now_ms()
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
check_types()  -- (before the first write: see _model.lua)
local b = load_breaker(id)
local previous = 'corrupt'
-- (an epoch must never repeat: of a corrupt breaker, its epoch field if that one is sound)
local epoch = count(redis.call('HGET', K_BREAKERS, id .. ':epoch')) or 0
if b then
  previous = b.state
  epoch = b.epoch
end
local fresh = {state = 'closed', epoch = epoch + 1, window = '', streak = {}, permits = {}}
if b then
  fresh.failures_total = b.failures_total
  fresh.last_error = b.last_error
  fresh.last_error_kind = b.last_error_kind
end
delete_breaker(id, not keep_counts)  -- (every field, a broken one too)
save_breaker(id, fresh)
if previous ~= 'closed' then
  local reason = 'reset'
  if keep_counts then reason = 'forced' end
  emit('profile:circuit-closed', id, {epoch = fresh.epoch, reason = reason, from = previous}, now)
end
return {previous}
