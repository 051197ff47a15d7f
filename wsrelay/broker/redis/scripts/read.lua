-- Runs after prelude.lua (the broker joins the two into one script).
-- ARGV[3], [4]: the cursor's epoch and seq ('' for none). Returns the position, the first
-- retained entry (for the gap check), the entries after the cursor, and the data set's
-- origin (0 when the cursor does not need it). Writes nothing of the channel: one without
-- state reads as a virtual epoch, now at seq 0 (or, where its history outlived its state,
-- as that history's last id with nothing retained, so that any cursor before it is a gap).
-- The origin is the one key a read may write: the time this Redis's data began (it is
-- missing after a restart without persistence or a flush), set by the first read that
-- hands out or checks a seq-0 cursor; such a cursor from before it is not trusted.
local function origin()
  local value = redis.call('GET', KEYS[3])
  if value then return tonumber(value) end
  redis.call('SET', KEYS[3], string.format('%d', now))
  return now
end
local since_epoch, since_seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', state, 'epoch', 'seq')
local epoch, seq = tonumber(s[1]), tonumber(s[2])
if not epoch then
  local logged_epoch, logged_seq = last_logged()
  if logged_epoch then return {logged_epoch, logged_seq, {}, {}, 0} end
  local needed = origin()
  if not since_epoch or since_seq ~= 0 then needed = 0 end
  return {now, 0, {}, {}, needed}
end
redis.call('PEXPIRE', state, ttl)
trim_age()
if not since_epoch then return {epoch, seq, {}, {}, 0} end
if since_epoch ~= epoch or since_seq > seq then
  local needed = 0
  if since_seq == 0 then needed = origin() end
  return {epoch, seq, {}, redis.call('XRANGE', log, '-', '+'), needed}
end
local start = string.format('%d-%d', epoch, since_seq + 1)
return {epoch, seq, redis.call('XRANGE', log, '-', '+', 'COUNT', 1),
  redis.call('XRANGE', log, start, '+'), 0}
