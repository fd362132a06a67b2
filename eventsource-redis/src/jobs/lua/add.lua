local front, maxlen = ARGV[1], tonumber(ARGV[3])
local id = ARGV[2]
local seq = redis.call('INCR', KEYS[1])
if id == '' then
  id = tostring(seq)
elseif redis.call('EXISTS', front .. 'job:' .. id) == 1 then
  return {0, id}
end
local jk = front .. 'job:' .. id
local now = now_ms()
redis.call('HSET', jk, unpack(ARGV, 5))
redis.call('HSET', jk, 'ts', now, 'seq', seq, 'attemptsMade', 0)
enqueue(KEYS[2], KEYS[3], jk, id, now, tonumber(ARGV[4]))
emit(KEYS[4], maxlen, 'event', 'added', 'id', id, 'name', redis.call('HGET', jk, 'name') or '')
return {1, id}
