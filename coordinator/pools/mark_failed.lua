-- mark_failed.lua: record a failure and, unless it is the caller's fault, cool the profile down.
-- KEYS[1..5]  the first five static pool keys (see _pool.lua: profiles to events)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] kind: rate_limit | billing | auth |
--   server | timeout | unknown | caller   ARGV[4] error text (already redacted)
-- ARGV[5] the policy of this kind's cooldown class, comma-separated (one argument: this is a
--   hot path): base ms, multiplier, cap ms, failure window ms, longest honoured retry-after ms
--   (the caller sends the billing schedule for billing failures, the ordinary one otherwise)
-- ARGV[6] retry-after ms (optional, '' for none)  ARGV[7] model (optional, '' for none)
--   (optional arguments are left out when empty: each one costs the client and Redis time)
-- Returns {'missing'} | {'ignored'}
--      | {'cooling', until ms, duration ms, failure count, scope ('profile' or 'model'),
--         repaired field or ''}
-- A state record edited into garbage is replaced by a fresh one (its field is returned and
-- put in the event), so that a broken record can never stop a failing profile cooling down.
-- Events: one stream entry, profile:failed; when the failure set or extended a deadline its
-- data also carries until_ms and duration_ms, and readers deliver it as profile:failed then
-- profile:cooldown (one XADD on the hot path, not two). A report that leaves the running
-- deadline as it was is a profile:failed alone.
-- Rules: cooldown = min(cap, base * multiplier^(n-1)) with n the failure count of its kind
-- (billing has its own counter); counts reset after a failure-free window; a retry-after can
-- only lengthen it; a new failure never moves an existing deadline earlier; a report that
-- arrives while a cooldown of the same class runs lengthens it at most, without escalating.
-- With a model, a rate limit cools only that (profile, model) pair; every other kind benches
-- the whole profile.
--!include _pool.lua

local id, kind, message = ARGV[2], ARGV[3], ARGV[4]
local retry_after = tonumber(ARGV[6])
local model = ARGV[7] or ''
-- One match, not a gmatch loop: this is the hot path.
local base, mult, cap, window, max_retry_after =
  string.match(ARGV[5], '^([^,]+),([^,]+),([^,]+),([^,]+),([^,]+)$')
base, mult, cap = tonumber(base), tonumber(mult), tonumber(cap)
window, max_retry_after = tonumber(window), tonumber(max_retry_after)

-- No sweep here: recovering other profiles is left to the next pick (recovery is lazy anyway),
-- which keeps this hot path a few commands shorter. This profile's own cooldown, if it ended
-- unobserved, is announced as recovered below, before the new failure, exactly once.
local now = now_ms()

-- A state record exists only for a profile that exists (removal deletes both at once), so the
-- existence check costs a second read only for a profile that never failed.
local raw_state = redis.call('HGET', K_STATE, id)
if not raw_state and redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
if kind == 'caller' then return {'ignored'} end

local state, broken = parse_state(raw_state, id)
if not state then state = {} end

local count
local billing = (kind == 'billing')

local pair_scope = (model ~= '' and kind == 'rate_limit')
local pair = id .. '|' .. model
local existing
if pair_scope then
  existing = tonumber(redis.call('ZSCORE', K_COOLING, pair) or '0')
else
  existing = tonumber(redis.call('ZSCORE', K_COOLING, id) or '0')
end
if existing > 0 and existing <= now then
  emit('profile:recovered', id, pair_scope and {model = model} or {}, now)
end
-- A report for a cooldown of the same class that is still running (a call that was in flight
-- when another replica's failure started it) may lengthen it but does not escalate it.
local active_kind = state.cooldown_kind
local same_class = pair_scope or ((active_kind == 'billing') == billing)
local duplicate = existing > now and same_class

local pair_state = nil
if pair_scope then
  pair_state = decode(redis.call('HGET', K_STATE, pair)) or {}
  local last = tonumber(pair_state.last_failure_ms) or 0
  if now - last > window then pair_state.failures = 0 end
  count = tonumber(pair_state.failures) or 0
  if not duplicate or count == 0 then count = count + 1 end
  pair_state.failures = count
  pair_state.last_failure_ms = now
elseif billing then
  if now - (state.last_billing_ms or 0) > window then state.billing_failures = 0 end
  count = state.billing_failures or 0
  if not duplicate or count == 0 then count = count + 1 end
  state.billing_failures = count
  state.last_billing_ms = now
else
  if now - (state.last_failure_ms or 0) > window then state.failures = 0 end
  count = state.failures or 0
  if not duplicate or count == 0 then count = count + 1 end
  state.failures = count
  state.last_failure_ms = now
end

local duration = math.min(cap, base * (mult ^ (count - 1)))
-- A duplicate report keeps the running deadline; only a provider's retry-after may extend it.
if duplicate then duration = 0 end
if retry_after and retry_after > duration then
  duration = math.min(retry_after, math.max(max_retry_after, duration))
end
duration = math.floor(duration)
local until_ms = now + duration

state.failures_total = (state.failures_total or 0) + 1
state.last_error = message
state.last_error_kind = kind
state.last_error_ms = now

local event = {kind = kind, error = message, failures = count}
if pair_scope then event.model = model end
if broken then event.repaired = broken end

if pair_scope then
  local kept = existing >= until_ms
  if kept then until_ms = existing end
  redis.call('ZADD', K_COOLING, until_ms, pair)
  redis.call('HSET', K_STATE, pair, cjson.encode(pair_state))
  save_state(id, state)
  event.scope = 'model'
  if not kept then event.until_ms, event.duration_ms = until_ms, until_ms - now end
  emit('profile:failed', id, event, now)
  return {'cooling', until_ms, until_ms - now, count, 'model', broken or ''}
end

local kept = existing >= until_ms
if kept then until_ms = existing end
if existing == 0 then redis.call('ZREM', K_READY, id) end  -- ranked is repaired lazily
redis.call('ZADD', K_COOLING, until_ms, id)
state.cooldown_until_ms = until_ms
-- The kind shown is the one whose deadline is in force.
if not kept or not state.cooldown_kind then state.cooldown_kind = kind end
save_state(id, state)
event.scope = 'profile'
if not kept then event.until_ms, event.duration_ms = until_ms, until_ms - now end
emit('profile:failed', id, event, now)
return {'cooling', until_ms, until_ms - now, count, 'profile', broken or ''}
