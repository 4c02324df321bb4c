-- One replica at a time does a job (e.g. polling the store for the state
-- gauges): the holder of a short lease, renewed by each run.
-- KEYS[1] the job's lease key; ARGV[1] the candidate; ARGV[2] lease ms.
-- Reply: 1 when the candidate holds the lease now, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
