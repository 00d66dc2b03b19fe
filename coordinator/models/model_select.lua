-- model_select.lua: choose the model profile to call now (breaker, probe permit, cooldown,
-- sticky session, priority), in one round trip.
-- KEYS[1..5]  the static {models} keys (see _model.lua); KEYS[6] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (see _model.lua)
-- ARGV[3] selection spec (optional: absent means any model, no session TTL, nothing
--   excluded): "<session TTL ms>,<count of excluded ids>,<id>,...,<id>,<model>" (see
--   select_profile in _model.lua)
-- Returns {1, "<id>,<reason>,<epoch>,<probe token>,<now>,<sticky>[,<broken>...]", model,
--         definition JSON}
--      or {0, "<soonest recovery in ms, -1 if none>,<now>[,<broken>...]"} (see select_profile)
-- An open breaker whose reset timeout passed becomes half-open here (announced once).
--!include _model.lua

local reply = select_profile(now_ms(), ARGV[MARG], KEYS[6], nil)
return reply
