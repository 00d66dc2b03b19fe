-- _oauth.lua: helpers of the OAuth credential scripts (included with --!include _oauth.lua).
-- A credential is a HASH of readable fields (provider, subject, email, scopes, status,
-- version, expires_at_ms, ...) and ciphertext fields (access_token, refresh_token, id_token).
-- expires_at_ms and lifetime_ms are -1 when the provider did not say when the access token
-- expires.

-- Set the expiry of a credential from a lifetime in ms (-1: unknown) and keep the index in step.
-- lifetime_ms keeps the lifetime as issued: the refresh lead is capped at half of it, so a
-- provider with short-lived tokens does not make every fresh token count as stale.
local function set_expiry(cred_key, expiry_key, id, expires_in, now)
  local expires_at = -1
  if expires_in >= 0 then expires_at = now + expires_in end
  redis.call('HSET', cred_key, 'expires_at_ms', int(expires_at), 'lifetime_ms', int(expires_in))
  if expires_at >= 0 then
    redis.call('ZADD', expiry_key, expires_at, id)
  else
    redis.call('ZREM', expiry_key, id)
  end
  return expires_at
end

-- Write the string fields of a JSON object into the credential hash; '' deletes a field.
local function write_fields(cred_key, fields)
  for name, value in pairs(fields) do
    if type(value) == 'string' and value ~= '' then
      redis.call('HSET', cred_key, name, value)
    elseif value == '' then
      redis.call('HDEL', cred_key, name)
    end
  end
end

-- Release a refresh lock if `owner` still holds it. Returns 1 when released.
local function release_lock(lock_key, owner)
  local held = redis.call('GET', lock_key)
  if held and string.sub(held, 1, #owner + 1) == owner .. '\t' then
    redis.call('DEL', lock_key)
    return 1
  end
  return 0
end

local function version_of(cred_key)
  return tonumber(redis.call('HGET', cred_key, 'version')) or 0
end
