-- oauth_emit.lua: append one OAuth event whose transition happened outside Redis
-- (a failed code exchange, a device login that was refused).
-- KEYS[1] events stream
-- ARGV[1] clock offset ms   ARGV[2] event type   ARGV[3] credential id ('' for none)
-- ARGV[4] data JSON (never a secret)
-- Returns the Redis time of the event (ms).

local now = now_ms()
emit_to(KEYS[1], ARGV[2], ARGV[3], decode(ARGV[4]) or {}, now)
return int(now)
