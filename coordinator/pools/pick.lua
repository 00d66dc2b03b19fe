-- pick.lua: choose the next profile of a pool, honouring stickiness, cooldowns and exclusions.
-- KEYS[1..7]  the pool keys (see _pool.lua); KEYS[8] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] strategy: round-robin | priority | random
-- ARGV[3] model ('' for none)   ARGV[4] session TTL ms (0 for none)
-- ARGV[5] a uniform random fraction in [0, 1) from the caller (used by the random strategy:
--   entropy is not shared state, and Redis's Lua generator gives every server the same
--   sequence)
-- ARGV[6..] excluded profile ids
-- Returns {1, id, definition JSON, reason, now}   reason: sticky | rotation
--      or {0, soonest recovery in ms (-1 if none is cooling), now}
-- Cost: O(log n) plus the profiles it has to skip (excluded, model-cooled, broken).
--!include _pool_rotation.lua

local strategy = ARGV[2]
local model = ARGV[3]
local session_ttl = tonumber(ARGV[4]) or 0
local fraction = tonumber(ARGV[5]) or 0
local excluded = {}
for i = 6, #ARGV do excluded[ARGV[i]] = true end
local session_key = KEYS[8]

local now = now_ms()
sweep(now)

-- The soonest deadline that would make something usable (cooldowns until cleared, +inf, are
-- no hint).
local soonest = nil
local function consider_until(t)
  if t and t < math.huge and (soonest == nil or t < soonest) then soonest = t end
end

-- Set when a profile found cooling was taken out of the ready set: the walk starts again,
-- since the ranks after it moved (once per such profile: a hand edit).
local rotation_changed = false

-- A ready profile is usable when not excluded, it has a definition and, for a model, the
-- (profile, model) pair is not cooling down. Returns its raw definition JSON and, when
-- need_def (the priority walk, which ranks by its fields), the decoded definition, which must
-- then be sound. Otherwise the JSON is not decoded here (that was a quarter of a pick's Redis
-- CPU): the client parses it, and skips one it cannot read (see AuthProfileManager._pick).
local function usable(id, need_def)
  if excluded[id] then return nil end
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then
    -- In the rotation, but no profile has this id (an operator's ZADD to the ready set): it
    -- leaves the rotation, so that no later pick has to skip it.
    check_types()  -- (a repair, rare: every key is checked before the first write)
    redis.call('ZREM', K_READY, id)
    rotation_changed = true
    return nil
  end
  -- Cooling but still in the rotation (an operator's ZADD to the cooling set, e.g. +inf to
  -- bench it until cleared): the cooling set is the truth, so it leaves the rotation.
  local cooling_until = score_of(redis.call('ZSCORE', K_COOLING, id))
  if cooling_until and cooling_until > now then
    check_types()  -- (a repair, rare: every key is checked before the first write)
    redis.call('ZREM', K_READY, id)
    rotation_changed = true
    consider_until(cooling_until)
    return nil
  end
  local def = nil
  if need_def then
    def = check_def(decode(raw))
    if not def then return nil end
  end
  if model ~= '' then
    local pair_until = score_of(redis.call('ZSCORE', K_COOLING, id .. '|' .. model))
    if pair_until and pair_until > now then
      consider_until(pair_until)
      return nil
    end
  end
  return raw, def
end

local chosen, chosen_def, chosen_raw, chosen_seq = nil, nil, nil, nil
local reason = 'rotation'
local chosen_gen = nil  -- read once per pick, only when a session needs it

-- Sticky session: keep the bound profile while it is ready, of the same generation, unexpired.
if session_key then
  local binding = redis.call('GET', session_key)
  if binding then
    local id, gen, expires = string.match(binding, '^([^\t]*)\t([^\t]*)\t([^\t]*)$')
    local seq = id and tonumber(expires) and tonumber(expires) > now
      and redis.call('ZSCORE', K_READY, id)
    if seq and redis.call('HGET', K_STATE, id .. ':gen') == gen then
      local raw = usable(id)
      if raw then
        chosen, chosen_raw, chosen_seq, chosen_gen, reason = id, raw, seq, gen, 'sticky'
      end
    end
  end
end

-- Walks read one entry first (the common case: it is usable) and then pages of 16.
local PAGE = 16
local function page_size(offset) if offset == 0 then return 1 end return PAGE end

-- Take the first usable profile of a page of the ready set (id, seq flat).
local function first_usable(page)
  for i = 1, #page, 2 do
    local raw = usable(page[i])
    if raw then
      chosen, chosen_raw, chosen_seq = page[i], raw, page[i + 1]
      return
    end
  end
end

-- random: start at a random rank and take the first usable profile from there (wrapping).
if not chosen and strategy == 'random' then
  local count = redis.call('ZCARD', K_READY)
  local start = math.min(count - 1, math.floor(fraction * count))
  local offset = 0
  while not chosen and offset < count do
    local first = (start + offset) % count
    local page = redis.call('ZRANGE', K_READY, first,
      math.min(first + page_size(offset), count) - 1, 'WITHSCORES')
    if #page == 0 then break end
    first_usable(page)
    offset = offset + #page / 2
    if rotation_changed then
      count, offset, rotation_changed = redis.call('ZCARD', K_READY), 0, false
      start = math.min(count - 1, math.floor(fraction * count))
    end
  end
end

-- priority: the lexicographic index puts the highest priority (OAuth first) and, within it,
-- the least recently picked profile first.
if not chosen and strategy == 'priority' then
  local offset = 0
  while not chosen do
    local size = page_size(offset)
    local page = redis.call('ZRANGEBYLEX', K_RANKED, '-', '+', 'LIMIT', offset, size)
    if #page == 0 then break end
    local restart, dropped = false, 0
    for _, member in ipairs(page) do
      local id = string.match(member, '^[^|]*|[^|]*|[^|]*|(.*)$')
      local seq = id and redis.call('ZSCORE', K_READY, id)
      local raw, def = nil, nil
      if seq then raw, def = usable(id, true) end
      if not seq then
        -- Left behind by a cooldown or removal (the ranked index is repaired lazily).
        check_types()
        redis.call('ZREM', K_RANKED, member)
        dropped = dropped + 1
      elseif def and rank_member(def, seq, id) ~= member then
        -- Priority or type edited by hand: re-index it and walk again from the top, since
        -- its new place may come earlier. Each stale entry is repaired once.
        check_types()
        redis.call('ZREM', K_RANKED, member)
        redis.call('ZADD', K_RANKED, 0, rank_member(def, seq, id))
        restart = true
        break
      elseif def then
        chosen, chosen_def, chosen_raw, chosen_seq = id, def, raw, seq
        break
      end
    end
    if restart then offset = 0 elseif not chosen then offset = offset + size - dropped end
  end
end

-- round-robin (and any unknown strategy name): the least recently picked usable profile.
if not chosen and strategy ~= 'priority' and strategy ~= 'random' then
  local offset = 0
  while not chosen do
    local size = page_size(offset)
    local page = redis.call('ZRANGE', K_READY, offset, offset + size - 1, 'WITHSCORES')
    if #page == 0 then break end
    first_usable(page)
    offset = offset + size
    if rotation_changed then offset, rotation_changed = 0, false end
  end
end

if not chosen then
  -- The soonest whole-profile cooldown: the first member without '|' ((profile, model) pairs
  -- of other models do not help this caller) that is a profile (not an id an operator's ZADD
  -- put there). Bounded: past 64 entries, the last score read is a lower bound of it, which is
  -- a safe "try again by" for the caller.
  local offset, found = 0, false
  while not found and offset < 64 do
    local page = redis.call('ZRANGE', K_COOLING, offset, offset + PAGE - 1, 'WITHSCORES')
    if #page == 0 then break end
    for i = 1, #page, 2 do
      if not string.find(page[i], '|', 1, true)
          and redis.call('HEXISTS', K_PROFILES, page[i]) == 1 then
        consider_until(score_of(page[i + 1]))
        found = true
        break
      end
    end
    if not found and #page < 2 * PAGE then break end
    if not found and offset + PAGE >= 64 then consider_until(score_of(page[#page])) end
    offset = offset + PAGE
  end
  if soonest == nil then return {0, -1, now} end
  return {0, math.max(0, soonest - now), now}
end

-- Writes start here. Every key written below was read above (profiles, cooling, ready, ranked
-- when the walk is by priority, the session key), but for the state hash; and a meta hash of
-- another type fails in next_counter before it writes. So only the state hash is checked.
check_types(2)
-- Rotation: a pick (not a sticky hit) moves the profile to the end of its rotation. Only
-- priority picks keep the ranked index in step; after round-robin or random picks its
-- entries carry an old sequence, which the priority walk notices and repairs (above).
if reason == 'rotation' then
  -- (Past the place it leaves: a counter set back by hand would otherwise put it in front.)
  local place = score_of(chosen_seq)
  local seq = next_counter('seq', place ~= math.huge and place or nil)
  redis.call('ZADD', K_READY, seq, chosen)
  if strategy == 'priority' then
    redis.call('ZREM', K_RANKED, rank_member(chosen_def, chosen_seq, chosen))
    redis.call('ZADD', K_RANKED, 0, rank_member(chosen_def, seq, chosen))
  end
end
redis.call('HSET', K_STATE, chosen .. ':last_used_ms', int(now))

if session_key and session_ttl > 0 then
  chosen_gen = chosen_gen or redis.call('HGET', K_STATE, chosen .. ':gen') or ''
  local binding = chosen .. '\t' .. chosen_gen .. '\t' .. int(now + session_ttl)
  -- Validity is decided on Redis time above; the key's own TTL (the same) collects it.
  redis.call('SET', session_key, binding, 'PX', int(session_ttl))
end

return {1, chosen, chosen_raw, reason, now}
