-- _pool_admin.lua: helpers of the rarer pool operations (removal, manual clearing); kept out
-- of _pool.lua so that each operation's library holds only the helpers it uses.
--!include _pool_rotation.lua

local function dequeue(id, def)
  local seq = redis.call('ZSCORE', K_READY, id)
  if seq and def then redis.call('ZREM', K_RANKED, rank_member(def, seq, id)) end
  redis.call('ZREM', K_READY, id)
end

-- Delete every member/field of a ZSET or HASH whose name starts with prefix (SCAN, no KEYS).
local function delete_prefixed(scan, delete, key, prefix)
  local cursor = '0'
  repeat
    local page = redis.call(scan, key, cursor, 'COUNT', 200)
    cursor = page[1]
    local items = page[2]
    for i = 1, #items, 2 do
      if string.sub(items[i], 1, #prefix) == prefix then redis.call(delete, key, items[i]) end
    end
  until cursor == '0'
end

-- Remove every (profile, model) entry of one profile (rare: removal and manual clearing):
-- its pair cooldowns and the "<id>|<model>:<field>" state fields.
local function drop_model_entries(id)
  delete_prefixed('ZSCAN', 'ZREM', K_COOLING, id .. '|')
  delete_prefixed('HSCAN', 'HDEL', K_STATE, id .. '|')
end
