-- oauth_consume.lua: consume a pending login's state exactly once.
-- KEYS[1] state key   KEYS[2] events stream
-- ARGV[1] clock offset ms   ARGV[2] expected provider ('' when the caller does not know it)
-- Returns {1, record JSON}   the caller now owns the login (the record stays as a tombstone)
--      or {0, reason, provider}   reason: unknown | replayed | expired | provider
-- A consumed state is kept as a tombstone (used = true) until its lifetime ends, so a replay
-- is told apart from a forged state. Every refusal emits auth:failed.

local now = now_ms()
local raw = redis.call('GET', KEYS[1])
local record = decode(raw)
local function refuse(reason, provider)
  emit_to(KEYS[2], 'auth:failed', '', {provider = provider or '', reason = 'state_' .. reason}, now)
  return {0, reason, provider or ''}
end
if not record then return refuse('unknown', ARGV[2]) end
local provider = tostring(record.provider or '')
if record.used then return refuse('replayed', provider) end
-- Any consumption attempt uses the state up: it can never be tried a second time.
local tombstone = {provider = provider, used = true, expires_at_ms = record.expires_at_ms}
local keep = math.max(1000, (tonumber(record.expires_at_ms) or now) - now + 60000)
redis.call('SET', KEYS[1], cjson.encode(tombstone), 'PX', int(keep))
if not tonumber(record.expires_at_ms) or tonumber(record.expires_at_ms) <= now then
  return refuse('expired', provider)
end
if ARGV[2] ~= '' and ARGV[2] ~= provider then return refuse('provider', provider) end
return {1, raw}
