local front, id = ARGV[1], ARGV[2]
local jk = front .. 'job:' .. id
local now = now_ms()
local status = 'lost'
if holds(KEYS[1], jk, id, ARGV[3]) then
  status = 'done'
  end_attempt(KEYS[1], jk, id, nil)
  redis.call('HSET', jk, 'state', 'completed', 'returnvalue', ARGV[4], 'finishedOn', now)
  finish_in(KEYS[2], id)
  emit(KEYS[3], tonumber(ARGV[5]), 'event', 'completed', 'id', id,
    'name', redis.call('HGET', jk, 'name') or '', 'returnvalue', ARGV[4])
  keep_last(KEYS[2], front, tonumber(redis.call('HGET', jk, 'keepCompleted') or '-1'))
end
if ARGV[6] == '' then return {status} end
local reply = take_next(KEYS[4], KEYS[5], KEYS[1], KEYS[6], front, ARGV[6], tonumber(ARGV[7]), now)
table.insert(reply, 1, status)
return reply
