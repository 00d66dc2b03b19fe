-- _pool.lua: helpers of the credential-pool scripts (included with --!include _pool.lua).
-- Pool scripts receive the seven static pool keys as KEYS[1..7] in this order:
--   1 profiles (HASH id -> definition JSON)
--   2 state (HASH id -> state JSON, "<id>|<model>" -> pair counters JSON)
--   3 ready (ZSET id -> rotation seq)         4 ranked (ZSET lex "<inv prio>|<type>|<seq>|<id>")
--   5 cooling (ZSET id or "<id>|<model>" -> until ms)
--   6 meta (HASH seq, gen, "used:<id>" -> last picked ms)   7 events (STREAM)
-- Ids cannot contain '|', so a member or field with one is always a (profile, model) pair.
-- Seven keys, not ten: every key is an argument the client encodes and Redis copies into Lua
-- on every call, and these scripts are the hot path.
-- The cooldown truth is the cooling set; the state record only carries counters and history,
-- so a state record edited into garbage never changes which profiles can be picked.
-- Every helper below is a closure that Lua creates on every call of every script including
-- this file, so only helpers that the hot scripts share live here (see _pool_admin.lua).

local K_PROFILES, K_STATE, K_READY, K_RANKED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_COOLING, K_META, K_EVENTS = KEYS[5], KEYS[6], KEYS[7]

-- A stored number that must be a non-negative number when present.
local function bad_number(v)
  return v ~= nil and (type(v) ~= 'number' or v < 0 or v ~= v)
end

-- Parse a stored state record; returns (state, nil) or (nil, broken_field). No record: {}.
local function parse_state(raw)
  if not raw then return {}, nil end
  local s = decode(raw)
  if not s then return nil, 'state' end
  if bad_number(s.failures) then return nil, 'failures' end
  if bad_number(s.billing_failures) then return nil, 'billing_failures' end
  if bad_number(s.last_failure_ms) then return nil, 'last_failure_ms' end
  if bad_number(s.last_billing_ms) then return nil, 'last_billing_ms' end
  if bad_number(s.failures_total) then return nil, 'failures_total' end
  return s, nil
end

local function save_state(id, s)
  redis.call('HSET', K_STATE, id, cjson.encode(s))
end

-- Check a decoded definition; returns (def, nil) or (nil, broken field).
local function check_def(d)
  if not d then return nil, 'definition' end
  if type(d.priority) ~= 'number' or d.priority ~= d.priority then return nil, 'priority' end
  if d.type ~= 'api-key' and d.type ~= 'oauth' then return nil, 'type' end
  if type(d.gen) ~= 'number' then return nil, 'gen' end
  if type(d.credential) ~= 'table' then return nil, 'credential' end
  return d, nil
end

-- Load a profile's definition; returns (def, raw, nil), (nil, nil, 'missing') or (nil, raw, field).
local function load_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local d, broken = check_def(decode(raw))
  return d, raw, broken
end

-- The lexicographic rank member: highest priority first, OAuth before API keys, then rotation.
local function rank_member(def, seq, id)
  local inverse = 1000000000 - math.floor(def.priority)
  local type_rank = (def.type == 'oauth') and '0' or '1'
  return string.format('%010d', inverse) .. '|' .. type_rank .. '|' .. string.format('%015d', seq) .. '|' .. id
end

local function emit(etype, id, data, now)
  emit_to(K_EVENTS, etype, id, data, now)
end

-- Put a profile at the end of the rotation (ready + ranked). A broken definition stays out of
-- the ranked index (selection skips it) until add_profile rewrites it.
local function enqueue(id, def)
  local seq = redis.call('HINCRBY', K_META, 'seq', 1)
  redis.call('ZADD', K_READY, seq, id)
  if def then redis.call('ZADD', K_RANKED, 0, rank_member(def, seq, id)) end
  return seq
end

-- Lazy recovery: move profiles whose cooldown ended back into the rotation and emit
-- profile:recovered exactly once (this runs inside the atomic script that observes it).
-- The check costs one read: the soonest deadline is the first member of the cooling set
-- (whole profiles and (profile, model) pairs alike), so nothing else has to remember it.
local SWEEP_LIMIT = 100
local function sweep(now)
  local first = redis.call('ZRANGE', K_COOLING, 0, 0, 'WITHSCORES')
  if not first[2] or tonumber(first[2]) > now then return end
  local due_now = redis.call('ZRANGEBYSCORE', K_COOLING, '-inf', now, 'LIMIT', 0, SWEEP_LIMIT)
  for _, member in ipairs(due_now) do
    redis.call('ZREM', K_COOLING, member)
    local id, model = string.match(member, '^([^|]*)|(.*)$')
    if id then
      -- A (profile, model) pair: the profile never left the rotation.
      if redis.call('HEXISTS', K_PROFILES, id) == 1 then
        emit('profile:recovered', id, {model = model}, now)
      end
    elseif redis.call('HEXISTS', K_PROFILES, member) == 1 then
      enqueue(member, (load_def(member)))
      local s = parse_state(redis.call('HGET', K_STATE, member))
      if s and s.cooldown_kind then
        s.cooldown_until_ms = nil
        s.cooldown_kind = nil
        save_state(member, s)
      end
      emit('profile:recovered', member, {}, now)
    end
  end
end
