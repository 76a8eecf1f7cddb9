-- ARGV: [2] enqueued, [3] ready at, [4] max attempts, [5] payload, [6] the order key when
-- there is one. The group is made with the stream, so that every message is in both.
if redis.call('EXISTS', S) == 0 then
  redis.call('XGROUP', 'CREATE', S, GROUP, '0', 'MKSTREAM')
end
redis.call('INCR', SEQ)
local n = redis.call('GET', SEQ)
local k = ARGV[6]
if k then
  redis.call('XADD', S, sid(n), 'p', ARGV[5], 'm', ARGV[4], 'e', ARGV[2], 'r', ARGV[3], 'k', k)
  redis.call('ZADD', BY_KEY .. k, n, n)
else
  redis.call('XADD', S, sid(n), 'p', ARGV[5], 'm', ARGV[4], 'e', ARGV[2], 'r', ARGV[3])
end
return n
