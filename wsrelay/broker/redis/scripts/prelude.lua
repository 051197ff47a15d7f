-- KEYS: state, log (and, to read, the origin; to publish, the master's replication id). ARGV[1]: the lowest epoch a new state may take,
-- ARGV[2]: TTL in ms.
local state, log = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- The last id the history generated (epoch, seq), or nil when there is no history.
local function last_logged()
  if redis.call('EXISTS', log) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', log)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local epoch, seq = string.match(info[i + 1], '^(%d+)-(%d+)')
      return tonumber(epoch), tonumber(seq)
    end
  end
end

-- Drop retained messages older than the TTL (entries are in time order). Most calls find
-- the oldest entry young enough: one entry read, not a batch.
local function trim_age()
  local cutoff = now - ttl
  local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  if not oldest or tonumber(oldest[2][2]) >= cutoff then return end
  while true do
    local batch = redis.call('XRANGE', log, '-', '+', 'COUNT', 32)
    local old = {}
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) >= cutoff then break end
      old[#old + 1] = entry[1]
    end
    if #old > 0 then redis.call('XDEL', log, unpack(old)) end
    if #old < 32 then return end
  end
end
