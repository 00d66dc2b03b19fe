-- _lib.lua: helpers shared by every operation; the first part of each operation's function
-- library (see coordinator/store/functions.py). Libraries run once, when the function library loads;
-- the operation's body runs on every call, with KEYS and ARGV set by register() below.
-- Every operation receives the test clock as ARGV[1]: an offset in ms added to Redis TIME (zero
-- in production), or '=<ms>', a time held still (tests pin boundaries to the millisecond).
-- A script that needs more shared code names it on a line of its own: --!include _pool.lua

-- The call's keys and arguments (upvalues of every helper, set before each call) and the
-- test clock taken from ARGV[1]: an offset, or a time held still (HELD_MS, else nil).
local KEYS, ARGV = nil, nil
local OFFSET_MS, HELD_MS = 0, nil
-- Per-call hooks: a library whose helpers keep state for one call (keys read from KEYS, a value
-- computed once per call) adds a function here that sets that state; each call runs them all
-- first, so nothing of an earlier call (or of one that failed halfway) is ever seen.
local BEGIN = {}

-- Register the operation's body (coordinator/store/functions.py makes every operation one function).
local function register(name, body)
  redis.register_function(name, function(keys, args)
    KEYS, ARGV = keys, args
    local clock = args[1] or '0'
    if string.sub(clock, 1, 1) == '=' then
      OFFSET_MS, HELD_MS = 0, tonumber(string.sub(clock, 2))
    else
      OFFSET_MS, HELD_MS = tonumber(clock) or 0, nil
    end
    for i = 1, #BEGIN do BEGIN[i]() end
    return body()
  end)
end

-- Every event stream is capped at about this many entries.
local EVENTS_MAXLEN = 10000

-- Redis TIME in ms plus the test offset (or the test's time held still): the only clock any
-- decision uses.
local function now_ms()
  if HELD_MS then return HELD_MS end
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000) + OFFSET_MS
end

-- An integer as decimal text without an exponent (Lua 5.1 in Redis, 5.4 in the embedded
-- backend would otherwise write 1.7e+12 or 12.0).
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

-- Raise an error naming the key when it holds another type than expected (an absent key is
-- fine): a script checks the keys it will write before its first write, because Redis does
-- not undo a script's earlier writes when a later command fails.
local function expect_type(key, expected)
  local actual = redis.call('TYPE', key)
  actual = type(actual) == 'table' and actual.ok or actual
  if actual ~= 'none' and actual ~= expected then
    error('WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', not a ' .. expected)
  end
end
