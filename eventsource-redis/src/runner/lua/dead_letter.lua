if ARGV[4] == '1' then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if #p == 0 or p[1][2] ~= ARGV[3] then
    return -1
  end
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
