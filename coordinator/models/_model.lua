-- _model.lua: model profiles and their circuit breakers (included with --!include _model.lua).
-- Model scripts receive the five keys of the {models} hash tag as KEYS[1..5]:
--   1 profiles (HASH id -> definition JSON)   2 breakers (HASH '<id>:<field>' -> value)
--   3 events (STREAM)   4 ranked (ZSET id -> -priority, enabled profiles only)
--   5 meta (HASH probe_seq)                    6 a sticky session key (optional)
-- ARGV[1] is the clock offset (see _lib.lua) and ARGV[2] the breaker configuration, one JSON
-- object: {"failure_threshold":3,"window_size":20,"min_calls":10,
--   "failure_rate_threshold":0.5,"failure_decay_ms":..,"reset_timeout_ms":..,"max_open_ms":..,
--   "half_open_max_probes":1,"probe_timeout_ms":..,"success_threshold":1,
--   "billing_cooldown_ms":..,"max_retry_after_ms":..}
-- Script-specific arguments start at ARGV[3] (MARG).
--
-- Breaker state: flat fields of the breakers hash, one per value, so that an operator reads a
-- breaker with HGETALL and a script reads it with one HMGET, without decoding text. Field
-- '<id>:<name>' (a name never holds ':', an id never holds ' ' or '='); an absent field is the
-- default in brackets:
--   state            'closed' | 'open' | 'half_open' [closed]
--   epoch            +1 at every state change [0]: a report carries the epoch of its selection
--                    and only counts in the epoch it was selected in
--   window           '0'/'1' per call, newest last ['']
--   streak           the current run of consecutive failures, ms timestamps separated by
--                    spaces ['']
--   permits          half-open probe permits, '<token>=<expiry ms>' separated by spaces ['']
--   opened_ms, open_ms, open_until_ms (required when open), reopens (re-opens without closing:
--   the open period doubles each time, up to max_open_ms), half_open_ms, probe_successes,
--   cooldown_until_ms (Retry-After, rate-limit reset, billing), failures_total,
--   last_failure_ms, last_error, last_error_kind
--   failures_<kind> (one per failure kind of KINDS: failures of that kind since the last
--     reset, HINCRBY on each reported failure): read by the status only, never by a
--     selection or a success report; a broken one is named by the status and skipped by the
--     count, and stops nothing else
-- A value edited into garbage makes the breaker unreadable (that profile only): reports say
-- 'corrupt', the status names the field ('breaker.<name>'), and model_reset repairs it.
-- Selection skips the profile when the broken field is one it reads: state, epoch and
-- cooldown_until_ms of a closed breaker (see closed_breaker), any field of one that is not.
-- Successes are not counted one by one (a success in a steady closed state writes nothing).
-- Recording outcomes is in _model_record.lua (only model_report needs it).

local K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META
local CONF  -- the breaker configuration of this call, once conf() decoded it
local CHECKED  -- whether check_types() ran in this call
BEGIN[#BEGIN + 1] = function()
  K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  CONF = nil
  CHECKED = false
end
local MARG = 3

-- The breaker configuration (ARGV[2]), decoded on first use in a call: a selection among
-- closed breakers never needs it.
local function conf()
  if not CONF then CONF = cjson.decode(ARGV[2]) end
  return CONF
end

-- The type each key of a model call holds, by its place in KEYS (6: a session key).
local KEY_TYPES = {'hash', 'hash', 'stream', 'zset', 'hash', 'string'}

-- Raise an error naming the first key of this call that holds another type than it should (a
-- hand edit). Every helper that writes calls it first, and it checks once per call: so a call
-- that writes has checked every key before its first write (Redis does not undo a script's
-- earlier writes when a later command fails), and a call that writes nothing (a selection
-- among closed breakers, a success report in a steady state: the frequent ones) pays nothing.
-- (A sticky session key is written without this check: every call reads it before.)
local function check_types()
  if CHECKED then return end
  CHECKED = true
  for i = 1, #KEYS do
    expect_type(KEYS[i], KEY_TYPES[i])
  end
end

-- Append one event to the {models} stream, as its own entry.
local function emit(etype, id, data, now)
  check_types()
  emit_to(K_EVENTS, etype, id, data, now)
end

-- A definition, decoded and checked: returns (def, raw, nil), (nil, nil, 'missing') or
-- (nil, raw, broken field). Python checks the rest of it when it parses the chosen one.
local function load_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local d = decode(raw)
  if not d then return nil, raw, 'definition' end
  local v = d.priority
  if type(v) ~= 'number' or v ~= v then return nil, raw, 'priority' end
  if type(d.enabled) ~= 'boolean' then return nil, raw, 'enabled' end
  v = d.auth
  if type(v) ~= 'table' then return nil, raw, 'auth' end
  v = v.kind
  if v ~= 'api_key' and v ~= 'env' and v ~= 'oauth' and v ~= 'pool' and v ~= 'none' then
    return nil, raw, 'auth'
  end
  if type(d.base_url) ~= 'string' then return nil, raw, 'base_url' end
  if type(d.provider) ~= 'string' then return nil, raw, 'provider' end
  v = d.models
  if type(v) ~= 'table' then return nil, raw, 'models' end
  for i = 1, #v do
    if type(v[i]) ~= 'string' then return nil, raw, 'models' end
  end
  v = d.default_model
  if v ~= nil and type(v) ~= 'string' then return nil, raw, 'default_model' end
  return d, raw, nil
end

-- The numeric fields of a breaker (whole numbers >= 0 when present).
local NUMBERS = {'epoch', 'opened_ms', 'open_ms', 'open_until_ms', 'reopens', 'half_open_ms',
  'probe_successes', 'cooldown_until_ms', 'failures_total', 'last_failure_ms'}
-- Every field of a breaker, in the order load_breaker reads them.
local FIELDS = {'state', 'window', 'streak', 'permits', 'last_error', 'last_error_kind'}
for i = 1, #NUMBERS do FIELDS[#FIELDS + 1] = NUMBERS[i] end  -- (no ipairs while loading)

-- A whole number >= 0 from a field's text, or nil.
local function count(text)
  local n = tonumber(text)
  if n == nil or n ~= n or n < 0 or n >= 1e300 or n ~= math.floor(n) then return nil end
  return n
end

-- The failure kinds counted one by one, '<id>:failures_<kind>' (FailureKind but 'caller').
local KINDS = {'rate_limit', 'billing', 'auth', 'server', 'timeout', 'unknown'}
local IS_KIND = {}
for i = 1, #KINDS do IS_KIND[KINDS[i]] = true end

-- Whether a failure count's text is sound: digits only (what HINCRBY accepts), at most 15.
local function is_count(text)
  return string.find(text, '^%d+$') ~= nil and #text <= 15
end

-- A profile's failure counts by kind, read with one HMGET (status only): returns (kind -> n
-- for the kinds seen, nil or the first broken field 'breaker.failures_<kind>').
local function failure_counts(id)
  local names = {}
  for i, kind in ipairs(KINDS) do names[i] = id .. ':failures_' .. kind end
  local values = redis.call('HMGET', K_BREAKERS, unpack(names))
  local counts, bad = {}, nil
  for i, kind in ipairs(KINDS) do
    local text = values[i]
    if text then
      if is_count(text) then
        counts[kind] = tonumber(text)
      elseif not bad then
        bad = 'breaker.failures_' .. kind
      end
    end
  end
  return counts, bad
end

-- A breaker from its fields' texts (name -> text, absent ones nil): returns (breaker, nil) or
-- (nil, 'breaker.<name>') naming the first broken field.
local function parse_breaker(t)
  local b = {state = t.state or 'closed', window = t.window or '', streak = {}, permits = {},
    last_error = t.last_error, last_error_kind = t.last_error_kind}
  if b.state ~= 'closed' and b.state ~= 'open' and b.state ~= 'half_open' then
    return nil, 'breaker.state'
  end
  for _, name in ipairs(NUMBERS) do
    if t[name] ~= nil then
      b[name] = count(t[name])
      if b[name] == nil then return nil, 'breaker.' .. name end
    end
  end
  b.epoch = b.epoch or 0
  if string.find(b.window, '[^01]') then return nil, 'breaker.window' end
  for word in string.gmatch(t.streak or '', '%S+') do
    local at = count(word)
    if at == nil then return nil, 'breaker.streak' end
    b.streak[#b.streak + 1] = at
  end
  for word in string.gmatch(t.permits or '', '%S+') do
    local token, expiry = string.match(word, '^([^=]+)=(.*)$')
    expiry = count(expiry)
    if expiry == nil then return nil, 'breaker.permits' end
    b.permits[token] = expiry
  end
  if b.state == 'open' and b.open_until_ms == nil then return nil, 'breaker.open_until_ms' end
  return b, nil
end

-- A profile's breaker, read with one HMGET: (breaker, nil) or (nil, broken field). No fields
-- at all: a closed breaker at epoch 0.
local function load_breaker(id)
  local names = {}
  for i, name in ipairs(FIELDS) do names[i] = id .. ':' .. name end
  local values = redis.call('HMGET', K_BREAKERS, unpack(names))
  local t = {}
  for i, name in ipairs(FIELDS) do
    if values[i] then t[name] = values[i] end
  end
  return parse_breaker(t)
end

-- Write a breaker's fields: present values are set, absent or empty ones deleted.
local function save_breaker(id, b)
  local streak, permits = {}, {}
  for i, at in ipairs(b.streak) do streak[i] = int(at) end
  for token, expiry in pairs(b.permits) do permits[#permits + 1] = token .. '=' .. int(expiry) end
  table.sort(permits)
  local text = {state = b.state, window = b.window, streak = table.concat(streak, ' '),
    permits = table.concat(permits, ' '), last_error = b.last_error,
    last_error_kind = b.last_error_kind}
  for _, name in ipairs(NUMBERS) do
    if b[name] ~= nil then text[name] = int(b[name]) end
  end
  local set, gone = {}, {}
  check_types()
  for _, name in ipairs(FIELDS) do
    if text[name] == nil or text[name] == '' then
      gone[#gone + 1] = id .. ':' .. name
    else
      set[#set + 1] = id .. ':' .. name
      set[#set + 1] = text[name]
    end
  end
  redis.call('HSET', K_BREAKERS, unpack(set))
  if #gone > 0 then redis.call('HDEL', K_BREAKERS, unpack(gone)) end
end

-- Delete every field of a profile's breaker (with_counts: its failure counts by kind too).
local function delete_breaker(id, with_counts)
  check_types()
  local names = {}
  for i, name in ipairs(FIELDS) do names[i] = id .. ':' .. name end
  if with_counts then
    for _, kind in ipairs(KINDS) do names[#names + 1] = id .. ':failures_' .. kind end
  end
  redis.call('HDEL', K_BREAKERS, unpack(names))
end

-- Count one failure of a kind. A count edited into something else than digits is left as it is
-- (the status names it; model_reset repairs it): a report never fails for a statistic.
local function count_failure(id, kind)
  if not IS_KIND[kind] then return end
  local name = id .. ':failures_' .. kind
  local text = redis.call('HGET', K_BREAKERS, name)
  if text and not is_count(text) then return end
  check_types()
  redis.call('HINCRBY', K_BREAKERS, name, 1)
end

-- Drop expired probe permits; returns (count left, soonest expiry or nil, whether any
-- dropped).
local function live_permits(b, now)
  local n, soonest, dropped = 0, nil, false
  for token, t in pairs(b.permits) do
    if t <= now then
      b.permits[token] = nil
      dropped = true
    else
      n = n + 1
      if soonest == nil or t < soonest then soonest = t end
    end
  end
  return n, soonest, dropped
end

-- Lazy transition open -> half-open on Redis time (announced once: this script persists it),
-- and expired permits dropped. For a breaker that is not closed (a closed one never changes
-- here). Returns whether the breaker changed and must be saved.
local function refresh(id, b, now)
  if b.state == 'open' then
    if now < b.open_until_ms then return false end
    b.state = 'half_open'
    b.epoch = b.epoch + 1
    b.permits = {}
    b.probe_successes = 0
    b.half_open_ms = now
    emit('profile:circuit-half-open', id, {epoch = b.epoch, open_ms = b.open_ms or 0}, now)
    return true
  end
  local _, _, dropped = live_permits(b, now)
  return dropped
end

-- The failures of a breaker's streak that still count at now (those within failure_decay_ms),
-- oldest first, as a new table (the caller may append to it).
local function counting_streak(b, now)
  local streak = {}
  for _, t in ipairs(b.streak) do
    if now - t <= conf().failure_decay_ms then streak[#streak + 1] = t end
  end
  return streak
end

-- Open a breaker now: for period ms when given (an operator's forced open: reopens is kept
-- as it is), else for reset_timeout_ms doubled by each re-open without closing, up to
-- max_open_ms.
local function open_breaker(id, b, now, reason, kind, period)
  local from = b.state
  local reopens = b.reopens or 0
  if period == nil then
    reopens = 0
    if b.state == 'half_open' then reopens = math.min((b.reopens or 0) + 1, 40) end
    period = math.floor(math.min(conf().max_open_ms, conf().reset_timeout_ms * (2 ^ reopens)))
  end
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
    until_ms = now + period, reopens = reopens, from = from
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

-- Whether a half-open breaker has a probe permit left (none for a sticky session): returns
-- (epoch, probe token) when it has, and takes it; else (nil, soonest recovery ms or nil).
local function admit_probe(b, now, sticky_only)
  if sticky_only or b.state == 'open' then return nil, b.open_until_ms end
  local n, first = live_permits(b, now)
  if n >= conf().half_open_max_probes then return nil, first end
  check_types()
  -- A counter edited into something HINCRBY refuses restarts at Redis time in ms (beyond any
  -- count of tokens handed out): a hand edit never stops probes.
  local seq = redis.pcall('HINCRBY', K_META, 'probe_seq', 1)
  if type(seq) ~= 'number' then
    redis.call('HSET', K_META, 'probe_seq', int(now))
    seq = redis.call('HINCRBY', K_META, 'probe_seq', 1)
  end
  local token = 'p' .. int(seq)
  b.permits[token] = now + conf().probe_timeout_ms
  return b.epoch, token
end

-- When a breaker admits a call again, ordinary or probe (ms, Redis time; now if it does).
-- Changes nothing stored.
local function selectable_at(b, now)
  local at = now
  if b.state == 'open' then
    at = b.open_until_ms
  elseif b.state == 'half_open' then
    local n, first = live_permits(b, now)
    if n >= conf().half_open_max_probes then at = first end
  end
  return math.max(at, b.cooldown_until_ms or 0)
end

-- A closed breaker (the frequent case) admits a call by three fields, read with one HMGET:
-- returns (epoch, cooldown_until_ms or 0) when its state is closed and those three are sound,
-- else nil (the whole breaker must be read). Its other fields do not decide a selection.
local function closed_breaker(id)
  local f = redis.call('HMGET', K_BREAKERS, id .. ':state', id .. ':epoch',
    id .. ':cooldown_until_ms')
  if f[1] and f[1] ~= 'closed' then return nil end
  local epoch = f[2] and count(f[2]) or (not f[2] and 0) or nil
  local cooldown = f[3] and count(f[3]) or (not f[3] and 0) or nil
  if epoch == nil or cooldown == nil then return nil end
  return epoch, cooldown
end

-- Whether a profile's breaker admits a call now (sticky_only: only a closed breaker does, no
-- probe). Returns (epoch, probe token: '' for an ordinary call) when it does, else
-- (nil, soonest recovery ms or nil, broken field or nil). Persists what it changed.
local function admit(id, now, sticky_only)
  local epoch, cooldown = closed_breaker(id)
  if epoch then
    if cooldown > now then return nil, cooldown, nil end
    return epoch, '', nil
  end
  local b, bad = load_breaker(id)
  if not b then return nil, nil, bad end
  local changed = b.state ~= 'closed' and refresh(id, b, now)
  local epoch, token, soonest = nil, '', nil
  if (b.cooldown_until_ms or 0) > now then
    soonest = b.cooldown_until_ms
  elseif b.state == 'closed' then
    epoch = b.epoch
  else
    epoch, token = admit_probe(b, now, sticky_only)
    if epoch then
      changed = true
    else
      soonest, token = token, ''
    end
  end
  if changed then save_breaker(id, b) end
  if epoch then return epoch, token, nil end
  return nil, soonest, nil
end

-- Whether a profile (a decoded definition) serves the model ('' for any): exact names,
-- 'prefix*' wildcards, '*' for all (the same rule as ModelProfile.serves in types.py).
local function serves_model(def, model)
  if model == '' then return true end
  for _, p in ipairs(def.models) do
    local n = #p
    if p == '*' or p == model or (n > 1 and string.sub(p, n) == '*'
        and string.sub(model, 1, n - 1) == string.sub(p, 1, n - 1)) then
      return true
    end
  end
  return false
end

-- The model to call: the preferred one, else the default, else the first listed exact name.
local function resolve_model(def, model)
  if model ~= '' then return model end
  if type(def.default_model) == 'string' and def.default_model ~= '' then
    return def.default_model
  end
  for _, name in ipairs(def.models) do
    if not string.find(name, '*', 1, true) then return name end
  end
  return ''
end

-- One profile's status row, on Redis time (a due open -> half-open transition applied first):
-- {id, definition JSON ('' if unreadable), breaker JSON ('' if corrupt), broken field of the
-- definition or breaker ('' if sound), failure counts by kind JSON, broken count field ('' if
-- none)}. The breaker JSON holds the fields above, streak a list of ms, permits an object; of
-- a corrupt breaker that selections still take (see closed_breaker), only state, epoch and
-- cooldown_until_ms.
local function status_row(id, now)
  local def, raw_def, bad = load_def(id)
  if def and def.enabled then
    -- The ranked index edited by hand: the profile is selected out of its priority order
    -- ('ranked'), or never ('ranked.missing'). Named unless something else is broken;
    -- model_set_enabled repairs it.
    local score = redis.call('ZSCORE', K_RANKED, id)
    if not score then
      bad = 'ranked.missing'
    elseif tonumber(score) ~= -def.priority then
      bad = 'ranked'
    end
  end
  local b, bbad = load_breaker(id)
  local breaker = ''
  if b then
    if b.state ~= 'closed' and refresh(id, b, now) then save_breaker(id, b) end
    breaker = cjson.encode(b)
  else
    local epoch, cooldown = closed_breaker(id)
    if epoch then  -- (a broken field that no selection reads: what selections see)
      breaker = cjson.encode({state = 'closed', epoch = epoch, cooldown_until_ms = cooldown})
    end
  end
  local counts, cbad = failure_counts(id)
  local counts_json = '{}'
  if next(counts) ~= nil then counts_json = cjson.encode(counts) end
  if bad and string.sub(bad, 1, 6) == 'ranked' and bbad then bad = bbad end
  return {id, raw_def or '', breaker, bad or bbad or '', counts_json, cbad or ''}
end
