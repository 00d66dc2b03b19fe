-- oauth_hold.lua: check that a refresh lock is still the caller's, and extend it. Called once
-- right before the refresh request is sent (a holder that stalled after taking the lock must
-- not present a refresh token someone else may already have used), then every lock_ttl/3
-- while the request is in flight (a slow provider must not let the lock lapse under it).
-- KEYS[1] credential hash   KEYS[2] refresh lock
-- ARGV[1] clock offset ms   ARGV[2] lock owner   ARGV[3] fence
-- ARGV[4] version the refresh started from   ARGV[5] lock TTL ms
-- Returns {1, until_ms} when held and extended,
--      or {0, 'lost'}     the lock lapsed or another holder took it (it is left alone)
--      or {0, 'changed'}  the credential changed (a new login or commit): its refresh token
--                         may not be the one the caller read
--      or {0, 'missing'}  the credential was removed
-- Validity is decided on Redis time (the `until` in the lock's value), as in oauth_acquire.
--!include _oauth.lua

local K_CRED, K_LOCK = KEYS[1], KEYS[2]
local owner, fence, base, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()

local prefix = owner .. '\t' .. fence .. '\t'
local held = redis.call('GET', K_LOCK)
if not held or string.sub(held, 1, #prefix) ~= prefix then return {0, 'lost'} end
local until_ms = tonumber(string.sub(held, #prefix + 1))
-- A lapsed lock is lost even if nobody took it yet: the caller may not assume it still holds.
if not until_ms or until_ms <= now then return {0, 'lost'} end
if redis.call('EXISTS', K_CRED) == 0 then return {0, 'missing'} end
if version_of(K_CRED) ~= base then return {0, 'changed'} end
redis.call('SET', K_LOCK, prefix .. int(now + ttl), 'PX', int(ttl + 60000))
return {1, int(now + ttl)}
