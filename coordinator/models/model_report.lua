-- model_report.lua: record the outcome of a call and, for a failover, pick the next profile in
-- the same round trip.
-- KEYS[1..5]  the static {models} keys (see _model.lua); KEYS[6] the session key (optional)
--   without a pick, only KEYS[1..3] (profiles, breakers, events: all that recording touches)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (see _model.lua)
-- ARGV[3] "<outcome>,<kind>,<cooldown ms>,<epoch>,<probe token>,<pick>,<profile id>" (one
--   argument: each argument costs the client time to encode), where outcome is success |
--   failure | release | unusable; kind is rate_limit | billing | auth | server | timeout |
--   unknown | caller ('' for a success); cooldown ms is '' for none (a Retry-After or a
--   rate-limit reset, honoured up to max_retry_after_ms); epoch is the selection's ('' for the
--   current one); the probe token is '' for none; pick is 1 to pick the next profile (a
--   failover), else 0
-- ARGV[4] error text (already redacted; optional, '' when absent)
-- ARGV[5] selection spec for the pick (optional; see select_profile in _model.lua)
-- Returns {"<status>,<breaker state>,<epoch>,<broken field>"} followed, for a pick, by the
--   selection reply's elements (as model_select; the reported profile is excluded)
--   status: recorded | stale | ignored | released | missing | corrupt (epoch -1 when unknown)
--   a pick emits profile:failover {from, to} once.
-- Redis TIME is only read when needed: a success or release in a closed state without a
-- cooldown does not need the clock (the hot path).
--!include _model.lua
--!include _model_record.lua

local outcome, kind, cooldown_text, epoch, token, pick, id = string.match(ARGV[MARG],
  '^([^,]*),([^,]*),([^,]*),([^,]*),([^,]*),([01]),(.+)$')
if not outcome then return redis.error_reply('model_report: malformed ARGV[3]') end
local pick_next = pick == '1'
local cooldown = tonumber(cooldown_text)
local exists = redis.call('HEXISTS', K_PROFILES, id) == 1
local raw = exists and redis.call('HGET', K_BREAKERS, id)
-- The hot path: a success on a breaker in its steady state changes nothing (read in place, see
-- steady_success in _model.lua), and returns here.
if raw and outcome == 'success' and token == '' and not cooldown and not pick_next then
  local steady = steady_success(id, raw, epoch)
  if steady then return {'recorded,closed,' .. steady .. ','} end
end

local message = ARGV[MARG + 1] or ''
local now = nil
if pick_next or cooldown or (outcome ~= 'success' and outcome ~= 'release') then now = now_ms() end

HOLD = pick_next  -- see emit in _model.lua

local head
if not exists then
  head = 'missing,,-1,'
else
  local b, bad = parse_breaker(raw, id)
  if not b then
    head = 'corrupt,,-1,' .. bad
  else
    if now == nil and b.state ~= 'closed' then now = now_ms() end
    local status, changed = record(id, b, now, outcome, kind, message, epoch, token, cooldown)
    if changed then save_breaker(id, b) end
    head = status .. ',' .. b.state .. ',' .. int(b.epoch) .. ','
  end
end

if not pick_next then return {head} end
-- The report's last event (if any) is still held for the failover; an event of the pick itself
-- (a breaker turning half-open) writes it first, so the order stays as it happened.
HOLD = false
local reply, to, resolved, reason = select_profile(now, ARGV[MARG + 2], KEYS[6], id)
local failover = nil
if to then failover = {from = id, to = to, model = resolved, kind = kind, reason = reason} end
if held and failover and held[1] == 'profile:failure' and held[2] == id then
  -- One entry for both: the failure, carrying the failover (delivered as two events).
  held[3].failover = failover
  failover = nil
end
if held then
  xadd(held)
  held = nil
end
if failover then emit('profile:failover', id, failover, now) end
return {head, reply[1], reply[2], reply[3], reply[4]}
