local front, id, reason = ARGV[1], ARGV[2], ARGV[4]
local maxlen = tonumber(ARGV[6])
local jk = front .. 'job:' .. id
if not holds(KEYS[1], jk, id, ARGV[3]) then return 0 end
local now = now_ms()
local made, attempts = end_attempt(KEYS[1], jk, id, reason)
if made < attempts then
  local delay = tonumber(ARGV[5])
  enqueue(KEYS[2], KEYS[3], jk, id, now, delay)
  emit(KEYS[5], maxlen, 'event', 'retrying', 'id', id, 'reason', reason,
    'attemptsMade', made, 'delay', delay)
  return 2
end
fail_for_good(KEYS[4], KEYS[5], maxlen, front, jk, id, reason, made, now)
return 1
