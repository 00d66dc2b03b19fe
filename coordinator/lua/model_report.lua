-- model_report.lua: record the outcome of a call and, for a failover, pick the next profile in
-- the same round trip.
-- KEYS[1..5]  the static {models} keys (see _model.lua); KEYS[6] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (see _model.lua)
-- ARGV[3] profile id   ARGV[4] outcome: success | failure | release | unusable
-- ARGV[5] kind (rate_limit | billing | auth | server | timeout | unknown | caller; '' for a
--   success)   ARGV[6] error text (already redacted)   ARGV[7] cooldown ms ('' for none:
--   a Retry-After or a rate-limit reset, honoured up to max_retry_after_ms)
-- ARGV[8] epoch of the selection ('' for the current one)   ARGV[9] probe token ('' for none)
-- ARGV[10] 1 to pick the next profile (failover), else 0
-- ARGV[11] model   ARGV[12] session TTL ms   ARGV[13] count of excluded ids   ARGV[14..] ids
-- Returns {{status, breaker state, epoch, broken field}, selection reply or 0}
--   status: recorded | stale | ignored | released | missing | corrupt
--   selection reply: as model_select (the reported profile is excluded); a pick emits
--   profile:failover {from, to} once.
--!include _model.lua
--!include _model_record.lua

local id, outcome, kind, message = ARGV[MARG], ARGV[MARG + 1], ARGV[MARG + 2], ARGV[MARG + 3]
local cooldown = tonumber(ARGV[MARG + 4])
local epoch, token = ARGV[MARG + 5], ARGV[MARG + 6]
local pick_next = ARGV[MARG + 7] == '1'
local now = now_ms()

local result
if redis.call('HEXISTS', K_PROFILES, id) == 0 then
  result = {'missing', '', -1, ''}
else
  local b, bad = load_breaker(id)
  if not b then
    result = {'corrupt', '', -1, bad}
  else
    local status, changed = record(id, b, now, outcome, kind, message, epoch, token, cooldown)
    if changed then save_breaker(id, b) end
    result = {status, b.state, b.epoch, ''}
  end
end

if not pick_next then return {result, 0} end
local model, ttl, excluded = selection_args(MARG + 8)
excluded[id] = true
local reply = select_profile(now, model, excluded, KEYS[6], ttl)
if reply[1] == 1 then
  emit('profile:failover', id, {from = id, to = reply[2], model = reply[4], kind = kind,
    reason = reply[5]}, now)
end
return {result, reply}
