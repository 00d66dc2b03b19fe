-- _model_record.lua: recording call outcomes into a breaker (included after _model.lua, by
-- model_report only; the transitions it may make are in _model.lua).

-- Record the outcome of one call. outcome: 'success' | 'failure' | 'release' (the call did not
-- test the provider: free its probe permit, change nothing else) | 'unusable' (the credential
-- could not be obtained: free the permit, cool down for the given time, no breaker count).
-- epoch '' means "current"
-- (a report without a selection); token is the probe permit ('' for none).
-- Returns (status, changed): status 'recorded' (counted by the breaker) | 'stale' (selected in
-- another epoch, or an expired/unknown permit: only the statistics and cooldowns are updated) |
-- 'ignored' (a caller error) | 'released'; changed tells whether the breaker must be saved (a
-- success in a steady closed state changes nothing).
local function record(id, b, now, outcome, kind, message, epoch, token, retry_ms)
  local changed = b.state ~= 'closed' and refresh(id, b, now)
  local caller = outcome == 'failure' and kind == 'caller'
  if outcome == 'release' or outcome == 'unusable' or caller then
    if token ~= '' and b.permits[token] then
      b.permits[token] = nil
      changed = true
    end
    if caller then return 'ignored', changed end
  end

  -- Cooldown: a Retry-After or an exhausted quota (also on a success), a billing failure, a
  -- credential that is not usable now.
  local cooldown = 0
  if retry_ms and retry_ms > 0 then cooldown = math.min(retry_ms, conf().max_retry_after_ms) end
  if outcome == 'failure' and kind == 'billing' then
    cooldown = math.max(cooldown, conf().billing_cooldown_ms)
  end
  local cooldown_set = false
  if outcome ~= 'release' and cooldown > 0 and now + cooldown > (b.cooldown_until_ms or 0) then
    b.cooldown_until_ms = math.floor(now + cooldown)
    cooldown_set = true
  end
  if outcome == 'release' or outcome == 'unusable' then
    if cooldown_set then
      emit('profile:cooldown', id, {kind = kind, outcome = outcome,
        until_ms = b.cooldown_until_ms, duration_ms = b.cooldown_until_ms - now}, now)
    end
    return 'released', changed or cooldown_set
  end

  -- Does this report count for the breaker?
  local counted = false
  if b.state == 'half_open' then
    counted = token ~= '' and b.permits[token] ~= nil and b.permits[token] > now
  elseif b.state == 'closed' then
    counted = token == '' and (epoch == '' or tonumber(epoch) == b.epoch)
  end

  if outcome == 'failure' then
    b.failures_total = (b.failures_total or 0) + 1
    b.last_failure_ms = now
    b.last_error = message
    b.last_error_kind = kind
    local data = {kind = kind, error = message, counted = counted, state = b.state,
      epoch = b.epoch}
    if cooldown_set then data.cooldown_until_ms = b.cooldown_until_ms end
    emit('profile:failure', id, data, now)
    count_failure(id, kind)
  end
  if cooldown_set then
    emit('profile:cooldown', id, {kind = kind, outcome = outcome,
      until_ms = b.cooldown_until_ms, duration_ms = b.cooldown_until_ms - now}, now)
  end
  if not counted then return 'stale', changed or cooldown_set or outcome == 'failure' end

  if b.state == 'half_open' then
    b.permits[token] = nil
    if outcome == 'success' then
      b.probe_successes = (b.probe_successes or 0) + 1
      if b.probe_successes >= conf().success_threshold then close_breaker(id, b, now) end
    else
      open_breaker(id, b, now, 'probe-failed', kind)
    end
    return 'recorded', true
  end

  -- closed
  if outcome == 'success' then
    local window = string.sub(b.window .. '0', -conf().window_size)
    if window ~= b.window or next(b.streak) ~= nil then
      b.streak = {}
      b.window = window
      changed = true
    end
    return 'recorded', changed or cooldown_set
  end
  local streak = counting_streak(b, now)
  streak[#streak + 1] = now
  b.streak = streak
  b.window = string.sub(b.window .. '1', -conf().window_size)
  if #streak >= conf().failure_threshold then
    open_breaker(id, b, now, 'consecutive-failures', kind)
  elseif #b.window >= conf().min_calls then
    local _, fails = string.gsub(b.window, '1', '')
    if fails / #b.window >= conf().failure_rate_threshold then
      open_breaker(id, b, now, 'failure-rate', kind)
    end
  end
  return 'recorded', true
end

-- Whether a success report changes nothing: a closed breaker, selected in its current epoch,
-- with no failure in its streak, a window of successes only that is already full, and no
-- cooldown to set (the frequent case: most calls succeed). Reads five fields, not the whole
-- breaker. Returns the epoch then, else nil (the full record() decides).
local function steady_success(id, epoch, token, retry_ms)
  if token ~= '' or (retry_ms and retry_ms > 0) then return nil end
  local f = redis.call('HMGET', K_BREAKERS, id .. ':state', id .. ':epoch', id .. ':streak',
    id .. ':window', id .. ':cooldown_until_ms')
  if f[1] and f[1] ~= 'closed' then return nil end
  if f[3] and f[3] ~= '' then return nil end
  local current = f[2] and count(f[2]) or (not f[2] and 0) or nil
  if current == nil or (epoch ~= '' and tonumber(epoch) ~= current) then return nil end
  local window = f[4] or ''
  if #window ~= conf().window_size or string.find(window, '1', 1, true) then return nil end
  if f[5] and not count(f[5]) then return nil end  -- (broken: the full read reports it)
  return current
end
