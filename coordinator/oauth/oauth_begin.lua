-- oauth_begin.lua: record a pending login (state + encrypted PKCE verifier) for any replica.
-- KEYS[1] state key (<ns>:{oauth}:state:<sha256 of state>)   KEYS[2] events stream
-- ARGV[1] clock offset ms   ARGV[2] record JSON (provider, redirect_uri, scopes, verifier
--         ciphertext; never a clear secret)   ARGV[3] lifetime ms   ARGV[4] provider
-- Returns {1, expires_at_ms} or {0, 'exists'} (the same state was issued twice: never reused).
-- Validity is decided on Redis time (expires_at_ms); the key's own TTL only collects garbage.

local record = decode(ARGV[2])
if not record then return redis.error_reply('oauth_begin: record is not a JSON object') end
local ttl = tonumber(ARGV[3])
local now = now_ms()
record.created_ms = now
record.expires_at_ms = now + ttl
record.used = false
local ok = redis.call('SET', KEYS[1], cjson.encode(record), 'NX', 'PX', int(ttl + 60000))
if not ok then return {0, 'exists'} end
emit_to(KEYS[2], 'auth:started', '', {provider = ARGV[4], expires_at_ms = record.expires_at_ms}, now)
return {1, int(record.expires_at_ms)}
