-- ARGV: [2] id, [3] now. 1 when a dead letter was made claimable again with its attempts
-- reset, its run of attempts starting now. Back in its order key, it goes before the younger messages of the key: a claim
-- checks each message's turn, so one already in :wait or :ready stays there and waits.
local n = ARGV[2]
local f = entry(n)
local holder, attempts = pending(n)
if not f or not holder then
  return 0
end
local till = redis.call('ZSCORE', LEASED, n)
local ran_out = till and tonumber(till) <= tonumber(ARGV[3]) and attempts >= tonumber(f.m)
if holder ~= DEAD and not ran_out then
  return 0
end
unlease(n, f.k)
redis.call('HSET', REVIVED, n, ARGV[3])
give(n, WAITING, 0)
release(holder)
if f.k then
  redis.call('ZADD', BY_KEY .. f.k, n, n)
end
hold(n, f.k, ARGV[3])
return 1
