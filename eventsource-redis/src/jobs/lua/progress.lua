local jk = ARGV[1] .. 'job:' .. ARGV[2]
if not holds(KEYS[1], jk, ARGV[2], ARGV[3]) then return 0 end
redis.call('HSET', jk, 'progress', ARGV[4])
emit(KEYS[2], tonumber(ARGV[5]), 'event', 'progress', 'id', ARGV[2], 'progress', ARGV[4])
return 1
