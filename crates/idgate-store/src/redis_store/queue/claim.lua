-- ARGV: [2] now, [3] lease until, [4] max, [5] this process's consumer name, [6] the most
-- the payloads handed out may add up to (at least one message is), [7] '1' to leave the
-- payloads out (and not count them). The rules of `crate::queue::claim`: oldest first; per
-- order key only the oldest message that is not dead, and none while one of the key is
-- leased; a message whose last lease ran out is a dead letter. Returns {id, attempt,
-- payload (false when left out), order key, enqueued, attempts since} each.
local now, max, me = tonumber(ARGV[2]), tonumber(ARGV[4]), ARGV[5]
local budget, bare = tonumber(ARGV[6]), ARGV[7] == '1'
if max <= 0 or redis.call('EXISTS', S) == 0 then
  return {}
end

local function live(n)
  local till = redis.call('ZSCORE', LEASED, n)
  return till and tonumber(till) > now
end

-- Whether n of order key k must wait its turn: an older message of the key is neither acked
-- nor dead, or another message of the key is leased.
local function blocked(n, k)
  if not k then
    return false
  end
  if head(k) ~= n then
    return true
  end
  local h = redis.call('HGET', HOLDERS, k)
  return h and h ~= n and live(h)
end

local out, gone, bytes = {}, {}, 0
-- Whether another message may be handed out: under `max`, and under the byte budget (the
-- answer carries the payloads; a long one would outlast its caller's patience).
local function room()
  return #out < max and (bare or #out == 0 or bytes < budget)
end
local function grant(n, f, attempt)
  redis.call('ZADD', LEASED, ARGV[3], n)
  if f.k then
    redis.call('HSET', HOLDERS, f.k, n)
  end
  if bare then
    table.insert(out, {n, attempt, false, f.k or false, f.e, since(n, f)})
  else
    bytes = bytes + #f.p
    table.insert(out, {n, attempt, f.p, f.k or false, f.e, since(n, f)})
  end
end

-- Leases that ran out: on the last attempt the message is a dead letter now; otherwise
-- it may be taken over (its old lease stays good until it is).
local expired = {}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', LEASED, '-inf', ARGV[2])) do
  local f = entry(n)
  local holder, attempts = pending(n)
  if not f or not holder then
    redis.call('ZREM', LEASED, n)
  elseif attempts >= tonumber(f.m) then
    unlease(n, f.k)
    if redis.call('HEXISTS', ERR, n) == 0 then
      redis.call('HSET', ERR, n, 'the last lease ran out without an answer')
    end
    give(n, DEAD)
    leave(n, f.k)
    gone[holder] = true
  else
    table.insert(expired, {n = n, f = f, holder = holder, attempts = attempts})
  end
end
table.sort(expired, function(a, b) return tonumber(a.n) < tonumber(b.n) end)

-- Waits that are over: claimable, in id order, from now on.
for _, n in ipairs(redis.call('ZRANGEBYSCORE', WAIT, '-inf', ARGV[2])) do
  redis.call('ZREM', WAIT, n)
  redis.call('ZADD', READY, n, n)
end

-- What the group took in before: the ready ones and the run-out leases, merged by id.
local ready, ri, after, ei = {}, 1, '-inf', 1
while room() do
  if ri > #ready then
    ready, ri = redis.call('ZRANGEBYSCORE', READY, after, '+inf', 'LIMIT', 0, 100), 1
  end
  local r, e = ready[ri], expired[ei]
  local n, f, holder, attempts
  if e and (not r or tonumber(e.n) < tonumber(r)) then
    ei = ei + 1
    n, f, holder, attempts = e.n, e.f, e.holder, e.attempts
  elseif r then
    ri, after = ri + 1, '(' .. r
    n, f = r, entry(r)
    holder, attempts = pending(r)
  else
    break
  end
  if not f or not holder then
    redis.call('ZREM', READY, n)
  elseif not blocked(n, f.k) then
    redis.call('ZREM', READY, n)
    give(n, me, attempts + 1)
    if holder ~= me then
      gone[holder] = true
    end
    grant(n, f, attempts + 1)
  end
end

-- Then what the group has not taken in yet, in stream order: XREADGROUP leases what is
-- claimable to this consumer and takes the rest in to wait. Skipped when nothing is new:
-- most claims find nothing, and they stay reads.
local fresh = tonumber(last_taken()) < tonumber(redis.call('GET', SEQ) or '0')
if fresh then
  gone[me] = true
end
while fresh and room() do
  local got = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', max - #out, 'STREAMS', S, '>')
  if not got then
    break
  end
  for _, e in ipairs(got[1][2]) do
    local n, f = string.sub(e[1], 1, -3), fields(e[2])
    if tonumber(f.r) <= now and not blocked(n, f.k) and room() then
      grant(n, f, 1)
    else
      give(n, WAITING, 0)
      hold(n, f.k, f.r)
    end
  end
end

for consumer in pairs(gone) do
  release(consumer)
end
return out
