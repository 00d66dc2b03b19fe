-- model_select.lua: choose the model profile to call now (breaker, probe permit, cooldown,
-- sticky session, priority), in one round trip.
-- KEYS[1..5]  the {models} keys (see _model.lua); KEYS[6] the session key (optional)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (see _model.lua)
-- ARGV[3] preferred model ('' or absent: any)   ARGV[4] session TTL ms (0 or absent: none)
-- ARGV[5] n (0 or absent: 0)   ARGV[6..] ids to exclude, the first n tried by this request
--   (see selection_args in _model_select.lua)
-- Returns {1, id, reason, epoch, probe token, now, sticky 1|0, model, definition JSON,
--          {broken...}}
--      or {0, soonest recovery in ms (-1 if none), now, {broken...}, soonest recovery in ms
--          of a tried profile (-1 if none)} (see _model_select.lua)
-- An open breaker whose reset timeout passed becomes half-open here (announced once).
--!include _model.lua
--!include _model_select.lua

local model, session_ttl, excluded, tried = selection_args(MARG)
local reply = select_profile(now_ms(), model, session_ttl, excluded, tried, KEYS[6], nil)
return reply
