-- ARGV: [2] id, [3] attempt. 1 when acked, -1 for a stale lease. The entry is deleted from
-- the stream (XDEL) at once: nothing of an acked message is kept.
local n = ARGV[2]
local f, holder = leased(n, ARGV[3])
if not f then
  return -1
end
unlease(n, f.k)
redis.call('XACK', S, GROUP, sid(n))
redis.call('XDEL', S, sid(n))
redis.call('HDEL', ERR, n)
redis.call('HDEL', REVIVED, n)
leave(n, f.k)
release(holder)
return 1
