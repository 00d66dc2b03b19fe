-- oauth_reauth.lua: the provider refused the refresh token (invalid_grant). Mark the credential
-- as needing a new login, unless it changed since the refresh started (someone else refreshed:
-- the caller re-reads it instead). Releases the caller's refresh lock either way.
-- KEYS[1] credential hash   KEYS[2] expiry ZSET   KEYS[3] refresh lock   KEYS[4] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] lock owner
-- ARGV[4] version the refresh started from   ARGV[5] reason (redacted text)
-- Returns {1, version} when marked, or {0, 'missing'|'stale', stored version}
--!include _oauth.lua

local K_CRED, K_EXPIRY, K_LOCK, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, owner, base, reason = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
release_lock(K_LOCK, owner)
if redis.call('EXISTS', K_CRED) == 0 then return {0, 'missing', 0} end
local version = version_of(K_CRED)
if version > base then return {0, 'stale', version} end
redis.call('HSET', K_CRED, 'status', 'needs-reauth', 'last_error', reason, 'updated_ms', int(now))
redis.call('ZREM', K_EXPIRY, id)
emit_to(K_EVENTS, 'credential:needs-reauth', id,
  {provider = redis.call('HGET', K_CRED, 'provider') or '', reason = reason, version = version}, now)
return {1, version}
