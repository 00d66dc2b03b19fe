-- _model.lua: model profiles and their circuit breakers (included with --!include _model.lua).
-- Model scripts receive the five static keys of the {models} hash tag as KEYS[1..5]:
--   1 profiles (HASH id -> definition JSON)   2 breakers (HASH id -> breaker state JSON)
--   3 ranked (ZSET id -> -priority, enabled profiles only)   4 meta (HASH probe_seq)
--   5 events (STREAM)                          6 a sticky session key (optional)
-- and the breaker configuration as ARGV[2], one comma-separated text (one argument, not twelve:
-- every argument costs the client time to encode), in this order:
--   failure_threshold, window_size, min_calls, failure_rate_threshold (0..1), failure_decay_ms,
--   reset_timeout_ms, max_open_ms, half_open_max_probes, probe_timeout_ms, success_threshold,
--   billing_cooldown_ms, max_retry_after_ms
-- Script-specific arguments start at ARGV[3] (MARG).
--
-- Breaker state (readable with HGET <ns>:{models}:breakers <id>):
--   state 'closed' | 'open' | 'half_open'; epoch (+1 at every state change: a report carries the
--   epoch of its selection and only counts in the epoch it was selected in); streak (timestamps
--   of the current run of consecutive failures); window ('0'/'1' per call, newest last);
--   opened_ms, open_ms, open_until_ms, reopens (re-opens without closing: the open period
--   doubles each time, up to max_open_ms); permits (probe token -> expiry ms);
--   probe_successes; cooldown_until_ms (Retry-After, rate-limit reset, billing);
--   failures_total, last_failure_ms, last_error, last_error_kind. Successes are not counted
--   one by one (a success in a steady closed state writes nothing: it is the hot path).
-- The functions that record outcomes are in _model_record.lua (only model_report needs them).

local K_PROFILES, K_BREAKERS, K_RANKED, K_META, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- The configuration is parsed on first use only: a selection of a closed breaker never needs it
-- (parsing twelve numbers costs more than the rest of such a selection).
local C = nil
local function conf()
  if C == nil then
    local v = {}
    for value in string.gmatch(ARGV[2], '[^,]+') do v[#v + 1] = tonumber(value) end
    C = {threshold = v[1], window = v[2], min_calls = v[3], rate = v[4], decay = v[5],
      reset = v[6], max_open = v[7], probes = v[8], probe_timeout = v[9], success = v[10],
      billing = v[11], max_retry = v[12]}
  end
  return C
end
local MARG = 3
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

local AUTH_KINDS = {api_key = true, env = true, oauth = true, pool = true, none = true}

-- A definition: returns (def, raw, nil), (nil, nil, 'missing') or (nil, raw, broken field).
local function load_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local d = decode(raw)
  if not d then return nil, raw, 'definition' end
  if type(d.priority) ~= 'number' or d.priority ~= d.priority then return nil, raw, 'priority' end
  if type(d.enabled) ~= 'boolean' then return nil, raw, 'enabled' end
  if type(d.auth) ~= 'table' or not AUTH_KINDS[d.auth.kind] then return nil, raw, 'auth' end
  if type(d.base_url) ~= 'string' then return nil, raw, 'base_url' end
  if type(d.provider) ~= 'string' then return nil, raw, 'provider' end
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
  'cooldown_until_ms', 'failures_total', 'last_failure_ms'
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
-- (a lower one, or one below an excluded profile), 'testing' (a half-open probe; the token is
-- its permit). broken lists
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
      if n < conf().probes then
        local seq = redis.call('HINCRBY', K_META, 'probe_seq', 1)
        local token = 'p' .. int(seq)
        b.permits[token] = now + conf().probe_timeout
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
      if excluded[id] then
        -- Not even decoded (a failover hop excludes the profile that just failed): an
        -- excluded profile ranked above the one chosen makes the choice a failover.
        if top == nil then top = id end
      else
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
          if not chosen then chosen = consider(id, def, raw, false) end
        end
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
