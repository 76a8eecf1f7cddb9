-- ARGV: [2] id, [3] attempt, [4] reason. 1 when the message is a dead letter now, whatever
-- attempts it had left; -1 for a stale lease.
local n = ARGV[2]
local f, holder = leased(n, ARGV[3])
if not f then
  return -1
end
unlease(n, f.k)
redis.call('HSET', ERR, n, ARGV[4])
give(n, DEAD)
leave(n, f.k)
release(holder)
return 1
