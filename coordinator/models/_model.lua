-- _model.lua: model profiles and their circuit breakers (included with --!include _model.lua).
-- Model scripts receive the five static keys of the {models} hash tag as KEYS[1..5]:
--   1 profiles (HASH id -> definition JSON)   2 breakers (HASH id -> breaker state JSON)
--   3 events (STREAM)   4 ranked (ZSET id -> -priority, enabled profiles only)
--   5 meta (HASH probe_seq)                    6 a sticky session key (optional)
-- (in this order so that a script that never selects, a report without a pick, can be given
-- only the first three: every argument costs the client time to encode)
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
-- The function that records outcomes is in _model_record.lua (only model_report needs it).
--
-- Cost notes (these scripts are the hot path; measured on Redis 7.0 with callgrind): JSON is
-- decoded only when a decision needs more than a record read in place (peek in _lib.lua), and
-- the configuration is parsed once per distinct text (conf()).

local K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META
BEGIN[#BEGIN + 1] = function()
  K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
end
local MARG = 3

local C, C_TEXT = nil, nil  -- the configuration parsed, and the text it was parsed from
-- The breaker configuration (ARGV[2]), decoded as one JSON array (cheaper than splitting twelve
-- numbers with string patterns), once per distinct text: the library keeps it between calls.
local function conf()
  if C_TEXT ~= ARGV[2] then
    local v = cjson.decode('[' .. ARGV[2] .. ']')  -- (raises on a bad text: C_TEXT stays)
    C = {threshold = v[1], window = v[2], min_calls = v[3], rate = v[4], decay = v[5],
      reset = v[6], max_open = v[7], probes = v[8], probe_timeout = v[9], success = v[10],
      billing = v[11], max_retry = v[12]}
    C_TEXT = ARGV[2]
  end
  return C
end

-- What the hot paths read of a breaker record in place, without decoding it (peek in
-- _lib.lua): closed (a closed breaker whose epoch reads), epoch and epoch_text, cooldown (ms,
-- 0 for none; nil when malformed), quiet_window (the length of a window of successes only,
-- else nil), no_streak. Only the values a decision reads this way are trusted: a field
-- broken elsewhere in the record is reported by the next report that decodes it, and by the
-- status.
local GLANCES = {by = {}, n = 0}
local function glance(id, raw)
  local g = recall(GLANCES, id, raw)
  if g then return g end
  g = {closed = false}
  if string.byte(raw) == 123 and peek(raw, '"state":', '^"state":"(closed)"[,}]') then  -- '{'
    local epoch = peek(raw, '"epoch":', '^"epoch":(%d+)[,}]')
    if epoch then
      g.closed, g.epoch_text, g.epoch = true, epoch, tonumber(epoch)
      local cooldown = peek(raw, '"cooldown_until_ms":', '^"cooldown_until_ms":(%d+)[,}]')
      if cooldown == nil then g.cooldown = 0 elseif cooldown then g.cooldown = tonumber(cooldown) end
      local window = peek(raw, '"window":', '^"window":"(0*)"[,}]')
      if window then g.quiet_window = #window end
      g.no_streak = peek(raw, '"streak":', '^"streak":([%[{][%]}])[,}]') and true or false
    end
  end
  return remember(GLANCES, id, raw, g)
end

-- A success on a closed breaker in its steady state (the epoch it was selected in, epoch ''
-- for the current one; a full window of successes; no failure streak) changes nothing; that is
-- seen without decoding the record (glance above; the decode was ~15% of a success report's
-- instructions, callgrind). Returns the epoch's text then, else nil.
local function steady_success(id, raw, epoch)
  local g = glance(id, raw)
  if not g.closed or (epoch ~= '' and tonumber(epoch) ~= g.epoch) then return nil end
  if g.quiet_window ~= conf().window or not g.no_streak then return nil end
  return g.epoch_text
end

local PAGE = 16
local FIRST_PAGE_END = '15'  -- PAGE - 1, as text

-- emit_to (see _lib.lua) with the timestamp text made once per script (a failover emits two).
-- With HOLD on (a failover report), the latest event is held back instead of written, so that
-- the failover can ride in the same stream entry as the failure before it (one XADD fewer on
-- the hop; readers deliver it as two events, see Event.expand); any later event writes the
-- held one first, so the order never changes.
local TS, TS_NOW = nil, nil
local HOLD, held = false, nil
BEGIN[#BEGIN + 1] = function()
  TS, TS_NOW, HOLD, held = nil, nil, false, nil
end
local function xadd(e)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'type', e[1], 'profile', e[2], 'ts', e[4], 'data', cjson.encode(e[3]))
end
local function emit(etype, id, data, now)
  if now ~= TS_NOW then TS, TS_NOW = int(now), now end
  if held then
    xadd(held)
    held = nil
  end
  local e = {etype, id, data, TS}
  if HOLD then held = e else xadd(e) end
end

-- A definition, decoded and checked (raw: its stored text when already read, else it is read
-- here): returns (def, raw, nil), (nil, nil, 'missing') or (nil, raw, broken field).
local function load_def(id, raw)
  if raw == nil then raw = redis.call('HGET', K_PROFILES, id) end
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

-- A copy of a breaker that its holder may change (record() and the transitions change fields,
-- and probe permits in place). One constructor naming every field of the record (see the top
-- of this file), so that Lua sizes the table once: setting the fields one by one grew it four
-- times (callgrind). A field outside the format would not be copied; breakers are copied only
-- from records this library wrote.
local function copy_breaker(b)
  local permits, streak = {}, {}
  for k, v in pairs(b.permits) do permits[k] = v end
  for k, v in pairs(b.streak) do streak[k] = v end
  return {state = b.state, epoch = b.epoch, window = b.window, streak = streak,
    permits = permits, opened_ms = b.opened_ms, open_ms = b.open_ms,
    open_until_ms = b.open_until_ms, reopens = b.reopens, half_open_ms = b.half_open_ms,
    probe_successes = b.probe_successes, cooldown_until_ms = b.cooldown_until_ms,
    failures_total = b.failures_total, last_failure_ms = b.last_failure_ms,
    last_error = b.last_error, last_error_kind = b.last_error_kind}
end

-- The last breaker record this library wrote for each profile (see remember). The next report
-- on a profile usually reads the record the last one wrote, and takes a copy of the breaker
-- kept here instead of decoding and checking the text (the decode and its checks were ~10% of
-- a failover hop's instructions, callgrind).
local WRITTEN = {by = {}, n = 0}

-- Write a breaker record. b must be valid (parse_breaker's output, changed by this library)
-- and is kept as it is: the caller must not change it afterwards. Returns the text written.
local function save_breaker(id, b)
  local text = cjson.encode(b)
  redis.call('HSET', K_BREAKERS, id, text)
  remember(WRITTEN, id, text, b)
  return text
end

-- A breaker from its stored record (HGET of the breakers hash; id: the profile's, to find the
-- record this library last wrote for it, or nil): returns (state, nil) or (nil, broken
-- field). No record (nil or false): a closed breaker. Numbers must be finite and >= 0.
local function parse_breaker(raw, id)
  if not raw then return {state = 'closed', epoch = 0, window = '', streak = {}, permits = {}}, nil end
  local written = id and recall(WRITTEN, id, raw)
  if written then return copy_breaker(written), nil end
  local b = decode(raw)
  if not b then return nil, 'breaker' end
  local state = b.state
  if state ~= 'closed' and state ~= 'open' and state ~= 'half_open' then
    return nil, 'breaker.state'
  end
  if b.epoch == nil then
    b.epoch = 0
  elseif bad_number(b.epoch) then
    return nil, 'breaker.epoch'
  end
  if bad_number(b.opened_ms) then return nil, 'breaker.opened_ms' end
  if bad_number(b.open_ms) then return nil, 'breaker.open_ms' end
  if bad_number(b.open_until_ms) then return nil, 'breaker.open_until_ms' end
  if bad_number(b.reopens) then return nil, 'breaker.reopens' end
  if bad_number(b.probe_successes) then return nil, 'breaker.probe_successes' end
  if bad_number(b.cooldown_until_ms) then return nil, 'breaker.cooldown_until_ms' end
  if bad_number(b.failures_total) then return nil, 'breaker.failures_total' end
  if bad_number(b.last_failure_ms) then return nil, 'breaker.last_failure_ms' end
  local v = b.window
  if v == nil then
    b.window = ''
  elseif type(v) ~= 'string' or string.find(v, '[^01]') then
    return nil, 'breaker.window'
  end
  v = b.streak
  if v == nil then
    b.streak = {}
  elseif type(v) ~= 'table' then
    return nil, 'breaker.streak'
  elseif next(v) ~= nil then
    for _, t in pairs(v) do
      if bad_number(t) then return nil, 'breaker.streak' end
    end
  end
  v = b.permits
  if v == nil then
    b.permits = {}
  elseif type(v) ~= 'table' then
    return nil, 'breaker.permits'
  elseif next(v) ~= nil then
    for token, t in pairs(v) do
      if type(token) ~= 'string' or bad_number(t) then
        return nil, 'breaker.permits'
      end
    end
  end
  if state == 'open' and b.open_until_ms == nil then return nil, 'breaker.open_until_ms' end
  return b, nil
end

-- Drop expired probe permits; returns (count left, soonest expiry or nil, whether any
-- dropped).
local function live_permits(b, now)
  local n, soonest, dropped = 0, nil, false
  local permits = b.permits
  for token, t in pairs(permits) do
    if t <= now then
      permits[token] = nil
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
  if next(b.permits) == nil then return false end
  local _, _, dropped = live_permits(b, now)
  return dropped
end

-- The failures of a breaker's streak that still count at now (those within failure_decay_ms),
-- oldest first, as a new table (the caller may append to it).
local function counting_streak(b, now)
  local decay = conf().decay
  local streak = {}
  for _, t in ipairs(b.streak) do
    if now - t <= decay then streak[#streak + 1] = t end
  end
  return streak
end

local function open_breaker(id, b, now, reason, kind)
  local c = conf()
  local reopens = 0
  if b.state == 'half_open' then reopens = math.min((b.reopens or 0) + 1, 40) end
  local period = math.min(c.max_open, c.reset * (2 ^ reopens))
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

-- Whether a breaker that is not closed admits a call now (no probe for a sticky session).
-- Returns (epoch, probe token) when it does, else (nil, soonest recovery ms or nil).
local function admit_probe(id, b, now, sticky_only)
  if sticky_only then return nil, nil end
  if b.state == 'open' then return nil, b.open_until_ms end
  local n, first = live_permits(b, now)
  local c = conf()
  if n < c.probes then
    local token = 'p' .. int(redis.call('HINCRBY', K_META, 'probe_seq', 1))
    b.permits[token] = now + c.probe_timeout
    return b.epoch, token
  end
  return nil, first
end

-- Whether a profile's breaker admits a call now (sticky_only: only a closed breaker does, no
-- probe). Returns (epoch, probe token: '' for an ordinary call) when it does, else
-- (nil, soonest recovery ms or nil, broken field or nil). Persists what it changed.
local function admit(id, now, sticky_only)
  local raw = redis.call('HGET', K_BREAKERS, id)
  if not raw then return 0, '' end  -- no record yet: closed, epoch 0
  -- A closed breaker with no cooldown running is admitted without decoding its record (that
  -- was ~10% of a selection's instructions, measured with callgrind). Anything else takes
  -- the full path.
  local g = glance(id, raw)
  if g.closed and g.cooldown and g.cooldown <= now then return g.epoch, '' end
  local b, bad = parse_breaker(raw, id)
  if not b then return nil, nil, bad end
  local closed = b.state == 'closed'
  local changed = not closed and refresh(id, b, now)
  local cooldown = b.cooldown_until_ms
  local epoch, token, soonest = nil, '', nil
  if cooldown and cooldown > now then
    soonest = cooldown
  elseif b.state == 'closed' then
    epoch = b.epoch
  else
    epoch, soonest = admit_probe(id, b, now, sticky_only)
    if epoch then
      token, soonest, changed = soonest, nil, true
    end
  end
  if changed then save_breaker(id, b) end
  if epoch then return epoch, token, nil end
  return nil, soonest, nil
end

-- What a selection needs of a definition, without decoding it when it has the head that
-- ModelProfile.to_record writes: {"enabled":..,"default_model":"..","models":[..],"... One
-- anchored match reads it, where decoding the whole JSON cost ~13% of a selection's
-- instructions (callgrind). A head can be trusted this far: a ']' followed by ',"' cannot be
-- inside a JSON string (a quote in a string is escaped), so the capture is the whole array;
-- names with escapes, an older key order or a hand edit take the full path (load_def). The
-- fields a selection does not use are checked by Python, which parses every definition it is
-- handed and picks again without one it cannot use, and by the status script.
-- Returns (view, raw) or (nil, raw or nil, broken field): view has enabled, default_model
-- (nil when absent) and either models (a list) or models_text (the array's inside).
local HEAD = '^{"enabled":(%a+),"default_model":"([^"\\]*)","models":%[([^%]]*)%],"'
local HEAD_NO_DEFAULT = '^{"enabled":(%a+),"models":%[([^%]]*)%],"'
local VIEWS = {by = {}, n = 0}
local function view_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local view = recall(VIEWS, id, raw)
  if view then return view, raw end
  local enabled, default, text = string.match(raw, HEAD)
  if not enabled then enabled, text = string.match(raw, HEAD_NO_DEFAULT) end
  if (enabled == 'true' or enabled == 'false') and not string.find(text, '\\', 1, true) then
    return remember(VIEWS, id, raw, {enabled = enabled == 'true', default_model = default,
      models_text = text}), raw
  end
  return load_def(id, raw)
end

-- The model list of a view_def view (made from the head's text on first use).
local function model_list(view)
  local models = view.models
  if not models then
    models = {}
    for name in string.gmatch(view.models_text, '"([^"]*)"') do models[#models + 1] = name end
    view.models = models
  end
  return models
end

-- Whether a profile (a view_def view) serves the model ('' for any): exact names, 'prefix*'
-- wildcards, '*' for all (the same rule as ModelProfile.serves in model_types.py).
local function serves_model(view, model)
  if model == '' then return true end
  local models = model_list(view)
  for i = 1, #models do
    local p = models[i]
    local n = #p
    if p == '*' or p == model or (n > 1 and string.byte(p, n) == 42
        and string.sub(model, 1, n - 1) == string.sub(p, 1, n - 1)) then
      return true
    end
  end
  return false
end

-- Choose a profile. spec is the selection spec (one argument: each argument costs the client
-- time to encode), nil or '' for the defaults (any model, no session TTL, nothing excluded):
--   "<session TTL ms>,<count of excluded ids>,<id>,...,<id>,<model>"
-- (ids never hold a comma; the model is the rest, '' for any); also_excluded is one more id to
-- skip (a failover's failed profile) or nil.
-- Returns the reply for Python (packed: every reply element costs both ends time to convert),
-- then, for the caller, the chosen id, model and reason:
--   {1, "<id>,<reason>,<epoch>,<probe token>,<now>,<sticky 0|1>[,<broken>...]", model,
--    definition JSON}
--   {0, "<soonest recovery in ms, -1 if nothing recovers by itself>,<now>[,<broken>...]"}
-- reason: 'primary' (the highest-priority enabled profile serving the model), 'failover'
-- (a lower one, or one below an excluded profile that serves the model; the failed profile
-- of a hop is taken to), 'testing' (a half-open probe; the token is
-- its permit). broken lists 'id:field' of profiles skipped because a stored value is corrupt
-- (ids and field names hold no comma).
-- Cost: O(log n) + the profiles ranked above the one chosen (a handful: one per provider).
local function select_profile(now, spec, session_key, also_excluded)
  local model, session_ttl, excluded = '', 0, nil
  if spec and spec ~= '' then
    local ttl, count, pos = string.match(spec, '^(%d+),(%d+),()')
    if not ttl then error('malformed selection spec') end
    excluded = {}
    for _ = 1, tonumber(count) do
      local stop = string.find(spec, ',', pos, true)
      if not stop then error('malformed selection spec') end
      excluded[string.sub(spec, pos, stop - 1)] = true
      pos = stop + 1
    end
    model, session_ttl = string.sub(spec, pos), tonumber(ttl)
  end

  local broken = nil
  local soonest = nil
  local top = nil
  local chosen, chosen_raw, chosen_def, epoch, token = nil, nil, nil, nil, nil

  -- Sticky session: keep the bound profile while it is enabled, closed and not cooling down.
  local sticky = false
  local bound = nil
  if session_key then
    bound = redis.call('GET', session_key)
    if bound and bound ~= also_excluded and not (excluded and excluded[bound]) then
      local def, raw = view_def(bound)
      local serves = def and def.enabled and serves_model(def, model)
      if serves then
        local e, t, bad = admit(bound, now, true)
        if e then
          chosen, chosen_raw, chosen_def, epoch, token, sticky = bound, raw, def, e, t, true
        elseif bad then
          broken = {bound .. ':' .. bad}
        elseif t and (soonest == nil or t < soonest) then
          soonest = t
        end
      end
    end
  end

  local offset = 0
  while not (chosen and top) do
    local page
    if offset == 0 then  -- the common case, with its bounds as text (see EVENTS_MAXLEN)
      page = redis.call('ZRANGE', K_RANKED, '0', FIRST_PAGE_END)
    else
      page = redis.call('ZRANGE', K_RANKED, offset, offset + PAGE - 1)
    end
    local count = #page
    if count == 0 then break end
    for i = 1, count do
      local id = page[i]
      if id == also_excluded then
        -- Not even decoded (a failover hop excludes the profile that just failed, which served
        -- the call): ranked above the one chosen, it makes the choice a failover.
        if top == nil then top = id end
      elseif excluded and excluded[id] then
        -- An excluded profile makes the choice a failover only if it would have served it.
        if top == nil then
          local def = view_def(id)
          if def and def.enabled and serves_model(def, model) then top = id end
        end
      else
        local def, raw, bad = view_def(id)
        if not def then
          if bad == 'missing' then
            redis.call('ZREM', K_RANKED, id)
          else
            broken = broken or {}
            broken[#broken + 1] = id .. ':' .. bad
          end
        elseif not def.enabled then
          redis.call('ZREM', K_RANKED, id)
        else
          if serves_model(def, model) then
            if top == nil then top = id end
            if not chosen then
              local e, t, why = admit(id, now, false)
              if e then
                chosen, chosen_raw, chosen_def, epoch, token = id, raw, def, e, t
              elseif why then
                broken = broken or {}
                broken[#broken + 1] = id .. ':' .. why
              elseif t and (soonest == nil or t < soonest) then
                soonest = t
              end
            end
          end
        end
      end
      if chosen and top then break end
    end
    if count < PAGE then break end
    offset = offset + PAGE
  end

  local tail = ''
  if broken then tail = ',' .. table.concat(broken, ',') end
  if not chosen then
    local wait = -1
    if soonest then wait = math.max(0, soonest - now) end
    return {0, int(wait) .. ',' .. int(now) .. tail}
  end
  local reason = 'failover'
  if token ~= '' then
    reason = 'testing'
  elseif chosen == top then
    reason = 'primary'
  end
  if session_key and session_ttl > 0 and token == '' then
    if bound == chosen then
      redis.call('PEXPIRE', session_key, session_ttl)
    else
      redis.call('SET', session_key, chosen, 'PX', session_ttl)
    end
  end
  -- The model to call: the preferred one, else the default, else the first listed exact name.
  local resolved = model
  if resolved == '' then
    local default = chosen_def.default_model
    if type(default) == 'string' and default ~= '' then
      resolved = default
    else
      local models = model_list(chosen_def)
      for i = 1, #models do
        if not string.find(models[i], '*', 1, true) then
          resolved = models[i]
          break
        end
      end
    end
  end
  return {1, chosen .. ',' .. reason .. ',' .. int(epoch) .. ',' .. token .. ',' .. int(now) ..
    (sticky and ',1' or ',0') .. tail, resolved, chosen_raw}, chosen, resolved, reason
end
