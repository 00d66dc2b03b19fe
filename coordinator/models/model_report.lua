-- model_report.lua: record the outcome of a call and, for a failover, pick the next profile in
-- the same round trip.
-- KEYS[1..5]  the {models} keys (see _model.lua); KEYS[6] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (see _model.lua)
-- ARGV[3] profile id
-- ARGV[4] outcome: success | failure | release | unusable
-- ARGV[5] failure kind: rate_limit | billing | auth | server | timeout | unknown | caller
--   ('' for none)
-- ARGV[6] cooldown ms ('' for none: a Retry-After or a rate-limit reset, honoured up to
--   max_retry_after_ms)
-- ARGV[7] the selection's epoch ('' for the current one)
-- ARGV[8] probe permit token ('' for none)
-- ARGV[9] error text (already redacted; '' for none)
-- ARGV[10] 1 to pick the next profile (a failover), else 0
-- ARGV[11..] for a pick: the selection arguments, as ARGV[3..] of model_select (the reported
--   profile is excluded by itself)
-- Returns {status, breaker state ('' if unknown), epoch (-1 if unknown), broken field ('' if
--   none), selection}: status recorded | stale | ignored | released | missing | corrupt;
--   selection is the model_select reply for a pick, else an empty array.
--   A pick that finds a profile emits profile:failover {from, to, model, kind, reason}.
--!include _model.lua
--!include _model_record.lua
--!include _model_select.lua

local id, outcome, kind = ARGV[MARG], ARGV[MARG + 1], ARGV[MARG + 2]
local cooldown = tonumber(ARGV[MARG + 3])
local epoch, token, message = ARGV[MARG + 4], ARGV[MARG + 5], ARGV[MARG + 6]
local pick_next = ARGV[MARG + 7] == '1'
local now = now_ms()

local head
local steady = outcome == 'success' and steady_success(id, epoch, token, cooldown)
if redis.call('HEXISTS', K_PROFILES, id) == 0 then
  head = {'missing', '', -1, ''}
elseif steady then
  head = {'recorded', 'closed', steady, ''}
else
  local b, bad = load_breaker(id)
  if not b then
    head = {'corrupt', '', -1, bad}
  else
    local status, changed = record(id, b, now, outcome, kind, message, epoch, token, cooldown)
    if changed then save_breaker(id, b) end
    head = {status, b.state, b.epoch, ''}
  end
end

local selection = {}
if pick_next then
  local model, session_ttl, excluded, tried = selection_args(MARG + 8)
  local reply, to, resolved, reason = select_profile(now, model, session_ttl, excluded, tried,
    KEYS[6], id)
  if to then
    emit('profile:failover', id,
      {from = id, to = to, model = resolved, kind = kind, reason = reason}, now)
  end
  selection = reply
end
return {head[1], head[2], head[3], head[4], selection}
