local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local out = {}
for i = 1, #f, 2 do
  if string.sub(f[i], 1, 4) ~= 'dlq_' then
    out[#out + 1] = f[i]
    out[#out + 1] = f[i + 1]
  end
end
if #out == 0 then
  return redis.error_reply('REQUEUEEMPTY the dead letter carries no fields of the original entry')
end
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
