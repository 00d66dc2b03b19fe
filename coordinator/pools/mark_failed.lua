-- mark_failed.lua: record a failure and, unless it is the caller's fault, cool the profile down.
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] kind: rate_limit | billing | auth |
--   server | timeout | unknown | caller   ARGV[4] error text (already redacted)
-- ARGV[5..9] the schedule of this kind's cooldown class (billing or ordinary): base ms,
--   multiplier, cap ms, then the failure window ms and the longest honoured retry-after ms
-- ARGV[10] retry-after ms ('' for none)  ARGV[11] model ('' for none)
-- Returns {'missing'} | {'ignored'}
--      | {'cooling', until ms, duration ms, failure count, scope ('profile' or 'model'),
--         repaired field or ''}   (until and duration -1: benched until cleared, see below)
-- A counter or time edited into garbage counts as absent and is overwritten (the first one's
-- name is returned and put in the event), so that a broken field can never stop a failing
-- profile cooling down.
-- Events: profile:failed; then, when the failure set or extended a deadline, profile:cooldown
-- (a report that leaves the running deadline as it was is a profile:failed alone).
-- Rules: cooldown = min(cap, base * multiplier^(n-1)) with n the failure count of its kind
-- (billing has its own counter); counts reset after a failure-free window; a retry-after can
-- only lengthen it; a new failure never moves an existing deadline earlier; a report that
-- arrives while a cooldown of the same class runs lengthens it at most, without escalating.
-- With a model, a rate limit cools only that (profile, model) pair; every other kind benches
-- the whole profile. A cooldown an operator set to +inf lasts until cleared: the failure is
-- counted and recorded, the deadline stays.
--!include _pool.lua

local id, kind, message = ARGV[2], ARGV[3], ARGV[4]
local base, mult, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local window, max_retry_after = tonumber(ARGV[8]), tonumber(ARGV[9])
local retry_after = tonumber(ARGV[10])
local model = ARGV[11]

if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
if kind == 'caller' then return {'ignored'} end
-- No sweep here: recovering other profiles is left to the next pick (recovery is lazy anyway).
-- This profile's own cooldown, if it ended unobserved, is announced as recovered below,
-- before the new failure, exactly once.
local now = now_ms()

local pair_scope = (model ~= '' and kind == 'rate_limit')
local billing = (kind == 'billing')
local member = pair_scope and (id .. '|' .. model) or id
local cooling_until = score_of(redis.call('ZSCORE', K_COOLING, member))
local existing = cooling_until or 0

-- The profile's fields, named one by one (building the lists in a loop cost this report a
-- quarter of its Redis time). A counter or time that is not a non-negative number reads as
-- zero; all five are written back below, so a broken one is repaired.
local f = id .. ':'
local stored = redis.call('HMGET', K_STATE, f .. 'failures', f .. 'billing_failures',
  f .. 'last_failure_ms', f .. 'last_billing_ms', f .. 'failures_total', f .. 'cooldown_kind')
local state, repaired = {}, nil
for i, name in ipairs({'failures', 'billing_failures', 'last_failure_ms', 'last_billing_ms',
    'failures_total'}) do
  local n, ok = read_number(stored[i])
  state[name] = n or 0
  if not ok and not repaired then repaired = name end
end
local active_kind = stored[6] or nil
-- A report for a cooldown of the same class that is still running (a call that was in flight
-- when another replica's failure started it) may lengthen it but does not escalate it.
local same_class = pair_scope or ((active_kind == 'billing') == billing)
local duplicate = existing > now and same_class

-- The failure count after this one, of a counter last counted at last_ms.
local function counted(count, last_ms)
  if now - last_ms > window then count = 0 end
  if not duplicate or count == 0 then count = count + 1 end
  return count
end
local count
local p = member .. ':'
if pair_scope then
  local pair = redis.call('HMGET', K_STATE, p .. 'failures', p .. 'last_failure_ms')
  count = counted(read_number(pair[1]) or 0, read_number(pair[2]) or 0)
elseif billing then
  count = counted(state.billing_failures, state.last_billing_ms)
  state.billing_failures, state.last_billing_ms = count, now
else
  count = counted(state.failures, state.last_failure_ms)
  state.failures, state.last_failure_ms = count, now
end

local duration = math.min(cap, base * (mult ^ (count - 1)))
-- A duplicate report keeps the running deadline; only a provider's retry-after may extend it.
if duplicate then duration = 0 end
if retry_after and retry_after > duration then
  duration = math.min(retry_after, math.max(max_retry_after, duration))
end
local until_ms = now + math.floor(duration)
local kept = existing >= until_ms
if kept then until_ms = existing end
local until_cleared = (until_ms == math.huge)

-- Writes start here: first make sure the keys written without being read (ready, events) are
-- not of another type (Redis does not undo earlier writes when a later one fails).
check_types(4, 5)
if cooling_until and existing <= now then  -- (-inf too: an operator's "ended long ago")
  emit('profile:recovered', id, pair_scope and {model = model} or {}, now)
end
if pair_scope then
  redis.call('HSET', K_STATE, p .. 'failures', int(count), p .. 'last_failure_ms', int(now))
end
redis.call('HSET', K_STATE, f .. 'failures', int(state.failures),
  f .. 'billing_failures', int(state.billing_failures),
  f .. 'last_failure_ms', int(state.last_failure_ms),
  f .. 'last_billing_ms', int(state.last_billing_ms),
  f .. 'failures_total', int(state.failures_total + 1),
  f .. 'last_error', message, f .. 'last_error_kind', kind, f .. 'last_error_ms', int(now))
local scope = 'model'
if not pair_scope then
  scope = 'profile'
  redis.call('ZREM', K_READY, id)  -- (the ranked index is repaired lazily)
  -- The kind shown is the one whose deadline is in force.
  local shown = (kept and active_kind) or kind
  if until_cleared then
    redis.call('HSET', K_STATE, f .. 'cooldown_kind', shown)
  else
    redis.call('HSET', K_STATE, f .. 'cooldown_kind', shown, f .. 'cooldown_until_ms', int(until_ms))
  end
end
if not kept then redis.call('ZADD', K_COOLING, until_ms, member) end

local failed = {kind = kind, error = message, failures = count, scope = scope, repaired = repaired}
if pair_scope then failed.model = model end
emit('profile:failed', id, failed, now)
if not kept then
  emit('profile:cooldown', id, {kind = kind, model = failed.model, scope = scope,
    until_ms = until_ms, duration_ms = until_ms - now}, now)
end
if until_cleared then return {'cooling', -1, -1, count, scope, repaired or ''} end
return {'cooling', until_ms, until_ms - now, count, scope, repaired or ''}
