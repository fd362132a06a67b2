local argv, key = ARGV, KEYS[1]
local xadd, unpack = redis.pcall, unpack
local n = tonumber(argv[1])
local added, skipped = 0, 0
local args = {}
local i = n + 2
local total = #argv
local event_field = nil
for j = 1, n do
  args[2 * j - 1] = argv[1 + j]
  if argv[1 + j] == 'event_id' then event_field = j end
end
local nargs = 2 * n
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
while i <= total do
  local id = argv[i]
  for j = 1, n do
    args[2 * j] = argv[i + j]
  end
  local r = xadd('XADD', key, id, unpack(args, 1, nargs))
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then
      return redis.error_reply('PUBLISHREFUSED ' .. id .. ' ' .. r.err)
    end
    local found = redis.call('XRANGE', key, id, id)
    if #found == 1 then
      if event_field then
        local stored = nil
        local fields = found[1][2]
        for k = 1, #fields, 2 do
          if fields[k] == 'event_id' then stored = fields[k + 1] end
        end
        if stored ~= argv[i + event_field] then
          return redis.error_reply('PUBLISHREFUSED ' .. id ..
            ' the stream holds event ' .. tostring(stored) .. ' at this id, not ' ..
            argv[i + event_field] .. ': the event store and the stream disagree')
        end
      end
    else
      -- Missing: trimmed (below the first entry) or deleted (at or below the stream's
      -- max-deleted-entry-id, which XDEL moves); otherwise never published here, so the store
      -- and the stream disagree.
      local info = redis.call('XINFO', 'STREAM', key)
      local max_deleted, first_entry = '0-0', nil
      for k = 1, #info, 2 do
        if info[k] == 'max-deleted-entry-id' then max_deleted = info[k + 1] end
        if info[k] == 'first-entry' and type(info[k + 1]) == 'table' then
          first_entry = info[k + 1][1]
        end
      end
      local trimmed = first_entry ~= nil and id_less(id, first_entry)
      if not trimmed and id_less(max_deleted, id) then
        return redis.error_reply('PUBLISHREFUSED ' .. id ..
          ' was never in the stream: the event store and the stream disagree')
      end
    end
    skipped = skipped + 1
  else
    added = added + 1
  end
  i = i + n + 1
end
return {added, skipped}
