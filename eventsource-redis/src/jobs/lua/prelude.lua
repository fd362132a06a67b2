local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(events, maxlen, ...)
  if maxlen > 0 then
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', ...)
  end
end
local function wait_score(jk)
  local p = tonumber(redis.call('HGET', jk, 'priority') or '0') or 0
  local seq = tonumber(redis.call('HGET', jk, 'seq') or '0') or 0
  return p * 4294967296 + (seq % 4294967296)
end
-- Records `id` as finished in `set`, scored in microseconds and always after the set's last
-- member: jobs finishing within one tick keep their order, which `keep_last` relies on (a
-- tie would be ordered by id, as text).
local function finish_in(set, id)
  local t = redis.call('TIME')
  local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
  redis.call('ZADD', set, score, id)
end
local function keep_last(set, base, keep)
  if keep < 0 then return end
  local n = redis.call('ZCARD', set)
  if n <= keep then return end
  local old = redis.call('ZRANGE', set, 0, n - keep - 1)
  for _, id in ipairs(old) do redis.call('DEL', base .. 'job:' .. id) end
  redis.call('ZREMRANGEBYRANK', set, 0, n - keep - 1)
end
-- Queues job `id` (hash `jk`): in `delayed` until `now + delay` if `delay > 0`, else in `wait`.
local function enqueue(wait, delayed, jk, id, now, delay)
  if delay > 0 then
    redis.call('ZADD', delayed, now + delay, id)
    redis.call('HSET', jk, 'state', 'delayed')
  else
    redis.call('ZADD', wait, wait_score(jk), id)
    redis.call('HSET', jk, 'state', 'wait')
  end
end
-- Ends an attempt: drops its lock and token, counts it and keeps its error, if any.
-- Returns the attempts made and allowed.
local function end_attempt(active, jk, id, reason)
  redis.call('ZREM', active, id)
  redis.call('HDEL', jk, 'token')
  local made = redis.call('HINCRBY', jk, 'attemptsMade', 1)
  if reason then redis.call('HSET', jk, 'failedReason', reason) end
  return made, tonumber(redis.call('HGET', jk, 'attempts') or '1') or 1
end
-- Moves a job out of attempts to `failed`, keeping the job's number of failed jobs.
local function fail_for_good(failed, events, maxlen, front, jk, id, reason, made, now)
  redis.call('HSET', jk, 'state', 'failed', 'finishedOn', now)
  finish_in(failed, id)
  emit(events, maxlen, 'event', 'failed', 'id', id, 'name', redis.call('HGET', jk, 'name') or '',
    'reason', reason, 'attemptsMade', made)
  keep_last(failed, front, tonumber(redis.call('HGET', jk, 'keepFailed') or '-1'))
end
-- Promotes due delayed jobs, then takes the first waiting job under `token`'s lock: replies
-- {'job', id, field, value, ...}, {'paused'}, {'empty'} or {'empty', ms until the next is due}.
local function take_next(wait, delayed, active, meta, front, token, lock, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    enqueue(wait, delayed, front .. 'job:' .. id, id, now, 0)
  end
  if #due > 0 then redis.call('ZREM', delayed, unpack(due)) end
  if redis.call('HGET', meta, 'paused') == '1' then return {'paused'} end
  local popped = redis.call('ZPOPMIN', wait)
  if #popped == 0 then
    local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
    if #nxt == 0 then return {'empty'} end
    return {'empty', tostring(math.max(0, tonumber(nxt[2]) - now))}
  end
  local id = popped[1]
  local jk = front .. 'job:' .. id
  redis.call('ZADD', active, now + lock, id)
  redis.call('HSET', jk, 'state', 'active', 'token', token, 'processedOn', now)
  local reply = redis.call('HGETALL', jk)
  table.insert(reply, 1, id)
  table.insert(reply, 1, 'job')
  return reply
end
local function holds(active, jk, id, token)
  return redis.call('HGET', jk, 'token') == token and redis.call('ZSCORE', active, id) ~= false
end
