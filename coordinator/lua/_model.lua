-- _model.lua: model profiles and their circuit breakers (included with --!include _model.lua).
-- Model scripts receive the five static keys of the {models} hash tag as KEYS[1..5]:
--   1 profiles (HASH id -> definition JSON)   2 breakers (HASH id -> breaker state JSON)
--   3 ranked (ZSET id -> -priority, enabled profiles only)   4 meta (HASH probe_seq)
--   5 events (STREAM)                          6 a sticky session key (optional)
-- and the breaker configuration as ARGV[2..13] (every replica passes its own copy):
--   2 failure_threshold  3 window_size  4 min_calls  5 failure_rate_threshold (0..1)
--   6 failure_decay_ms   7 reset_timeout_ms  8 max_open_ms  9 half_open_max_probes
--   10 probe_timeout_ms  11 success_threshold  12 billing_cooldown_ms  13 max_retry_after_ms
-- Script-specific arguments start at ARGV[14] (MARG).
--
-- Breaker state (readable with HGET <ns>:{models}:breakers <id>):
--   state 'closed' | 'open' | 'half_open'; epoch (+1 at every state change: a report carries the
--   epoch of its selection and only counts in the epoch it was selected in); streak (timestamps
--   of the current run of consecutive failures); window ('0'/'1' per call, newest last);
--   opened_ms, open_ms, open_until_ms, reopens (re-opens without closing: the open period
--   doubles each time, up to max_open_ms); permits (probe token -> expiry ms);
--   probe_successes; cooldown_until_ms (Retry-After, rate-limit reset, billing); counters.

local K_PROFILES, K_BREAKERS, K_RANKED, K_META, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local C = {
  threshold = tonumber(ARGV[2]), window = tonumber(ARGV[3]), min_calls = tonumber(ARGV[4]),
  rate = tonumber(ARGV[5]), decay = tonumber(ARGV[6]), reset = tonumber(ARGV[7]),
  max_open = tonumber(ARGV[8]), probes = tonumber(ARGV[9]), probe_timeout = tonumber(ARGV[10]),
  success = tonumber(ARGV[11]), billing = tonumber(ARGV[12]), max_retry = tonumber(ARGV[13]),
}
local MARG = 14
local PAGE = 16

local function emit(etype, id, data, now)
  emit_to(K_EVENTS, etype, id, data, now)
end

local function min_of(a, b)
  if a == nil then return b end
  if b == nil then return a end
  if b < a then return b end
  return a
end

local function is_number(v)
  return type(v) == 'number' and v == v and v >= 0 and v < 1e300
end

-- A definition: returns (def, raw, nil), (nil, nil, 'missing') or (nil, raw, broken field).
local function load_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local d = decode(raw)
  if not d then return nil, raw, 'definition' end
  if type(d.priority) ~= 'number' or d.priority ~= d.priority then return nil, raw, 'priority' end
  if type(d.enabled) ~= 'boolean' then return nil, raw, 'enabled' end
  if type(d.auth) ~= 'table' then return nil, raw, 'auth' end
  if type(d.models) ~= 'table' then return nil, raw, 'models' end
  for _, m in ipairs(d.models) do
    if type(m) ~= 'string' then return nil, raw, 'models' end
  end
  if d.default_model ~= nil and type(d.default_model) ~= 'string' then
    return nil, raw, 'default_model'
  end
  return d, raw, nil
end

local BREAKER_NUMBERS = {
  'epoch', 'opened_ms', 'open_ms', 'open_until_ms', 'reopens', 'probe_successes',
  'cooldown_until_ms', 'failures_total', 'successes_total', 'last_failure_ms', 'last_success_ms'
}

-- A breaker: returns (state, nil) or (nil, broken field). No record yet: a closed breaker.
local function load_breaker(id)
  local raw = redis.call('HGET', K_BREAKERS, id)
  if not raw then return {state = 'closed', epoch = 0, window = '', streak = {}, permits = {}}, nil end
  local b = decode(raw)
  if not b then return nil, 'breaker' end
  if b.state ~= 'closed' and b.state ~= 'open' and b.state ~= 'half_open' then
    return nil, 'breaker.state'
  end
  for _, f in ipairs(BREAKER_NUMBERS) do
    if b[f] ~= nil and not is_number(b[f]) then return nil, 'breaker.' .. f end
  end
  b.epoch = b.epoch or 0
  if b.window == nil then b.window = '' end
  if type(b.window) ~= 'string' or string.find(b.window, '[^01]') then return nil, 'breaker.window' end
  if b.streak == nil then b.streak = {} end
  if type(b.streak) ~= 'table' then return nil, 'breaker.streak' end
  for _, t in pairs(b.streak) do
    if not is_number(t) then return nil, 'breaker.streak' end
  end
  if b.permits == nil then b.permits = {} end
  if type(b.permits) ~= 'table' then return nil, 'breaker.permits' end
  for token, t in pairs(b.permits) do
    if type(token) ~= 'string' or not is_number(t) then return nil, 'breaker.permits' end
  end
  if b.state == 'open' and b.open_until_ms == nil then return nil, 'breaker.open_until_ms' end
  return b, nil
end

local function save_breaker(id, b)
  redis.call('HSET', K_BREAKERS, id, cjson.encode(b))
end

-- Drop expired probe permits; returns (count left, soonest expiry or nil, whether any dropped).
local function live_permits(b, now)
  local n, soonest, dropped = 0, nil, false
  for token, t in pairs(b.permits) do
    if t <= now then
      b.permits[token] = nil
      dropped = true
    else
      n = n + 1
      soonest = min_of(soonest, t)
    end
  end
  return n, soonest, dropped
end

-- Lazy transition open -> half-open on Redis time (announced once: this script persists it).
-- Returns whether the breaker changed and must be saved.
local function refresh(id, b, now)
  if b.state == 'open' and now >= b.open_until_ms then
    b.state = 'half_open'
    b.epoch = b.epoch + 1
    b.permits = {}
    b.probe_successes = 0
    b.half_open_ms = now
    emit('profile:circuit-half-open', id, {epoch = b.epoch, open_ms = b.open_ms or 0}, now)
    return true
  end
  if b.state == 'half_open' then
    local _, _, dropped = live_permits(b, now)
    return dropped
  end
  return false
end

local function open_breaker(id, b, now, reason, kind)
  local reopens = 0
  if b.state == 'half_open' then reopens = math.min((b.reopens or 0) + 1, 40) end
  local period = math.min(C.max_open, C.reset * (2 ^ reopens))
  period = math.floor(period)
  b.state = 'open'
  b.epoch = b.epoch + 1
  b.opened_ms = now
  b.open_ms = period
  b.open_until_ms = now + period
  b.reopens = reopens
  b.permits = {}
  b.probe_successes = 0
  b.streak = {}
  b.window = ''
  emit('profile:circuit-opened', id, {
    reason = reason, kind = kind, epoch = b.epoch, open_ms = period,
    until_ms = now + period, reopens = reopens
  }, now)
end

local function close_breaker(id, b, now)
  local since = b.opened_ms or now
  b.state = 'closed'
  b.epoch = b.epoch + 1
  b.reopens = 0
  b.permits = {}
  b.probe_successes = 0
  b.streak = {}
  b.window = ''
  b.opened_ms = nil
  b.open_until_ms = nil
  b.half_open_ms = nil
  emit('profile:circuit-closed', id, {epoch = b.epoch, after_ms = now - since}, now)
end

-- Record the outcome of one call. outcome: 'success' | 'failure' | 'release' (the call did not
-- test the provider: free its probe permit, change nothing else) | 'unusable' (the credential
-- could not be obtained: free the permit, cool down for the given time, no breaker count). epoch '' means "current"
-- (a report without a selection); token is the probe permit ('' for none).
-- Returns the status: 'recorded' (counted by the breaker) | 'stale' (selected in another epoch,
-- or an expired/unknown permit: only the statistics and cooldowns are updated) | 'ignored'
-- (a caller error) | 'released'.
local function record(id, b, now, outcome, kind, message, epoch, token, retry_ms)
  refresh(id, b, now)
  local caller = outcome == 'failure' and kind == 'caller'
  if outcome == 'release' or outcome == 'unusable' or caller then
    if token ~= '' and b.permits[token] then b.permits[token] = nil end
    if caller then return 'ignored' end
  end

  -- Cooldown: a Retry-After or an exhausted quota (also on a success), a billing failure, a
  -- credential that is not usable now.
  local cooldown = 0
  if retry_ms and retry_ms > 0 then cooldown = math.min(retry_ms, C.max_retry) end
  if outcome == 'failure' and kind == 'billing' then cooldown = math.max(cooldown, C.billing) end
  local cooldown_set = false
  if outcome ~= 'release' and cooldown > 0 and now + cooldown > (b.cooldown_until_ms or 0) then
    b.cooldown_until_ms = math.floor(now + cooldown)
    cooldown_set = true
  end
  if outcome == 'release' or outcome == 'unusable' then
    if cooldown_set then
      emit('profile:cooldown', id, {kind = kind, outcome = outcome,
        until_ms = b.cooldown_until_ms, duration_ms = b.cooldown_until_ms - now}, now)
    end
    return 'released'
  end

  -- Does this report count for the breaker?
  local counted = false
  if b.state == 'half_open' then
    counted = token ~= '' and b.permits[token] ~= nil and b.permits[token] > now
  elseif b.state == 'closed' then
    counted = token == '' and (epoch == '' or tonumber(epoch) == b.epoch)
  end

  if outcome == 'success' then
    b.successes_total = (b.successes_total or 0) + 1
    b.last_success_ms = now
  else
    b.failures_total = (b.failures_total or 0) + 1
    b.last_failure_ms = now
    b.last_error = message
    b.last_error_kind = kind
    local data = {kind = kind, error = message, counted = counted, state = b.state,
      epoch = b.epoch}
    if cooldown_set then data.cooldown_until_ms = b.cooldown_until_ms end
    emit('profile:failure', id, data, now)
  end
  if cooldown_set then
    emit('profile:cooldown', id, {kind = kind, outcome = outcome,
      until_ms = b.cooldown_until_ms, duration_ms = b.cooldown_until_ms - now}, now)
  end
  if not counted then return 'stale' end

  if b.state == 'half_open' then
    b.permits[token] = nil
    if outcome == 'success' then
      b.probe_successes = (b.probe_successes or 0) + 1
      if b.probe_successes >= C.success then close_breaker(id, b, now) end
    else
      open_breaker(id, b, now, 'probe-failed', kind)
    end
    return 'recorded'
  end

  -- closed
  if outcome == 'success' then
    b.streak = {}
    b.window = string.sub(b.window .. '0', -C.window)
    return 'recorded'
  end
  local streak = {}
  for _, t in ipairs(b.streak) do
    if now - t <= C.decay then streak[#streak + 1] = t end
  end
  streak[#streak + 1] = now
  b.streak = streak
  b.window = string.sub(b.window .. '1', -C.window)
  if #streak >= C.threshold then
    open_breaker(id, b, now, 'consecutive-failures', kind)
  elseif #b.window >= C.min_calls then
    local _, fails = string.gsub(b.window, '1', '')
    if fails / #b.window >= C.rate then open_breaker(id, b, now, 'failure-rate', kind) end
  end
  return 'recorded'
end

-- Whether a profile serves a model: exact names, 'prefix*' wildcards, '*' for all.
local function serves(def, model)
  if model == '' then return true end
  for _, p in ipairs(def.models) do
    if p == '*' or p == model then return true end
    local n = #p
    if n > 1 and string.sub(p, n) == '*' and string.sub(model, 1, n - 1) == string.sub(p, 1, n - 1) then
      return true
    end
  end
  return false
end

-- The model to call: the preferred one, else the default, else the first listed exact name.
local function resolve_model(def, model)
  if model ~= '' then return model end
  if type(def.default_model) == 'string' and def.default_model ~= '' then return def.default_model end
  for _, p in ipairs(def.models) do
    if not string.find(p, '*', 1, true) then return p end
  end
  return ''
end

-- Choose a profile. Returns the reply for Python:
--   {1, id, definition JSON, model, reason, epoch, probe token, now, sticky 0|1, broken}
--   {0, soonest recovery in ms (-1 if nothing recovers by itself), now, broken}
-- reason: 'primary' (the highest-priority enabled profile serving the model), 'failover'
-- (a lower one), 'testing' (a half-open probe; the token is its permit). broken lists
-- 'id:field' of profiles skipped because a stored value is corrupt.
-- Cost: O(log n) + the profiles ranked above the one chosen (a handful: one per provider).
local function select_profile(now, model, excluded, session_key, session_ttl)
  local broken = {}
  local soonest = nil
  local top = nil
  local chosen = nil

  local function consider(id, def, raw, sticky_only)
    local b, bad = load_breaker(id)
    if not b then
      broken[#broken + 1] = id .. ':' .. bad
      return nil
    end
    local changed = refresh(id, b, now)
    local pick = nil
    if (b.cooldown_until_ms or 0) > now then
      soonest = min_of(soonest, b.cooldown_until_ms)
    elseif b.state == 'closed' then
      pick = {id = id, raw = raw, def = def, epoch = b.epoch, token = ''}
    elseif sticky_only then
      pick = nil
    elseif b.state == 'open' then
      soonest = min_of(soonest, b.open_until_ms)
    else
      local n, first = live_permits(b, now)
      if n < C.probes then
        local seq = redis.call('HINCRBY', K_META, 'probe_seq', 1)
        local token = 'p' .. int(seq)
        b.permits[token] = now + C.probe_timeout
        changed = true
        pick = {id = id, raw = raw, def = def, epoch = b.epoch, token = token}
      else
        soonest = min_of(soonest, first)
      end
    end
    if changed then save_breaker(id, b) end
    return pick
  end

  -- Sticky session: keep the bound profile while it is enabled, closed and not cooling down.
  local sticky = false
  local bound = nil
  if session_key then
    bound = redis.call('GET', session_key)
    if bound and not excluded[bound] then
      local def, raw = load_def(bound)
      if def and def.enabled and serves(def, model) then
        chosen = consider(bound, def, raw, true)
        if chosen then sticky = true end
      end
    end
  end

  local offset = 0
  while not (chosen and top) do
    local page = redis.call('ZRANGE', K_RANKED, offset, offset + PAGE - 1)
    if #page == 0 then break end
    for _, id in ipairs(page) do
      local def, raw, bad = load_def(id)
      if not def then
        if bad == 'missing' then
          redis.call('ZREM', K_RANKED, id)
        else
          broken[#broken + 1] = id .. ':' .. bad
        end
      elseif not def.enabled then
        redis.call('ZREM', K_RANKED, id)
      elseif serves(def, model) then
        if top == nil then top = id end
        if not chosen and not excluded[id] then chosen = consider(id, def, raw, false) end
      end
      if chosen and top then break end
    end
    offset = offset + PAGE
  end

  if not chosen then
    local wait = -1
    if soonest then wait = math.max(0, soonest - now) end
    return {0, wait, now, broken}
  end
  local reason = 'failover'
  if chosen.token ~= '' then
    reason = 'testing'
  elseif chosen.id == top then
    reason = 'primary'
  end
  if session_key and session_ttl > 0 and chosen.token == '' then
    if bound == chosen.id then
      redis.call('PEXPIRE', session_key, session_ttl)
    else
      redis.call('SET', session_key, chosen.id, 'PX', session_ttl)
    end
  end
  return {1, chosen.id, chosen.raw, resolve_model(chosen.def, model), reason, chosen.epoch,
    chosen.token, now, sticky and 1 or 0, broken}
end

-- Parse the selection arguments that start at ARGV[i]: model, session TTL ms, count, ids...
local function selection_args(i)
  local model = ARGV[i]
  local ttl = tonumber(ARGV[i + 1])
  local excluded = {}
  for j = 1, tonumber(ARGV[i + 2]) do excluded[ARGV[i + 2 + j]] = true end
  return model, ttl, excluded
end
