-- _model_base.lua: the {models} keys and what reads a breaker record in place, without
-- decoding it (included by _model.lua, and first by model_report, whose hot path, a success
-- on a breaker in its steady state, returns before the rest of _model.lua is defined: every
-- `local function` is a closure Lua makes on every call, ~1,000 instructions each with its
-- upvalues, and the twenty of _model.lua and _model_record.lua were ~25% of that report's
-- instructions, callgrind). The key and argument layout is described in _model.lua.

local K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META
BEGIN[#BEGIN + 1] = function()
  K_PROFILES, K_BREAKERS, K_EVENTS, K_RANKED, K_META = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
end
local MARG = 3

-- The epoch (text) of a breaker record that is closed, read in place without decoding it
-- (peek in _lib.lua), else nil. Only the values a decision reads this way are trusted: a
-- field broken elsewhere in the record is reported by the next report that decodes it, and by
-- the status.
local function closed_epoch(raw)
  if string.byte(raw) ~= 123 or not peek(raw, '"state":', '^"state":"(closed)"[,}]') then  -- '{'
    return nil
  end
  return peek(raw, '"epoch":', '^"epoch":(%d+)[,}]') or nil
end

-- The window size (the configuration's second field), without parsing the rest of it.
local function window_size()
  return tonumber(string.match(ARGV[2], '^[^,]*,([^,]*)'))
end

-- A success on a closed breaker in its steady state (the epoch it was selected in, epoch ''
-- for the current one; a full window of successes; no failure streak) changes nothing; that is
-- seen without decoding the record (see closed_epoch above; the decode was ~15% of a
-- success report's instructions, callgrind). Returns the epoch's text then, else nil.
local function steady_success(raw, epoch)
  local current = closed_epoch(raw)
  if not current or (epoch ~= '' and tonumber(epoch) ~= tonumber(current)) then return nil end
  local window = peek(raw, '"window":', '^"window":"(0*)"[,}]')
  if not window or #window ~= window_size() then return nil end
  if not peek(raw, '"streak":', '^"streak":([%[{][%]}])[,}]') then return nil end
  return current
end
