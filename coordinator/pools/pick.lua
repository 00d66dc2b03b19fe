-- pick.lua: choose the next profile of a pool, honouring stickiness, cooldowns and exclusions.
-- KEYS[1..7]  the static pool keys (see _pool.lua); KEYS[8] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] strategy: round-robin | priority | random
-- Optional, left out from the end when empty (each argument costs the client and Redis time):
-- ARGV[3] model ('' for none)   ARGV[4] session TTL ms ('' for none)
-- ARGV[5] a uniform random fraction in [0, 1) from the caller (used by the random strategy:
--   entropy is not shared state, and Redis's Lua generator gives every server the same
--   sequence)
-- ARGV[6] count of excluded ids   ARGV[7..] excluded profile ids
-- Returns {1, id, definition JSON, reason, now}   reason: sticky | rotation
--      or {0, soonest recovery in ms (-1 if none is cooling), now}
-- Cost: O(log n) plus the profiles it has to skip (excluded, model-cooled, broken).
--!include _pool_rotation.lua

local strategy = ARGV[2]
local model = ARGV[3] or ''
local session_ttl = tonumber(ARGV[4]) or 0
local fraction = tonumber(ARGV[5]) or 0
local excluded = nil  -- a table only when the caller excludes something (the hot path does not)
local excluded_count = tonumber(ARGV[6]) or 0
if excluded_count > 0 then
  excluded = {}
  for i = 1, excluded_count do excluded[ARGV[6 + i]] = true end
end
local session_key = KEYS[8]

local now = now_ms()
sweep(now)

local soonest = nil
local function consider_until(t)
  if t and (soonest == nil or t < soonest) then soonest = t end
end

-- add_profile ends every definition with these fields, so the generation of one written by it
-- is a pattern match away (decoding the JSON cost a plain pick ~10% of its server time). The
-- match is anchored where a plain search near the end finds '"gen":': an unanchored pattern
-- is tried at every byte of the JSON (about 15% of a pick's instructions, measured with
-- callgrind). The tail is at most ~100 bytes, numbers of absurd length fall back to decoding.
local WRITTEN = '^"gen":(%d+),"created_ms":%d+,"updated_ms":%d+}$'
local TAIL = 120

-- A ready profile is usable when not excluded, its definition is sound and, for a model, the
-- (profile, model) pair is not cooling down. Returns its generation (text), its raw JSON and,
-- when decoded (need_def, or a definition not in the shape add_profile writes), the definition.
-- The caller parses the definition it is handed and picks again without it if that fails.
local function usable(id, need_def)
  if excluded and excluded[id] then return nil end
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil end
  local def, gen = nil, nil
  if not need_def then
    local at = string.find(raw, '"gen":', math.max(1, #raw - TAIL), true)
    while at do
      gen = string.match(raw, WRITTEN, at)
      if gen then break end
      at = string.find(raw, '"gen":', at + 1, true)
    end
  end
  if not gen then
    def = check_def(decode(raw))
    if not def then return nil end
    gen = int(def.gen)
  end
  if model ~= '' then
    local pair_until = redis.call('ZSCORE', K_COOLING, id .. '|' .. model)
    if pair_until and tonumber(pair_until) > now then
      consider_until(tonumber(pair_until))
      return nil
    end
  end
  return gen, raw, def
end

local function id_of_member(member)
  return string.match(member, '^[^|]*|[^|]*|[^|]*|(.*)$')
end

local chosen, chosen_gen, chosen_raw, chosen_def, chosen_seq = nil, nil, nil, nil, nil
local reason = 'rotation'

-- Sticky session: keep the bound profile while it is ready, of the same generation, unexpired.
if session_key then
  local binding = redis.call('GET', session_key)
  if binding then
    local id, gen, expires = string.match(binding, '^([^\t]*)\t([^\t]*)\t([^\t]*)$')
    local seq = id and tonumber(expires) and tonumber(expires) > now
      and redis.call('ZSCORE', K_READY, id)
    if seq then
      local bound_gen, raw = usable(id)
      if bound_gen == gen then
        chosen, chosen_gen, chosen_raw, chosen_seq, reason = id, bound_gen, raw, seq, 'sticky'
      end
    end
  end
end

-- Walks read one entry first (the common case: it is usable) and then pages of 16; a
-- WITHSCORES page costs the script about a microsecond per entry.
local PAGE = 16
local function page_size(offset) if offset == 0 then return 1 end return PAGE end

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
    for i = 1, #page, 2 do
      local gen, raw = usable(page[i])
      if gen then chosen, chosen_gen, chosen_raw, chosen_seq = page[i], gen, raw, page[i + 1]; break end
    end
    offset = offset + #page / 2
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
      local id = id_of_member(member)
      local seq = id and redis.call('ZSCORE', K_READY, id)
      local gen, raw, def = nil, nil, nil
      if seq then gen, raw, def = usable(id, true) end
      if not seq then
        -- Left behind by a cooldown or removal (the ranked index is repaired lazily).
        redis.call('ZREM', K_RANKED, member)
        dropped = dropped + 1
      elseif def and rank_member(def, tonumber(seq), id) ~= member then
        -- Priority or type edited by hand: re-index it and walk again from the top, since
        -- its new place may come earlier. Each stale entry is repaired once.
        redis.call('ZREM', K_RANKED, member)
        redis.call('ZADD', K_RANKED, 0, rank_member(def, tonumber(seq), id))
        restart = true
        break
      elseif def then
        chosen, chosen_gen, chosen_raw, chosen_def, chosen_seq = id, gen, raw, def, seq
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
    local page
    if offset == 0 then  -- the common case (page_size(0) is 1), bounds as text (see EVENTS_MAXLEN)
      page = redis.call('ZRANGE', K_READY, '0', '0', 'WITHSCORES')
    else
      page = redis.call('ZRANGE', K_READY, offset, offset + size - 1, 'WITHSCORES')
    end
    if #page == 0 then break end
    for i = 1, #page, 2 do
      local gen, raw = usable(page[i])
      if gen then chosen, chosen_gen, chosen_raw, chosen_seq = page[i], gen, raw, page[i + 1]; break end
    end
    offset = offset + size
  end
end

if not chosen then
  -- The soonest whole-profile cooldown: the first member without '|' ((profile, model) pairs
  -- of other models do not help this caller). Bounded: past 64 pairs, the last score read is
  -- a lower bound of it, which is a safe "try again by" for the caller.
  local offset, found = 0, false
  while not found and offset < 64 do
    local page = redis.call('ZRANGE', K_COOLING, offset, offset + PAGE - 1, 'WITHSCORES')
    if #page == 0 then break end
    for i = 1, #page, 2 do
      if not string.find(page[i], '|', 1, true) then
        consider_until(tonumber(page[i + 1]))
        found = true
        break
      end
    end
    if not found and #page < 2 * PAGE then break end
    if not found and offset + PAGE >= 64 then consider_until(tonumber(page[#page])) end
    offset = offset + PAGE
  end
  if soonest == nil then return {0, -1, now} end
  return {0, math.max(0, soonest - now), now}
end

-- Rotation: a pick (not a sticky hit) moves the profile to the end of its rotation. Only
-- priority picks keep the ranked index in step; after round-robin or random picks its
-- entries carry an old sequence, which the priority walk notices and repairs (above).
if reason == 'rotation' then
  local seq = redis.call('HINCRBY', K_META, 'seq', 1)
  redis.call('ZADD', K_READY, seq, chosen)
  if strategy == 'priority' then
    redis.call('ZREM', K_RANKED, rank_member(chosen_def, tonumber(chosen_seq), chosen))
    redis.call('ZADD', K_RANKED, 0, rank_member(chosen_def, seq, chosen))
  end
end
redis.call('HSET', K_META, 'used:' .. chosen, int(now))

if session_key and session_ttl > 0 then
  local binding = chosen .. '\t' .. chosen_gen .. '\t' .. int(now + session_ttl)
  -- The key's own TTL only collects garbage; validity is decided on Redis time above.
  redis.call('SET', session_key, binding, 'PX', int(session_ttl + 60000))
end

return {1, chosen, chosen_raw, reason, now}
