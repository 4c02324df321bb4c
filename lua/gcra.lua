-- GCRA rate limiting with redis-cell's CL.THROTTLE semantics and reply. The
-- same algorithm as src/limits/gcra.rs, in integer microseconds (exact in
-- Lua's doubles); a test holds the two to the same replies.
--
-- KEYS[1]  the bucket (one key per call)
-- ARGV[1]  max_burst   ARGV[2] count   ARGV[3] period (seconds)
-- ARGV[4]  quantity (default 1)
-- ARGV[5]  now in microseconds: for conformance tests only; otherwise Redis TIME
-- Reply: {limited, limit, remaining, retry_after, reset_after} (seconds)

local max_burst = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local quantity = tonumber(ARGV[4] or '1')
if not (max_burst and count and period and quantity) then
  return redis.error_reply('ERR gcra: arguments must be integers')
end
if count <= 0 or period <= 0 then
  return redis.error_reply('ERR gcra: zero or negative rates are not supported')
end
if max_burst < 0 then
  return redis.error_reply('ERR gcra: max_burst must not be negative')
end
if quantity < 0 then
  return redis.error_reply('ERR gcra: quantity must not be negative')
end

local function trunc(x)
  if x >= 0 then return math.floor(x) end
  return math.ceil(x)
end

-- Whole seconds, plus one when a partial millisecond remains.
local function cell_seconds(us)
  local whole = trunc(us / 1000000)
  if trunc(math.fmod(us, 1000000) / 1000) > 0 then
    whole = whole + 1
  end
  return whole
end

local now
if ARGV[5] then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local interval = math.floor(period * 1000000 / count)
if interval <= 0 then
  return redis.error_reply('ERR gcra: zero or negative rates are not supported')
end
local limit = max_burst + 1
local tolerance = interval * limit
local increment = interval * quantity

local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = tonumber(stored)
end
local new_tat = math.max(tat, now) + increment
local diff = now - (new_tat - tolerance)

local limited = 0
local retry_after = -1000000
local ttl
if diff < 0 then
  limited = 1
  if increment <= tolerance then
    retry_after = -diff
  end
  ttl = tat - now
else
  ttl = new_tat - now
  if ttl > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ttl / 1000))
  end
end

local remaining = 0
local next = tolerance - ttl
if next > -interval then
  remaining = trunc(next / interval)
end
return {limited, limit, remaining, cell_seconds(retry_after), cell_seconds(ttl)}
