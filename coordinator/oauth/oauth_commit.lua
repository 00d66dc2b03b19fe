-- oauth_commit.lua: store the result of a refresh by compare-and-set on the credential version,
-- then release the refresh lock. A commit is refused only when a newer token is already stored
-- (so a refresh token the provider rotated is never dropped because a lock timed out).
-- KEYS[1] credential hash   KEYS[2] expiry ZSET   KEYS[3] refresh lock   KEYS[4] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] lock owner   ARGV[4] fence
-- ARGV[5] version the refresh started from   ARGV[6] fields JSON (access_token ciphertext,
--         token_type, optional refresh_token / id_token ciphertexts and scopes; an absent
--         refresh_token keeps the stored one)   ARGV[7] access-token lifetime ms (-1 unknown)
-- Returns {1, new version, expires_at_ms, rotated (0/1)}
--      or {0, 'missing'|'stale', stored version}
--!include _oauth.lua

local K_CRED, K_EXPIRY, K_LOCK, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, owner, fence, base = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()

if redis.call('EXISTS', K_CRED) == 0 then
  release_lock(K_LOCK, owner)
  return {0, 'missing', 0}
end
local version = version_of(K_CRED)
if version > base then
  release_lock(K_LOCK, owner)
  return {0, 'stale', version}
end
local fields = decode(ARGV[6])
if not fields then return redis.error_reply('oauth_commit: fields are not a JSON object') end
local rotated = 0
if type(fields.refresh_token) == 'string' and fields.refresh_token ~= '' then rotated = 1 end
write_fields(K_CRED, fields)
version = redis.call('HINCRBY', K_CRED, 'version', 1)
redis.call('HSET', K_CRED, 'status', 'active', 'updated_ms', int(now), 'refreshed_ms', int(now),
  'fence', fence)
redis.call('HDEL', K_CRED, 'last_error', 'expired_version')
local expires_at = set_expiry(K_CRED, K_EXPIRY, id, tonumber(ARGV[7]), now)
release_lock(K_LOCK, owner)
emit_to(K_EVENTS, 'token:refreshed', id, {provider = redis.call('HGET', K_CRED, 'provider') or '',
  version = version, expires_at_ms = expires_at, rotated = rotated == 1, fence = tonumber(fence)}, now)
return {1, version, int(expires_at), rotated}
