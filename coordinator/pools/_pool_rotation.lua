-- _pool_rotation.lua: definitions, the rotation and lazy recovery (the scripts that pick or
-- change the rotation include it; the failure and success reports do not need it).
--!include _pool.lua

-- Check a decoded definition; returns (def, nil) or (nil, broken field).
local function check_def(d)
  if not d then return nil, 'definition' end
  if type(d.priority) ~= 'number' or d.priority ~= d.priority then return nil, 'priority' end
  if d.type ~= 'api-key' and d.type ~= 'oauth' then return nil, 'type' end
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
-- seq is the profile's ready score (a number, or its text); a place a hand edit put outside the
-- sequences (+/-inf, below zero, a fraction) ranks as its rotation place does: -inf first,
-- +inf last (written as 0 and 10^15 - 1, so that 15 digits always hold it).
local function rank_member(def, seq, id)
  local inverse = 1000000000 - math.floor(def.priority)
  local type_rank = (def.type == 'oauth') and '0' or '1'
  local place = math.min(math.max(math.floor(score_of(seq) or 0), 0), FAR - 1)
  return string.format('%010d', inverse) .. '|' .. type_rank .. '|'
    .. string.format('%015d', place) .. '|' .. id
end

-- Put a profile at the end of the rotation (ready + ranked). A broken definition stays out of
-- the ranked index (selection skips it) until add_profile rewrites it.
local function enqueue(id, def)
  local seq = next_counter('seq')
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
  if not first[2] or score_of(first[2]) > now then return end
  check_types()  -- a recovery writes to most keys of the pool (and is rare): check them all
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
      delete_fields(member, {'cooldown_kind', 'cooldown_until_ms'})
      emit('profile:recovered', member, {}, now)
    end
  end
end
