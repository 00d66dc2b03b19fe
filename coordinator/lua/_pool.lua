-- _pool.lua: helpers of the credential-pool scripts (included with --!include _pool.lua).
-- Pool scripts receive the ten static pool keys as KEYS[1..10] in this order:
--   1 profiles (HASH id -> definition JSON)   2 state (HASH id -> state JSON)
--   3 ready (ZSET id -> rotation seq)         4 ranked (ZSET lex "<inv prio>|<type>|<seq>|<id>")
--   5 cooling (ZSET id -> until ms)           6 model_cooling (ZSET "<id>|<model>" -> until ms)
--   7 model_state (HASH "<id>|<model>" -> JSON)
--   8 meta (HASH seq, gen, next_due)          9 events (STREAM)   10 usage (HASH id -> last used ms)
-- The cooldown truth is the cooling sets; the state record only carries counters and history,
-- so a state record edited into garbage never changes which profiles can be picked.

local K_PROFILES, K_STATE, K_READY, K_RANKED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_COOLING, K_MCOOLING, K_MSTATE, K_META, K_EVENTS = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_USAGE = KEYS[10]
local NEVER = 9007199254740991  -- 2^53 - 1: "nothing is due"

-- Fields of a state record that must be non-negative numbers when present.
local STATE_NUMBERS = {
  'failures', 'billing_failures', 'last_failure_ms', 'last_billing_ms', 'cooldown_until_ms',
  'successes', 'last_success_ms', 'failures_total'
}

-- Load a profile's state; returns (state, nil) or (nil, broken_field).
local function load_state(id)
  local raw = redis.call('HGET', K_STATE, id)
  if not raw then return {}, nil end
  local s = decode(raw)
  if not s then return nil, 'state' end
  for _, f in ipairs(STATE_NUMBERS) do
    local v = s[f]
    if v ~= nil and (type(v) ~= 'number' or v < 0 or v ~= v) then return nil, f end
  end
  return s, nil
end

local function save_state(id, s)
  redis.call('HSET', K_STATE, id, cjson.encode(s))
end

-- Load a profile's definition; returns (def, raw, nil), (nil, nil, 'missing') or (nil, raw, field).
local function load_def(id)
  local raw = redis.call('HGET', K_PROFILES, id)
  if not raw then return nil, nil, 'missing' end
  local d = decode(raw)
  if not d then return nil, raw, 'definition' end
  if type(d.priority) ~= 'number' or d.priority ~= d.priority then return nil, raw, 'priority' end
  if d.type ~= 'api-key' and d.type ~= 'oauth' then return nil, raw, 'type' end
  if type(d.gen) ~= 'number' then return nil, raw, 'gen' end
  if type(d.credential) ~= 'table' then return nil, raw, 'credential' end
  return d, raw, nil
end

-- The lexicographic rank member: highest priority first, OAuth before API keys, then rotation.
local function rank_member(def, seq, id)
  local inverse = 1000000000 - math.floor(def.priority)
  local type_rank = (def.type == 'oauth') and '0' or '1'
  return string.format('%010d', inverse) .. '|' .. type_rank .. '|' .. string.format('%015d', seq) .. '|' .. id
end

local function id_of_member(member)
  return string.match(member, '^[^|]*|[^|]*|[^|]*|(.*)$')
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

-- Remember the soonest cooldown end, so that sweep() costs one HGET until something is due.
local function note_due(until_ms)
  local due = tonumber(redis.call('HGET', K_META, 'next_due'))
  if not due or until_ms < due then redis.call('HSET', K_META, 'next_due', int(until_ms)) end
end

-- Lazy recovery: move profiles whose cooldown ended back into the rotation and emit
-- profile:recovered exactly once (this runs inside the atomic script that observes it).
-- A missing next_due (deleted by hand, or after recheck_due) means "look now".
local SWEEP_LIMIT = 100
local function sweep(now)
  local due = tonumber(redis.call('HGET', K_META, 'next_due'))
  if due and due > now then return end
  local ids = redis.call('ZRANGEBYSCORE', K_COOLING, '-inf', now, 'LIMIT', 0, SWEEP_LIMIT)
  for _, id in ipairs(ids) do
    redis.call('ZREM', K_COOLING, id)
    if redis.call('HEXISTS', K_PROFILES, id) == 1 then
      enqueue(id, (load_def(id)))
      local s = load_state(id)
      if s then
        s.cooldown_until_ms = nil
        s.cooldown_kind = nil
        save_state(id, s)
      end
      emit('profile:recovered', id, {}, now)
    end
  end
  local pairs_due = redis.call('ZRANGEBYSCORE', K_MCOOLING, '-inf', now, 'LIMIT', 0, SWEEP_LIMIT)
  for _, pair in ipairs(pairs_due) do
    redis.call('ZREM', K_MCOOLING, pair)
    local id, model = string.match(pair, '^([^|]*)|(.*)$')
    if id and redis.call('HEXISTS', K_PROFILES, id) == 1 then
      emit('profile:recovered', id, {model = model}, now)
    end
  end
  local next_due = NEVER
  local first = redis.call('ZRANGE', K_COOLING, 0, 0, 'WITHSCORES')
  if first[2] then next_due = math.min(next_due, tonumber(first[2])) end
  first = redis.call('ZRANGE', K_MCOOLING, 0, 0, 'WITHSCORES')
  if first[2] then next_due = math.min(next_due, tonumber(first[2])) end
  redis.call('HSET', K_META, 'next_due', int(next_due))
end
