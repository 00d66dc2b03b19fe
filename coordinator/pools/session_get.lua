-- session_get.lua: the profile a session is bound to, if the binding still holds.
-- KEYS[1..7]  the pool keys (see _pool.lua); KEYS[8] the session key
-- ARGV[1] clock offset ms
-- Returns the profile id, or false. A binding whose profile was removed, re-created, is cooling
-- down or has expired is deleted here, so the next pick binds the session anew.
--!include _pool_rotation.lua

local now = now_ms()
sweep(now)
local binding = redis.call('GET', KEYS[8])
if not binding then return false end
local id, gen, expires = string.match(binding, '^([^\t]*)\t([^\t]*)\t([^\t]*)$')
if id and tonumber(expires) and tonumber(expires) > now and redis.call('ZSCORE', K_READY, id)
    and load_def(id) and redis.call('HGET', K_STATE, id .. ':gen') == gen then
  return id
end
redis.call('DEL', KEYS[8])
return false
