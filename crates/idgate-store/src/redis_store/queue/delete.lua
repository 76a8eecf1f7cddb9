-- ARGV: [2] id, [3] now. 1 when the message is deleted with its payload, in whatever state
-- but leased (a live lease is its claimer's); 0 when there is none or it is leased.
local n, now = ARGV[2], ARGV[3]
if redis.call('EXISTS', S) == 0 then
  return 0
end
local f = entry(n)
if not f then
  return 0
end
local holder = pending(n)
local till = redis.call('ZSCORE', LEASED, n)
if holder ~= DEAD and till and tonumber(till) > tonumber(now) then
  return 0
end
unlease(n, f.k)
if holder then
  redis.call('XACK', S, GROUP, sid(n))
end
redis.call('ZREM', WAIT, n)
redis.call('ZREM', READY, n)
redis.call('ZREM', PARKED, n)
redis.call('XDEL', S, sid(n))
redis.call('HDEL', ERR, n)
leave(n, f.k)
release(holder)
return 1
