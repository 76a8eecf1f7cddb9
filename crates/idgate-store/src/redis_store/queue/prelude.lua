-- Shared by every queue script: the keys of one queue (all under its hash tag, so one
-- Cluster slot) and the steps that keep the stream, its consumer group and the side sets
-- in agreement. Message ids are strings throughout: Lua never formats a large number.
local SEQ, S, LEASED, WAIT, READY, PARKED, ERR, HOLDERS, REVIVED =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
-- Followed by an order key: the messages of that key that are neither acked nor dead.
local BY_KEY = ARGV[1]
-- The consumer group, and the two consumers that are no process: one holds what was
-- taken in and waits (for its time or its turn), the other the dead letters.
local GROUP, WAITING, DEAD = 'idgate', '(waiting)', '(dead)'

-- Message n is stream entry n-0.
local function sid(n)
  return n .. '-0'
end

local function fields(list)
  local f = {}
  for i = 1, #list, 2 do
    f[list[i]] = list[i + 1]
  end
  return f
end

-- Message n's fields (p payload, m max attempts, e enqueued, r first ready, k order key);
-- nil once acked.
local function entry(n)
  local e = redis.call('XRANGE', S, sid(n), sid(n))[1]
  if not e then
    return nil
  end
  return fields(e[2])
end

-- Who holds message n in the group and its attempts (the delivery count); nil and 0 while
-- the group has not taken it in.
local function pending(n)
  local p = redis.call('XPENDING', S, GROUP, sid(n), sid(n), 1)[1]
  if not p then
    return nil, 0
  end
  return p[2], tonumber(p[4])
end

-- The id of the last message the group has taken in ('0' before the first).
local function last_taken()
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', S)) do
    local info = fields(g)
    if info.name == GROUP then
      return string.sub(info['last-delivered-id'], 1, -3)
    end
  end
  return '0'
end

-- Moves message n to `consumer` in the group, setting its attempts when given.
local function give(n, consumer, attempts)
  if attempts then
    redis.call('XCLAIM', S, GROUP, consumer, 0, sid(n), 'RETRYCOUNT', attempts, 'JUSTID')
  else
    redis.call('XCLAIM', S, GROUP, consumer, 0, sid(n), 'JUSTID')
  end
end

-- A consumer stays in the group only while it holds a message, so that processes that are
-- gone leave nothing behind.
local function release(consumer)
  if consumer and #redis.call('XPENDING', S, GROUP, '-', '+', 1, consumer) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', S, GROUP, consumer)
  end
end

-- The oldest message of order key k that is neither acked nor dead.
local function head(k)
  return redis.call('ZRANGE', BY_KEY .. k, 0, 0)[1]
end

-- The claim on n (of order key k, or none) is answered or given up.
local function unlease(n, k)
  redis.call('ZREM', LEASED, n)
  if k and redis.call('HGET', HOLDERS, k) == n then
    redis.call('HDEL', HOLDERS, k)
  end
end

-- n leaves its order key for good (acked or dead): the next of the key, if it was parked
-- behind n, now waits only for its own time.
local function leave(n, k)
  if not k then
    return
  end
  local was_head = head(k) == n
  redis.call('ZREM', BY_KEY .. k, n)
  if not was_head then
    return
  end
  local h = head(k)
  local at = h and redis.call('ZSCORE', PARKED, h)
  if at then
    redis.call('ZREM', PARKED, h)
    redis.call('ZADD', WAIT, at, h)
  end
end

-- n, taken in and not leased, is not claimable before `at`: in WAIT as the next of its key
-- (or without one), in PARKED behind an older message of its key.
local function hold(n, k, at)
  if k and head(k) ~= n then
    redis.call('ZADD', PARKED, at, n)
  else
    redis.call('ZADD', WAIT, at, n)
  end
end

-- The message `lease` names, if that lease is still the latest claim: its fields, holder
-- and attempts; nil otherwise.
local function leased(n, attempt)
  local f = entry(n)
  local holder, attempts = pending(n)
  if not f or not holder or not redis.call('ZSCORE', LEASED, n) then
    return nil
  end
  if attempts ~= tonumber(attempt) then
    return nil
  end
  return f, holder, attempts
end

-- When message n's current run of attempts began: when it was last revived, or else
-- when it was pushed.
local function since(n, f)
  return redis.call('HGET', REVIVED, n) or f.e
end

-- What `show` tells of message n: {n, attempts, max attempts, enqueued, ready at, lease
-- until, dead, order key, last error, revived at}, false where there is none; nil once
-- acked.
local function record(n)
  local f = entry(n)
  if not f then
    return nil
  end
  local holder, attempts = pending(n)
  local ready_at = redis.call('ZSCORE', WAIT, n) or redis.call('ZSCORE', PARKED, n) or f.r
  return {
    n, attempts, f.m, f.e, ready_at, redis.call('ZSCORE', LEASED, n),
    holder == DEAD and '1' or false, f.k or false, redis.call('HGET', ERR, n),
    redis.call('HGET', REVIVED, n),
  }
end
