local front, maxlen, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_stalled = tonumber(ARGV[4])
local now = now_ms()
local stalled = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
local moved = 0
for _, id in ipairs(stalled) do
  local jk = front .. 'job:' .. id
  redis.call('ZREM', KEYS[1], id)
  -- Checked before any write to the hash: an HDEL or HINCRBY would recreate a stub of it.
  if redis.call('EXISTS', jk) == 1 then
    moved = moved + 1
    redis.call('HDEL', jk, 'token')
    local stalls = redis.call('HINCRBY', jk, 'stalledCount', 1)
    local made = tonumber(redis.call('HGET', jk, 'attemptsMade') or '0') or 0
    if stalls > max_stalled then
      redis.call('HSET', jk, 'failedReason', reason)
      fail_for_good(KEYS[3], KEYS[4], maxlen, front, jk, id, reason, made, now)
    else
      enqueue(KEYS[2], nil, jk, id, now, 0)
      emit(KEYS[4], maxlen, 'event', 'stalled', 'id', id, 'attemptsMade', made,
        'stalledCount', stalls)
    end
  end
end
return moved
