-- _lib.lua: helpers shared by every operation; prepended to each script at load time.
-- Every operation receives the test clock offset (ms, zero in production) as ARGV[1].
-- A script that needs more shared code names it on a line of its own: --!include _pool.lua

local OFFSET_MS = tonumber(ARGV[1]) or 0
-- Text, not a number: Redis 7.0 formats every number a script passes to redis.call with
-- snprintf("%.17g"), about 2,000 instructions each (measured with callgrind). Hot-path
-- constants are therefore written as strings.
local EVENTS_MAXLEN = '10000'

-- Redis TIME in ms plus the test offset: the only clock any decision uses.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + OFFSET_MS
end

-- Integers as decimal text without exponent (Lua 5.1 in Redis, 5.4 in the embedded backend).
local function int(x)
  return string.format('%d', math.floor(tonumber(x)))
end

-- Decode a JSON object; nil for anything else (a value edited by hand must not raise).
local function decode(text)
  if not text then return nil end
  local ok, value = pcall(cjson.decode, text)
  if ok and type(value) == 'table' then return value end
  return nil
end

-- Append one event to a capped stream, in the script that makes the transition.
local function emit_to(stream, etype, subject, data, now)
  redis.call('XADD', stream, 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'type', etype, 'profile', subject, 'ts', int(now), 'data', cjson.encode(data or {}))
end

-- A stored value that must be a non-negative finite number when present (hand edits may
-- leave anything there): true when it is present and is not.
local function bad_number(v)
  return v ~= nil and (type(v) ~= 'number' or v ~= v or v < 0 or v >= 1e300)
end
