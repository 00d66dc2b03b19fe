-- mark_success.lua: a call on this profile succeeded; reset its failure counters.
-- KEYS[1..2]  the first two static pool keys (see _pool.lua: profiles, state)
-- ARGV[1] clock offset ms  ARGV[2] profile id  ARGV[3] model (optional, '' for none)
-- Returns {'missing'} | {'ok', repaired field or ''}
-- A state record edited into garbage is replaced by a fresh one.
-- A success does not lift a running cooldown (a call admitted before the failure may finish
-- after it); it only resets the counters, so the next failure starts the schedule again.
-- Most calls succeed, so a success with nothing to reset writes nothing and reads no clock:
-- the steady state costs Redis one or two reads. Nor does it decode the record then (that was
-- ~40% of this script's instructions, measured with callgrind): counters at 0, as the last
-- success wrote them, are read in place. So a success repairs a record edited into garbage
-- only when its counters are unreadable; a failure (which decodes it) or clear_cooldown
-- repairs any.
--!include _pool.lua

local id, model = ARGV[2], ARGV[3] or ''
local raw = redis.call('HGET', K_STATE, id)
local broken = nil
if not raw then
  -- No record: a profile that never failed, or none at all.
  if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
elseif not (string.byte(raw) == 123  -- '{'
    and peek(raw, '"failures":', '^"failures":(0)[,}]')
    and peek(raw, '"billing_failures":', '^"billing_failures":(0)[,}]')) then
  local state
  state, broken = parse_state(raw, id)
  -- (counters that are absent are written too, so that the next success reads them in place)
  if not state or state.failures ~= 0 or state.billing_failures ~= 0 then
    state = state or {}
    state.failures = 0
    state.billing_failures = 0
    save_state(id, state)
  end
end
if model ~= '' then redis.call('HDEL', K_STATE, id .. '|' .. model) end
return {'ok', broken or ''}
