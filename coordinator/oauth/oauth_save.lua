-- oauth_save.lua: store the credential of a finished login (new, or a new login of the same
-- account), make it its provider's default when there is none, and emit auth:success.
-- KEYS[1] credential hash   KEYS[2] provider's credential ZSET   KEYS[3] all credentials ZSET
-- KEYS[4] defaults HASH     KEYS[5] expiry ZSET                   KEYS[6] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] provider
-- ARGV[4] fields JSON (readable fields and token ciphertexts; no refresh_token field keeps
--         the stored one)   ARGV[5] access-token lifetime ms (-1 unknown)
-- ARGV[6] event data JSON (never a secret)
-- Returns {version, expires_at_ms, is_default (0/1), created (0/1)}
--!include _oauth.lua

local K_CRED, K_PROVIDER, K_ALL, K_DEFAULTS, K_EXPIRY, K_EVENTS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, provider = ARGV[2], ARGV[3]
local fields = decode(ARGV[4])
if not fields then return redis.error_reply('oauth_save: fields are not a JSON object') end
local now = now_ms()

local created = 0
if redis.call('EXISTS', K_CRED) == 0 then
  created = 1
  redis.call('HSET', K_CRED, 'created_ms', int(now))
end
write_fields(K_CRED, fields)
local version = redis.call('HINCRBY', K_CRED, 'version', 1)
redis.call('HSET', K_CRED, 'provider', provider, 'status', 'active', 'updated_ms', int(now))
redis.call('HDEL', K_CRED, 'last_error', 'expired_version')
local expires_at = set_expiry(K_CRED, K_EXPIRY, id, tonumber(ARGV[5]), now)
redis.call('ZADD', K_PROVIDER, 'NX', now, id)
redis.call('ZADD', K_ALL, 'NX', now, id)

local is_default = 0
local current = redis.call('HGET', K_DEFAULTS, provider)
if not current or not redis.call('ZSCORE', K_PROVIDER, current) then
  redis.call('HSET', K_DEFAULTS, provider, id)
  current = id
end
if current == id then is_default = 1 end

local data = decode(ARGV[6]) or {}
data.provider = provider
data.version = version
data.created = created == 1
emit_to(K_EVENTS, 'auth:success', id, data, now)
return {version, int(expires_at), is_default, created}
