-- oauth_release.lua: release a refresh lock if the caller still holds it (a failed refresh).
-- KEYS[1] refresh lock
-- ARGV[1] clock offset ms   ARGV[2] lock owner
-- Returns 1 when released, 0 when the lock was no longer the caller's.
--!include _oauth.lua

return release_lock(KEYS[1], ARGV[2])
