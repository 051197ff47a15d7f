-- Runs after prelude.lua (the broker joins the two into one script).
-- ARGV[3]: size, [4]: binary '0'/'1', [5]: sender ('' for none), [6]: data, [7]: pub/sub channel,
-- [8]: author ('' for none).
-- KEYS[3]: the replication id of the master the workers write to (set as they connect).
-- The channel's state is created here, by its first message, and only here; a state written
-- under another master may have lost its last writes in a failover, so its position may have
-- gone back: it is replaced like a missing one, by a new epoch after the old.
local s = redis.call('HMGET', state, 'epoch', 'seq', 'master')
local epoch = tonumber(s[1])
local master = redis.call('GET', KEYS[3]) or ''
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
local seq = redis.call('HINCRBY', state, 'seq', 1)
local sender, author = ARGV[5], ARGV[8]
local message = string.format('%d %d %d %s %d %d\n', epoch, seq, now, ARGV[4], #sender, #author)
  .. sender .. author .. ARGV[6]
redis.call('XADD', log, 'MAXLEN', ARGV[3], string.format('%d-%d', epoch, seq),
  't', string.format('%d', now), 'm', message)
-- Age trim on every 16th message only: it reads an entry, the dearest step here, and reads
-- trim first anyway, so what lingers between two trims (bounded by MAXLEN) is never returned.
if seq % 16 == 0 then trim_age() end
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', log, ttl)
redis.call('PUBLISH', ARGV[7], message)
return {epoch, seq, now}
