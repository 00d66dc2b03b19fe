-- oauth_remove.lua: delete a credential, its lock and index entries; when it was its provider's
-- default, the most recently created remaining credential of that provider becomes the default.
-- KEYS[1] credential hash   KEYS[2] provider's credential ZSET   KEYS[3] all credentials ZSET
-- KEYS[4] defaults HASH     KEYS[5] expiry ZSET   KEYS[6] refresh lock   KEYS[7] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] provider
-- ARGV[4] event type (credential:removed | token:revoked)   ARGV[5] event data JSON
-- Returns {1, new default id or ''} or {0, ''} when there was no such credential.

local K_CRED, K_PROVIDER, K_ALL, K_DEFAULTS, K_EXPIRY, K_LOCK, K_EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, provider = ARGV[2], ARGV[3]
local now = now_ms()
local existed = redis.call('DEL', K_CRED)
redis.call('ZREM', K_PROVIDER, id)
redis.call('ZREM', K_ALL, id)
redis.call('ZREM', K_EXPIRY, id)
redis.call('DEL', K_LOCK)
local new_default = ''
local current = redis.call('HGET', K_DEFAULTS, provider)
if current == id or (current and not redis.call('ZSCORE', K_PROVIDER, current)) then
  local newest = redis.call('ZREVRANGE', K_PROVIDER, 0, 0)
  if newest[1] then
    new_default = newest[1]
    redis.call('HSET', K_DEFAULTS, provider, new_default)
  else
    redis.call('HDEL', K_DEFAULTS, provider)
  end
elseif current then
  new_default = current
end
if existed == 0 then return {0, new_default} end
local data = decode(ARGV[5]) or {}
data.provider = provider
data.new_default = new_default
emit_to(K_EVENTS, ARGV[4], id, data, now)
return {1, new_default}
