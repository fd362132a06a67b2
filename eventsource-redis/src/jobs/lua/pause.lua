redis.call('HSET', KEYS[1], 'paused', ARGV[1])
local event = 'resumed'
if ARGV[1] == '1' then event = 'paused' end
emit(KEYS[2], tonumber(ARGV[2]), 'event', event)
return 1
