-- model_set_enabled.lua: enable or disable a model profile (its breaker is left as it is).
-- KEYS[1..5]  the {models} keys (see _model.lua)
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration   ARGV[3] profile id
-- ARGV[4] 1 to enable, 0 to disable
-- Returns {'missing'} | {'corrupt', field} | {'changed' | 'unchanged'}
--!include _model.lua

local id, enable = ARGV[MARG], ARGV[MARG + 1] == '1'
local now = now_ms()
local def, raw, bad = load_def(id)
if bad == 'missing' then return {'missing'} end
if not def then return {'corrupt', bad} end
check_types()  -- (before the first write: see _model.lua)
if def.enabled == enable then
  -- Enabling an enabled profile ranks it again: it repairs an index entry edited or removed
  -- by hand (and changes nothing otherwise).
  if enable then redis.call('ZADD', K_RANKED, -def.priority, id) end
  return {'unchanged'}
end
-- Rewrite only the flag, so the rest of the stored definition is kept byte for byte (cjson
-- would rewrite numbers of the metadata with 14 digits).
local old = enable and '"enabled":false' or '"enabled":true'
local new = enable and '"enabled":true' or '"enabled":false'
local start, stop = string.find(raw, old, 1, true)
if start then
  raw = string.sub(raw, 1, start - 1) .. new .. string.sub(raw, stop + 1)
else
  def.enabled = enable  -- hand-formatted JSON: re-encode it
  raw = cjson.encode(def)
end
redis.call('HSET', K_PROFILES, id, raw)
if enable then
  redis.call('ZADD', K_RANKED, -def.priority, id)
  emit('profile:enabled', id, {}, now)
else
  redis.call('ZREM', K_RANKED, id)
  emit('profile:disabled', id, {}, now)
end
return {'changed'}
