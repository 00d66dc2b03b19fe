-- model_open.lua: an operator forces a profile's breaker open now, for a given time. The epoch
-- moves on (late reports of earlier selections do not count), probe permits are dropped, and
-- when the time is over the breaker half-opens and probes as after any other opening.
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (reset_timeout_ms is read)
-- ARGV[3] profile id   ARGV[4] how long to stay open, ms ('' for reset_timeout_ms)
-- Returns {'missing'} | {'corrupt', broken field} |
--   {'opened', previous state, now, status row (see status_row in _model.lua)}
-- Emits profile:circuit-opened {reason = 'forced', epoch, open_ms, until_ms, reopens}.
--!include _model.lua

local id = ARGV[MARG]
local now = now_ms()
if redis.call('HEXISTS', K_PROFILES, id) == 0 then return {'missing'} end
local b, bad = load_breaker(id)
if not b then return {'corrupt', bad} end
check_types()  -- (before the first write: see _model.lua)
local period = tonumber(ARGV[MARG + 1]) or conf().reset_timeout_ms
local previous = b.state
open_breaker(id, b, now, 'forced', nil, math.floor(period))
save_breaker(id, b)
return {'opened', previous, now, status_row(id, now)}
