-- oauth_set_default.lua: make a credential its provider's default.
-- KEYS[1] provider's credential ZSET   KEYS[2] defaults HASH   KEYS[3] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] provider
-- Returns 1, or 0 when the credential is not one of this provider's.

local now = now_ms()
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local previous = redis.call('HGET', KEYS[2], ARGV[3]) or ''
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
if previous ~= ARGV[2] then
  emit_to(KEYS[3], 'credential:default', ARGV[2], {provider = ARGV[3], previous = previous}, now)
end
return 1
