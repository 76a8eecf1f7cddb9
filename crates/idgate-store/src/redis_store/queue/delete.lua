-- ARGV: [2] id, [3] now, [4] '1' to delete only a dead letter. 1 when the message is
-- deleted with its payload, in whatever state but leased (a live lease is its claimer's);
-- 0 when there is none, it is leased, or (with [4]) it is not a dead letter.
local n, now = ARGV[2], ARGV[3]
if redis.call('EXISTS', S) == 0 then
  return 0
end
local f = entry(n)
if not f then
  return 0
end
local holder, attempts = pending(n)
local till = redis.call('ZSCORE', LEASED, n)
if holder ~= DEAD and till and tonumber(till) > tonumber(now) then
  return 0
end
-- Dead: buried, or its last lease ran out (`Meta::state`).
if ARGV[4] == '1' and holder ~= DEAD and not (till and attempts >= tonumber(f.m)) then
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
redis.call('HDEL', REVIVED, n)
leave(n, f.k)
release(holder)
return 1
