-- ARGV: [2] now. {ready, waiting, leased, dead}, by the states of `Meta::state`: counted
-- from the side sets and the group, reading only run-out leases and the messages the group
-- has not taken in yet.
if redis.call('EXISTS', S) == 0 then
  return {0, 0, 0, 0}
end
local now = ARGV[2]
local ready = redis.call('ZCARD', READY) + redis.call('ZCOUNT', WAIT, '-inf', now)
  + redis.call('ZCOUNT', PARKED, '-inf', now)
local waiting = redis.call('ZCOUNT', WAIT, '(' .. now, '+inf')
  + redis.call('ZCOUNT', PARKED, '(' .. now, '+inf')
local leased = redis.call('ZCOUNT', LEASED, '(' .. now, '+inf')
local dead = 0
for _, c in ipairs(redis.call('XPENDING', S, GROUP)[4] or {}) do
  if c[1] == DEAD then
    dead = tonumber(c[2])
  end
end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', LEASED, '-inf', now)) do
  local f = entry(n)
  local _, attempts = pending(n)
  if f and attempts >= tonumber(f.m) then
    dead = dead + 1
  elseif f then
    ready = ready + 1
  end
end
local from = '(' .. sid(last_taken())
repeat
  local page = redis.call('XRANGE', S, from, '+', 'COUNT', 100)
  for _, e in ipairs(page) do
    if tonumber(fields(e[2]).r) <= tonumber(now) then
      ready = ready + 1
    else
      waiting = waiting + 1
    end
    from = '(' .. e[1]
  end
until #page < 100
return {ready, waiting, leased, dead}
