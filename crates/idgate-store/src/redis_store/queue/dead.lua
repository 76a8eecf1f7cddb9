-- ARGV: [2] now. The records of the dead letters: those the dead-letter consumer holds,
-- and those whose last lease ran out (the caller keeps what its state says is dead).
local out = {}
if redis.call('EXISTS', S) == 0 then
  return out
end
local from = '-'
repeat
  local page = redis.call('XPENDING', S, GROUP, from, '+', 100, DEAD)
  for _, p in ipairs(page) do
    local r = record(string.sub(p[1], 1, -3))
    if r then
      table.insert(out, r)
    end
    from = '(' .. p[1]
  end
until #page < 100
for _, n in ipairs(redis.call('ZRANGEBYSCORE', LEASED, '-inf', ARGV[2])) do
  local r = record(n)
  if r then
    table.insert(out, r)
  end
end
return out
