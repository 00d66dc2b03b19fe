-- _lib.lua: helpers shared by every operation; the first part of each operation's function
-- library (see coordinator/scripts.py). Libraries run once, when the function library loads;
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

-- Register the operation's body (coordinator/scripts.py makes every operation one function).
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

-- Text, not a number: Redis 7.0 formats every number a script passes to redis.call with
-- snprintf("%.17g"), about 2,000 instructions each (measured with callgrind). Hot-path
-- constants are therefore written as strings.
local EVENTS_MAXLEN = '10000'

-- Redis TIME in ms plus the test offset (or the test's time held still): the only clock any
-- decision uses.
local function now_ms()
  if HELD_MS then return HELD_MS end
  local t = redis.call('TIME')
  -- (arithmetic converts the two texts itself: cheaper than two calls of tonumber)
  return t[1] * 1000 + math.floor(t[2] / 1000) + OFFSET_MS
end

-- Texts of small integers (epochs, counters, short waits), made once per library.
local SMALL_INT_TEXT = {}

-- Integers as decimal text without exponent (Lua 5.1 in Redis, 5.4 in the embedded backend).
-- string.format costs ~2,500-3,000 instructions a number (callgrind; building the text with
-- string operations costs as much): small integers are looked up instead.
local function int(x)
  local n = math.floor(tonumber(x))
  if n >= 0 and n < 4096 then
    local text = SMALL_INT_TEXT[n]
    if not text then
      text = string.format('%d', n)
      SMALL_INT_TEXT[n] = text
    end
    return text
  end
  return string.format('%d', n)
end

-- Answers kept by a library from call to call, per profile id, with the text they were read
-- from or written as (a definition, a breaker or state record): an answer is used only for
-- that very text, and is what reading that text gives, so it holds whichever namespace or
-- replica the text comes from. A steady profile's texts do not change between calls, so each
-- is read once instead of on every call (callgrind: reading them was ~9% of a selection's
-- instructions), and the record a report wrote is what the next report on that profile reads.
-- One entry per profile, not per text: every live object a library keeps costs each
-- garbage-collection cycle to mark. A cache is dropped whole when it reaches CACHE_LIMIT
-- profiles. A cache is {by = {}, n = 0}.
local CACHE_LIMIT = 1024
local function recall(cache, id, text)
  local entry = cache.by[id]
  if entry and entry[1] == text then return entry[2] end
  return nil
end
local function remember(cache, id, text, answer)
  local entry = cache.by[id]
  if entry then
    entry[1], entry[2] = text, answer
    return answer
  end
  if cache.n >= CACHE_LIMIT then cache.by, cache.n = {}, 0 end
  cache.by[id] = {text, answer}
  cache.n = cache.n + 1
  return answer
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

-- The value of a top-level key of a JSON record, read without decoding it: a plain search
-- for the key ('"<key>":', which cannot occur inside a JSON string, where quotes are escaped)
-- and one match anchored there (value: '^"<key>":<capture>[,}]'). Returns nil when the key is
-- absent, false when the value does not match or the key occurs twice (a hand edit, or a key
-- in a nested object). The caller checks once per record that it is a JSON object
-- (string.byte(raw) == 123, '{'): a check per peek cost a selection ~2,000 instructions.
-- Keys and patterns are literals: text built per call costs garbage.
local function peek(raw, key, value)
  local at = string.find(raw, key, 1, true)
  if not at then return nil end
  if string.find(raw, key, at + 1, true) then return false end
  return string.match(raw, value, at) or false
end
