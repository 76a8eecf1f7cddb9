-- ARGV: [2] id, [3] attempt, [4] retry at, [5] reason. 1 for a retry, 0 for a dead letter,
-- -1 for a stale lease.
local n = ARGV[2]
local f, holder, attempts = leased(n, ARGV[3])
if not f then
  return -1
end
unlease(n, f.k)
redis.call('HSET', ERR, n, ARGV[5])
if attempts >= tonumber(f.m) then
  give(n, DEAD)
  leave(n, f.k)
  release(holder)
  return 0
end
give(n, WAITING)
hold(n, f.k, ARGV[4])
release(holder)
return 1
