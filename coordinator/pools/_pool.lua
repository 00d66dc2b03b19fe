-- _pool.lua: helpers of the credential-pool scripts (included with --!include _pool.lua).
-- Pool scripts receive the seven static pool keys as KEYS[1..7] in this order:
--   1 profiles (HASH id -> definition JSON)
--   2 state (HASH id -> state JSON, "<id>|<model>" -> pair counters JSON)
--   3 cooling (ZSET id or "<id>|<model>" -> until ms)
--   4 ready (ZSET id -> rotation seq)   5 events (STREAM)
--   6 ranked (ZSET lex "<inv prio>|<type>|<seq>|<id>")
--   7 meta (HASH seq, gen, "used:<id>" -> last picked ms)
-- Ids cannot contain '|', so a member or field with one is always a (profile, model) pair.
-- Seven keys, not ten, and a script that needs fewer is given only the first ones it needs
-- (mark_success the first two, mark_failed the first five): every key is an argument the
-- client encodes and Redis copies into Lua on every call (~900 instructions each), and these
-- scripts are the hot path. The others are nil there.
-- The cooldown truth is the cooling set; the state record only carries counters and history,
-- so a state record edited into garbage never changes which profiles can be picked.
-- This file holds what the failure and success reports need; rotation and recovery helpers
-- are in _pool_rotation.lua, the rarer operations' in _pool_admin.lua.

local K_PROFILES, K_STATE, K_COOLING, K_READY, K_EVENTS, K_RANKED, K_META
BEGIN[#BEGIN + 1] = function()
  K_PROFILES, K_STATE, K_COOLING, K_READY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  K_EVENTS, K_RANKED, K_META = KEYS[5], KEYS[6], KEYS[7]
end

-- The last state record this library wrote for each profile (see remember in _lib.lua): the
-- next report on a profile usually reads it, and takes a copy instead of decoding and checking
-- the text (~10% of a failure report's instructions, callgrind).
local WRITTEN_STATES = {by = {}, n = 0}

-- Parse a stored state record (id: the profile's, to find the record this library last wrote
-- for it, or nil); returns (state, nil) or (nil, broken_field). No record: {}.
local function parse_state(raw, id)
  if not raw then return {}, nil end
  local written = id and recall(WRITTEN_STATES, id, raw)
  if written then
    local copy = {}
    for k, v in pairs(written) do copy[k] = v end
    return copy, nil
  end
  local s = decode(raw)
  if not s then return nil, 'state' end
  if bad_number(s.failures) then return nil, 'failures' end
  if bad_number(s.billing_failures) then return nil, 'billing_failures' end
  if bad_number(s.last_failure_ms) then return nil, 'last_failure_ms' end
  if bad_number(s.last_billing_ms) then return nil, 'last_billing_ms' end
  if bad_number(s.failures_total) then return nil, 'failures_total' end
  return s, nil
end

-- Write a state record; s is kept as it is (see WRITTEN_STATES): the caller must not change it
-- afterwards.
local function save_state(id, s)
  local text = cjson.encode(s)
  redis.call('HSET', K_STATE, id, text)
  remember(WRITTEN_STATES, id, text, s)
end

local function emit(etype, id, data, now)
  emit_to(K_EVENTS, etype, id, data, now)
end

