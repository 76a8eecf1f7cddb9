-- ARGV: [2] id. The message's record (see `record`), nil once acked.
if redis.call('EXISTS', S) == 0 then
  return nil
end
return record(ARGV[2])
