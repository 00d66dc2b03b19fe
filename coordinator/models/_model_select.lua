-- _model_select.lua: choosing a profile (included after _model.lua, by model_select and
-- model_report).

-- The selection arguments, from ARGV[first] on: the preferred model ('' for any), the session
-- TTL ms (0 for none), a count n, then the ids to exclude: the first n are profiles this
-- request already tried (when nothing is selectable, the reply says when the soonest of them
-- is selectable again), the others are skipped for other reasons. Returns (model, session
-- TTL, set of excluded ids, set of tried ids); absent arguments are the defaults.
local function selection_args(first)
  local excluded, tried = {}, {}
  local n = tonumber(ARGV[first + 2]) or 0
  for i = first + 3, #ARGV do
    excluded[ARGV[i]] = true
    if i < first + 3 + n then tried[ARGV[i]] = true end
  end
  return ARGV[first] or '', tonumber(ARGV[first + 1]) or 0, excluded, tried
end

-- A sticky session's bound profile, if it still serves the model and its breaker is closed
-- and not cooling down. Returns (bound id or nil, choice or nil, soonest recovery, broken).
-- A choice is {id, def, epoch, token, definition JSON}.
local function sticky_choice(s, now)
  local bound = redis.call('GET', s.session_key)
  if not bound or bound == s.also_excluded or s.excluded[bound] then return bound end
  local def, raw = load_def(bound)
  if not def or not def.enabled or not serves_model(def, s.model) then return bound end
  local epoch, t, bad = admit(bound, now, true)
  if epoch then return bound, {bound, def, epoch, t, raw} end
  if bad then return bound, nil, nil, bound .. ':' .. bad end
  return bound, nil, t
end

-- Look at one ranked profile for selection state s (see select_profile): notes the first
-- profile that serves the model (s.top), admits the first whose breaker lets the call through
-- (s.chosen), collects the soonest recovery and broken values, and repairs the index.
local function consider(s, id, now)
  if id == s.also_excluded then
    -- The profile that just failed (a failover hop): ranked above the one chosen, it makes
    -- the choice a failover.
    s.top = s.top or id
    s.passed[#s.passed + 1] = id
    return
  end
  local def, raw, bad = load_def(id)
  if not def then
    if bad == 'missing' then
      check_types()
      redis.call('ZREM', K_RANKED, id)
    elseif not s.excluded[id] then
      s.broken[#s.broken + 1] = id .. ':' .. bad
    end
    return
  end
  if not def.enabled then
    check_types()
    redis.call('ZREM', K_RANKED, id)
    return
  end
  if not serves_model(def, s.model) then return end
  s.top = s.top or id  -- an excluded profile that serves the model makes the choice a failover
  if s.tried[id] then s.passed[#s.passed + 1] = id end
  if s.excluded[id] or s.chosen then return end
  local epoch, t, why = admit(id, now, false)
  if epoch then
    s.chosen = {id, def, epoch, t, raw}
  elseif why then
    s.broken[#s.broken + 1] = id .. ':' .. why
  elseif t and (s.soonest == nil or t < s.soonest) then
    s.soonest = t
  end
end

-- The soonest time (ms) one of the tried profiles that serve the model (and the failed one of
-- a failover hop) becomes selectable again, for a request that excludes nothing (-1: none).
local function excluded_wait(s, now)
  local soonest = nil
  for _, id in ipairs(s.passed) do
    local b = load_breaker(id)
    if b then
      local at = selectable_at(b, now)
      if soonest == nil or at < soonest then soonest = at end
    end
  end
  if soonest == nil then return -1 end
  return math.max(0, soonest - now)
end

-- Choose a profile. model: the preferred model ('' for any); session_ttl: ms (0: the session
-- is not kept); excluded: set of ids to skip; tried: those of them this request tried;
-- session_key: KEYS[6] or nil; also_excluded: one more id to skip (a failover's failed
-- profile) or nil.
-- Returns the reply for Python, then for the caller the chosen id, model and reason:
--   {1, id, reason, epoch, probe token ('' for none), now, sticky 1|0, model, definition JSON,
--    {broken...}}
--   {0, soonest recovery in ms (-1 if nothing recovers by itself), now, {broken...},
--    soonest time in ms a tried profile becomes selectable again (-1 for none)}
-- reason: 'primary' (the highest-priority enabled profile serving the model), 'failover'
-- (a lower one), 'testing' (a half-open probe; the token is its permit). broken lists
-- 'id:field' of profiles skipped because a stored value is corrupt.
-- Cost: O(log n) + the profiles ranked above the one chosen (a handful: one per provider).
local function select_profile(now, model, session_ttl, excluded, tried, session_key,
    also_excluded)
  local s = {model = model, excluded = excluded, tried = tried, also_excluded = also_excluded,
    session_key = session_key, broken = {}, passed = {}}
  local bound, sticky, bad = nil, nil, nil
  if session_key then
    bound, sticky, s.soonest, bad = sticky_choice(s, now)
    s.chosen = sticky
    if bad then s.broken[1] = bad end
  end
  local offset, page_size = 0, 16
  repeat
    local page = redis.call('ZRANGE', K_RANKED, offset, offset + page_size - 1)
    for _, id in ipairs(page) do
      consider(s, id, now)
      if s.chosen and s.top then break end
    end
    offset = offset + page_size
  until (s.chosen and s.top) or #page < page_size

  if not s.chosen then
    local wait = -1
    if s.soonest then wait = math.max(0, s.soonest - now) end
    return {0, wait, now, s.broken, excluded_wait(s, now)}
  end
  local id, def, epoch, token, raw = unpack(s.chosen)
  local reason = 'failover'
  if token ~= '' then
    reason = 'testing'
  elseif id == s.top then
    reason = 'primary'
  end
  if session_key and session_ttl > 0 and token == '' then
    if bound == id then
      redis.call('PEXPIRE', session_key, session_ttl)
    else
      redis.call('SET', session_key, id, 'PX', session_ttl)
    end
  end
  local resolved = resolve_model(def, model)
  return {1, id, reason, epoch, token, now, sticky and 1 or 0, resolved, raw, s.broken},
    id, resolved, reason
end
