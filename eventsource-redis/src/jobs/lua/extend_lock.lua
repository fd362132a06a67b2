local jk = ARGV[1] .. 'job:' .. ARGV[2]
if not holds(KEYS[1], jk, ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[4]), ARGV[2])
return 1
