-- clear_cooldown.lua: end a profile's cooldowns now and reset its counters (operator action).
-- KEYS[1..7]  the pool keys (see _pool.lua)
-- ARGV[1] clock offset ms  ARGV[2] profile id
-- Returns {'missing'} | {'cleared', was cooling 0|1}
-- Also repairs state fields edited into an invalid form (they are deleted; the usage figures
-- that are still readable are kept), gives a profile whose generation was deleted a new one,
-- puts it back in the rotation keys (ready, ranked) if one of them was deleted, and gives it an
-- ordinary place in the rotation if a hand edit put it at +/-inf or between sequences.
--!include _pool_admin.lua

local id = ARGV[2]
check_types()  -- (before the first write: see _pool.lua)
local now = now_ms()
sweep(now)
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
local def = load_def(id)
local was_cooling = redis.call('ZREM', K_COOLING, id)
local pair_count = redis.call('ZCARD', K_COOLING)
drop_model_entries(id)
local pairs_cleared = pair_count - redis.call('ZCARD', K_COOLING)
-- Back in the rotation, and in the priority index (deleted by hand, say, as a repair). A place
-- in the rotation that no counter hands out (an operator's ZADD of +inf, -inf, a fraction or
-- a number below one) becomes an ordinary one, at the end.
local seq = redis.call('ZSCORE', K_READY, id)
local place = score_of(seq)
if place and place >= 1 and place < math.huge and place == math.floor(place) then
  if def then redis.call('ZADD', K_RANKED, 0, rank_member(def, seq, id)) end
else
  dequeue(id, def)
  enqueue(id, def)
end
local _values, broken = read_numbers(id, NUMBER_FIELDS)
if #broken > 0 then delete_fields(id, broken) end
delete_fields(id, {'cooldown_until_ms', 'cooldown_kind'})
write_fields(id, {failures = 0, billing_failures = 0})
if not redis.call('HGET', K_STATE, id .. ':gen') then
  write_fields(id, {gen = next_counter('gen')})
end
if was_cooling == 1 or pairs_cleared > 0 then
  emit('profile:recovered', id, {manual = true}, now)
end
return {'cleared', (was_cooling == 1 or pairs_cleared > 0) and 1 or 0}
