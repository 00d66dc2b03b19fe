-- status.lua: every profile of a pool with its health, on Redis time.
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] failure window ms
-- Returns {now, {id, definition JSON or '', state (flat: field name, value; the fields that
--   are set), cooling until ms or '', ready 0|1, effective failures, effective billing
--   failures, broken field or ''}..., {pair, until}...}
--   The broken field names the first invalid stored value, if any; the last element lists
--   (profile|model) cooldowns as a flat array. A member of the ready or cooling set that names
--   no profile has a row too (definition '', broken field 'definition').
-- Recoveries that are due are applied first (and announced once), as in every pool script.
--!include _pool_admin.lua

local window = tonumber(ARGV[2])
local now = now_ms()
sweep(now)

-- A profile's state fields that are set, flat (name, value).
local function state_of(id)
  local names = {}
  for _, name in ipairs(NUMBER_FIELDS) do names[#names + 1] = name end
  for _, name in ipairs(TEXT_FIELDS) do names[#names + 1] = name end
  local stored = redis.call('HMGET', K_STATE, unpack(field_names(id, names)))
  local flat = {}
  for i, name in ipairs(names) do
    if stored[i] then
      flat[#flat + 1] = name
      flat[#flat + 1] = stored[i]
    end
  end
  return flat
end

-- 'ranked' when the profile's entry in the priority index has another score than 0 (a hand
-- edit: the index is ordered by its members alone, and such an entry sorts after all others).
local function rank_broken(def, seq, id)
  if not (def and seq) then return nil end
  local score = redis.call('ZSCORE', K_RANKED, rank_member(def, seq, id))
  if score and tonumber(score) ~= 0 then return 'ranked' end
  return nil
end

local rows = {}
for _, id in ipairs(redis.call('HKEYS', K_PROFILES)) do
  local def, raw_def, def_broken = load_def(id)
  local state, state_broken = read_numbers(id, NUMBER_FIELDS)
  local failures, billing = 0, 0
  if now - (state.last_failure_ms or 0) <= window then failures = state.failures or 0 end
  if now - (state.last_billing_ms or 0) <= window then billing = state.billing_failures or 0 end
  local seq = redis.call('ZSCORE', K_READY, id)
  rows[#rows + 1] = {id, raw_def or '', state_of(id),
    redis.call('ZSCORE', K_COOLING, id) or '', seq and 1 or 0, failures, billing,
    def_broken or state_broken[1] or rank_broken(def, seq, id) or ''}
end
-- A member of the rotation or of the cooling set that names no profile (an operator's ZADD of
-- an id that is none, or of a pair of one) gets a row of its own, its definition named broken,
-- so that the status shows what picks skip.
local listed = {}
for _, row in ipairs(rows) do listed[row[1]] = true end
local function unlisted(id)
  if listed[id] then return end
  listed[id] = true
  rows[#rows + 1] = {id, '', {}, redis.call('ZSCORE', K_COOLING, id) or '',
    redis.call('ZSCORE', K_READY, id) and 1 or 0, 0, 0, 'definition'}
end
for _, id in ipairs(redis.call('ZRANGE', K_READY, 0, -1)) do unlisted(id) end
local pairs_cooling = {}
local all = redis.call('ZRANGE', K_COOLING, 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  unlisted(string.match(all[i], '^[^|]*'))
  if string.find(all[i], '|', 1, true) then
    pairs_cooling[#pairs_cooling + 1] = all[i]
    pairs_cooling[#pairs_cooling + 1] = all[i + 1]
  end
end
return {now, rows, pairs_cooling}
