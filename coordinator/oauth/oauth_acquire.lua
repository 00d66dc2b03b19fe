-- oauth_acquire.lua: read a credential's access token, or take its refresh lock when the token
-- is within the refresh lead time (single flight across replicas: one holder, with a fence).
-- KEYS[1] credential hash   KEYS[2] refresh lock   KEYS[3] fences HASH   KEYS[4] events stream
-- ARGV[1] clock offset ms   ARGV[2] credential id   ARGV[3] lock owner (unique per attempt)
-- ARGV[4] refresh lead ms   ARGV[5] lock TTL ms
-- ARGV[6] mode: 'get' (lock only when the token is stale) | 'force' (always lock)
-- ARGV[7] (optional) the version the caller saw when it started waiting; in 'get' mode a newer
--         version (a token someone else committed meanwhile) is used while it has not expired
-- ARGV[8] (optional, default 0.5) the lead's cap as a fraction of the token's issued lifetime:
--         apps use 0.5, refresh workers a larger one (0.75) so that they refresh first
-- Returns {code, fence, version, access ct, refresh ct, expires_at_ms, remaining_ms,
--          lock_wait_ms, token_type, status, provider}
--   code: fresh | locked (the caller refreshes, then commits or releases) | busy (another
--   holder; retry after lock_wait_ms) | no-refresh (stale, no refresh token) | missing |
--   needs-reauth. remaining_ms = expires_at_ms - now (-1 when the expiry is unknown).
-- The token is stale within min(lead, fraction * its lifetime as issued) of its expiry: with
-- tokens that live no longer than the lead, a token just issued must not count as stale already.
-- Emits token:expired once per token version when it finds the token past its expiry.
--!include _oauth.lua

local K_CRED, K_LOCK, K_FENCES, K_EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, owner, lead, ttl, mode = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local seen = tonumber(ARGV[7] or '')
local fraction = tonumber(ARGV[8] or '') or 0.5
local now = now_ms()

if redis.call('EXISTS', K_CRED) == 0 then
  return {'missing', 0, 0, '', '', '-1', '-1', '0', '', '', ''}
end
local c = redis.call('HMGET', K_CRED, 'version', 'access_token', 'refresh_token',
  'expires_at_ms', 'token_type', 'status', 'provider', 'expired_version', 'lifetime_ms')
local version = tonumber(c[1]) or 0
local access, refresh = c[2] or '', c[3] or ''
local expires_at = tonumber(c[4]) or -1
local token_type, status = c[5] or 'Bearer', c[6] or 'active'
local remaining = -1
if expires_at >= 0 then remaining = expires_at - now end
local lifetime = tonumber(c[9]) or -1  -- absent in credentials stored by older versions
if lifetime >= 0 then lead = math.min(lead, math.floor(lifetime * fraction)) end

local function reply(code, fence, wait)
  return {code, fence, version, access, refresh, int(expires_at), int(remaining), int(wait),
    token_type, status, c[7] or ''}
end

if status ~= 'active' then return reply('needs-reauth', 0, 0) end

local expired = expires_at >= 0 and remaining <= 0
if expired and tonumber(c[8]) ~= version then
  redis.call('HSET', K_CRED, 'expired_version', version)
  emit_to(K_EVENTS, 'token:expired', id, {provider = c[7] or '', version = version,
    expired_at_ms = expires_at}, now)
end

local stale = expires_at >= 0 and remaining <= lead
local committed_meanwhile = seen ~= nil and version > seen and not expired
if mode ~= 'force' and (not stale or committed_meanwhile) then return reply('fresh', 0, 0) end
if refresh == '' then return reply('no-refresh', 0, 0) end

local held = redis.call('GET', K_LOCK)
if held then
  local until_ms = tonumber(string.match(held, '\t([%-%d]+)$'))
  if until_ms and until_ms > now then return reply('busy', 0, until_ms - now) end
end
local fence = redis.call('HINCRBY', K_FENCES, id, 1)
-- Validity is decided on Redis time (until); the key's TTL only collects garbage.
redis.call('SET', K_LOCK, owner .. '\t' .. int(fence) .. '\t' .. int(now + ttl), 'PX', int(ttl + 60000))
return reply('locked', fence, 0)
