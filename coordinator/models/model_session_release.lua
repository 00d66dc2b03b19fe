-- model_session_release.lua: forget a sticky model session (its next selection picks again).
-- KEYS[1..5]  the {models} keys (see _model.lua; not touched)   KEYS[6] the session key
-- ARGV[1] clock offset ms   ARGV[2] breaker configuration (unused)
-- Returns 1 if the session was bound to a profile, else 0.
-- A session key of another type (a hand edit) is refused, naming the key (DEL repairs it).

expect_type(KEYS[6], 'string')
return redis.call('DEL', KEYS[6])
