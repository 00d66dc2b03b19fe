-- _pool.lua: keys and state helpers of the credential-pool scripts (--!include _pool.lua).
-- Every pool script receives the seven pool keys as KEYS[1..7] in this order:
--   1 profiles (HASH id -> definition JSON)
--   2 state    (HASH "<member>:<field>" -> value, see below)
--   3 cooling  (ZSET id or "<id>|<model>" -> cooldown end, ms)
--   4 ready    (ZSET id -> rotation seq: the profiles not cooling down)
--   5 events   (STREAM)
--   6 ranked   (ZSET lex "<inverse priority>|<type rank>|<seq>|<id>")
--   7 meta     (HASH seq, gen: the pool's counters)
-- The state hash is flat, so that a script (or an operator's HGETALL) reads one value without
-- parsing a record. A member is a profile id or "<id>|<model>" (ids cannot contain '|'); field
-- names contain no ':', so a hash field splits on its last ':' into member and field name.
-- The cooldown truth is the cooling set; the state fields only carry counters and history, so
-- a field edited into garbage never changes which profiles can be picked.

local K_PROFILES, K_STATE, K_COOLING, K_READY, K_EVENTS, K_RANKED, K_META
local ALL_CHECKED  -- whether check_types() checked every key of this call already
BEGIN[#BEGIN + 1] = function()
  K_PROFILES, K_STATE, K_COOLING, K_READY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  K_EVENTS, K_RANKED, K_META = KEYS[5], KEYS[6], KEYS[7]
  ALL_CHECKED = false
end

-- The elements of a list as separate values (the embedded backend's Lua has no unpack).
local function unpack(list, i)
  i = i or 1
  if i <= #list then return list[i], unpack(list, i + 1) end
end

-- The numeric fields of a profile (ms on Redis time, or counts), then its text fields.
local NUMBER_FIELDS = {
  'failures', 'billing_failures', 'failures_total', 'last_failure_ms', 'last_billing_ms',
  'last_error_ms', 'cooldown_until_ms', 'last_used_ms',
}
-- gen: the profile's generation, a token that a sticky session's binding names (a profile
-- removed and added again gets a new one, so old bindings stop holding). It is kept here, not
-- in the definition, so that a pick reads it without decoding JSON (decoding was a quarter of
-- a pick's Redis CPU). Definitions imported from a format-1 export still carry a "gen" of
-- their own, which nothing reads.
local TEXT_FIELDS = {'gen', 'cooldown_kind', 'last_error', 'last_error_kind'}
-- The fields of a (profile, model) pair: both numeric.
local PAIR_FIELDS = {'failures', 'last_failure_ms'}

-- The hash field names of one member's fields.
local function field_names(member, names)
  local out = {}
  for i, name in ipairs(names) do out[i] = member .. ':' .. name end
  return out
end

-- A stored numeric value: (number, true) when it is a non-negative finite number, (nil, true)
-- when absent, (nil, false) when it is anything else (a hand edit).
local function read_number(text)
  if text == false or text == nil then return nil, true end
  local n = tonumber(text)
  if n == nil or n ~= n or n < 0 or n >= 1e300 then return nil, false end
  return n, true
end

-- Scores at or beyond 10^15 read as infinite: as a deadline (ms) the year 33658, as a rotation
-- sequence more than any counter reaches (and more than the priority index's 15 digits hold).
local FAR = 1e15

-- A sorted-set score as a number (Redis writes infinities as 'inf' and '-inf', an export as
-- '+inf'); nil for none. Scores at or beyond FAR read as +/-inf, so that a hand-written 1e300
-- means what +inf means and no reply or text ever carries a number too large for it.
-- A cooldown ending at +inf is one an operator set to last until cleared (ZADD ... +inf id); a
-- ready profile at +inf is last in the rotation, at -inf first, until its next pick (see
-- docs/pools.md).
local function score_of(text)
  if text == 'inf' or text == '+inf' then return math.huge end
  if text == '-inf' then return -math.huge end
  local n = tonumber(text)
  if n == nil or n ~= n then return nil end
  if n >= FAR then return math.huge end
  if n <= -FAR then return -math.huge end
  return n
end

-- The type each key of a pool call holds, by its place in KEYS (8: a session key).
local KEY_TYPES = {'hash', 'hash', 'zset', 'zset', 'stream', 'zset', 'hash', 'string'}

-- Raise an error naming the first of the given keys (places in KEYS; none given: every key of
-- the call) that holds another type than the pool keeps there (a hand edit). A script calls
-- it before its first write for the keys it has not read yet: Redis does not undo a script's
-- earlier writes when a later command fails. (Each key costs a TYPE call: all of them on
-- every pick added half to its Redis time, so a pick checks only the key it writes unread,
-- and every key only on the rare paths that write more, such as a recovery.)
local function check_types(...)
  if ALL_CHECKED then return end
  local places = {...}
  if #places == 0 then
    for i = 1, #KEYS do places[i] = i end
    ALL_CHECKED = true
  end
  for _, i in ipairs(places) do
    expect_type(KEYS[i], KEY_TYPES[i])
  end
end

-- Read numeric fields of a member, and text fields (texts: optional), in one HMGET. Returns a
-- table name -> number or text (absent and broken fields left out) and the list of the broken
-- numeric fields' names (empty when none is).
local function read_numbers(member, names, texts)
  local all = {}
  for i, name in ipairs(names) do all[i] = name end
  for _, name in ipairs(texts or {}) do all[#all + 1] = name end
  local stored = redis.call('HMGET', K_STATE, unpack(field_names(member, all)))
  local values, broken = {}, {}
  for i, name in ipairs(all) do
    if i > #names then
      values[name] = stored[i] or nil
    else
      local n, ok = read_number(stored[i])
      values[name] = n
      if not ok then broken[#broken + 1] = name end
    end
  end
  return values, broken
end

-- Write fields of a member: values is a table name -> number or text (numbers are written as
-- integers: every numeric field is a count or a time in ms).
local function write_fields(member, values)
  local args = {}
  for name, value in pairs(values) do
    if type(value) == 'number' then value = int(value) end
    args[#args + 1] = member .. ':' .. name
    args[#args + 1] = value
  end
  if #args > 0 then redis.call('HSET', K_STATE, unpack(args)) end
end

-- Delete fields of a member.
local function delete_fields(member, names)
  redis.call('HDEL', K_STATE, unpack(field_names(member, names)))
end

-- The highest rotation sequence of the ready set (0 if none): a place at +/-inf or beyond FAR,
-- or below zero, is no sequence the counter handed out.
local function last_sequence()
  local last = redis.call('ZREVRANGEBYSCORE', K_READY, '(' .. FAR, 0, 'LIMIT', 0, 1, 'WITHSCORES')
  return math.floor(tonumber(last[2]) or 0)
end

-- The next value of a pool counter: 'seq' (rotation) or 'gen' (generations), above `above`
-- when given (the place a pick moves a profile on from). A counter edited by hand into
-- something HINCRBY refuses or past FAR, deleted while the pool has profiles, or set back to
-- `above` or below, is first set past every value it may have handed out (seq: the highest
-- rotation sequence; gen: Redis time in ms, beyond any count of generations), so that a hand
-- edit never stops picks or additions, and a rotation never restarts ahead of the profiles
-- waiting in it (a counter set back would put the picked profile in front, again and again).
local function next_counter(name, above)
  local reply = redis.pcall('HINCRBY', K_META, name, 1)
  if type(reply) == 'number' and reply > 1 and reply < FAR and not (above and reply <= above) then
    return reply
  end
  -- The counter was absent (reply 1), HINCRBY refused its value (an error reply), it reached
  -- FAR (a hand edit: no sequence is that large), or it is behind the sequence it must pass.
  local restart
  if name == 'seq' then
    restart = last_sequence()
  elseif reply == 1 and redis.call('HLEN', K_PROFILES) <= 1 then
    restart = 0  -- the first profile of a new pool
  else
    restart = now_ms()
  end
  if reply == 1 and restart < 1 then return 1 end  -- a new pool: 1 is right
  redis.call('HSET', K_META, name, int(restart))
  return redis.call('HINCRBY', K_META, name, 1)
end

-- Delete every state field of a profile itself (not those of its (profile, model) pairs).
local function drop_profile_fields(id)
  delete_fields(id, NUMBER_FIELDS)
  delete_fields(id, TEXT_FIELDS)
end

local function emit(etype, id, data, now)
  emit_to(K_EVENTS, etype, id, data, now)
end
