-- Runs after prelude.lua (the broker joins the two into one script).
-- ARGV[3]: size, [4]: pub/sub channel, [5]: 'PUBLISH' (or 'SPUBLISH' on a Redis Cluster),
-- [6]: the replication id of the shard's master on a Redis Cluster ('' otherwise), then four
-- per message, one or more messages of the channel in publish order: binary '0'/'1', sender
-- ('' for none), author ('' for none), data.
-- KEYS[3]: the replication id of the master the workers write to (set as they connect); not
-- on a Redis Cluster, where it would be a key of another slot.
-- Each message gets the next id, goes into the history and is PUBLISHed, in order; the
-- channel's state is read, created and refreshed once for all of them (the worker joins the
-- publishes that queue behind one of the same channel into one call: a flood costs a call
-- per round trip). Returns the epoch, the first message's seq and the time.
-- The channel's state is created here, by its first message, and only here; a state written
-- under another master may have lost its last writes in a failover, so its position may have
-- gone back: it is replaced like a missing one, by a new epoch after the old.
local s = redis.call('HMGET', state, 'epoch', 'seq', 'master')
local epoch = tonumber(s[1])
local master = KEYS[3] and redis.call('GET', KEYS[3]) or ARGV[6]
local floor = tonumber(ARGV[1])
if epoch and s[3] ~= master then
  floor = math.max(floor, epoch + 1)
  epoch = nil
end
if not epoch then  -- a new epoch, after any older one
  epoch = math.max(now, floor)
  local logged = last_logged()
  if logged then  -- history without (current) state: never reuse its epoch
    epoch = math.max(epoch, logged + 1)
    redis.call('DEL', log)
  end
  redis.call('HSET', state, 'epoch', string.format('%d', epoch), 'seq', '0', 'master', master)
end
local count = (#ARGV - 6) / 4
local last = redis.call('HINCRBY', state, 'seq', count)
local first = last - count + 1
local size, topic, stamp = ARGV[3], ARGV[4], string.format('%d', now)
for i = 0, count - 1 do
  local at, seq = 7 + 4 * i, first + i
  local sender, author = ARGV[at + 1], ARGV[at + 2]
  local message = string.format('%d %d %d %s %d %d\n', epoch, seq, now, ARGV[at], #sender,
    #author) .. sender .. author .. ARGV[at + 3]
  redis.call('XADD', log, 'MAXLEN', size, string.format('%d-%d', epoch, seq), 't', stamp,
    'm', message)
  redis.call(ARGV[5], topic, message)
end
-- Age trim once the seq passes a multiple of 16 only: it reads an entry, the dearest step
-- here, and reads trim first anyway, so what lingers in between (bounded by MAXLEN) is never
-- returned.
if math.floor(last / 16) ~= math.floor((first - 1) / 16) then trim_age() end
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', log, ttl)
return {epoch, first, now}
