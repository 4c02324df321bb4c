-- Socket leases: each replica registers an incarnation with a lease that it
-- renews; open sockets are recorded under the incarnation that holds them, and
-- counts sum over live incarnations only. When a lease lapses (the replica
-- died, paused or was cut off), the first script to notice deletes that
-- incarnation and everything it counted, so nothing drifts after a crash.
-- Acquire and release are idempotent by connection id.
--
-- KEYS[1]  the namespace, a hash tag such as "{collabd:ws}", so every key
--          below (built from it) lives in one slot
-- ARGV[1]  the operation: register | renew | acquire | release | rooms
-- Times come from Redis TIME, in milliseconds.

local base = KEYS[1]
local incarnations = base .. ':incarnations'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function keys_of(inc)
  local prefix = base .. ':inc:' .. inc
  return prefix .. ':sockets', prefix .. ':users', prefix .. ':drafts'
end

-- Every key lives no longer than the lease that owns it: an incarnation's
-- records expire with its lease, the set of incarnations with the latest
-- one. If every replica dies, nothing is left once the last lease lapsed.
local function expire_with_lease(inc)
  local expiry = redis.call('ZSCORE', incarnations, inc)
  if not expiry then return end
  local sockets, users, drafts = keys_of(inc)
  redis.call('PEXPIREAT', sockets, expiry)
  redis.call('PEXPIREAT', users, expiry)
  redis.call('PEXPIREAT', drafts, expiry)
  local latest = redis.call('ZRANGE', incarnations, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', incarnations, latest[2])
end

-- Forget incarnations whose lease lapsed, with their counts.
for _, inc in ipairs(redis.call('ZRANGEBYSCORE', incarnations, '-inf', now)) do
  local sockets, users, drafts = keys_of(inc)
  redis.call('DEL', sockets, users, drafts)
  redis.call('ZREM', incarnations, inc)
end

local op = ARGV[1]

if op == 'register' then
  -- ARGV[2] incarnation, ARGV[3] ttl ms, then (connection, user, draft)
  -- triples: the sockets the replica holds now. Replaces whatever the
  -- incarnation recorded before. Reply: live incarnations.
  local inc, ttl = ARGV[2], tonumber(ARGV[3])
  local sockets, users, drafts = keys_of(inc)
  redis.call('DEL', sockets, users, drafts)
  redis.call('ZADD', incarnations, now + ttl, inc)
  for i = 4, #ARGV, 3 do
    redis.call('HSET', sockets, ARGV[i], ARGV[i + 1] .. '\n' .. ARGV[i + 2])
    redis.call('HINCRBY', users, ARGV[i + 1], 1)
    redis.call('HINCRBY', drafts, ARGV[i + 2], 1)
  end
  expire_with_lease(inc)
  return redis.call('ZCARD', incarnations)
end

if op == 'renew' then
  -- ARGV[2] incarnation, ARGV[3] ttl ms. Reply: live incarnations, or 0 when
  -- the lease had lapsed (the caller must register a new incarnation).
  local inc, ttl = ARGV[2], tonumber(ARGV[3])
  if not redis.call('ZSCORE', incarnations, inc) then
    return 0
  end
  redis.call('ZADD', incarnations, now + ttl, inc)
  expire_with_lease(inc)
  return redis.call('ZCARD', incarnations)
end

if op == 'acquire' then
  -- ARGV[2] incarnation, ARGV[3] connection, ARGV[4] user, ARGV[5] draft,
  -- ARGV[6..8] caps per user, per draft, global (0: none).
  -- Reply: {1, 'admitted'}, {0, scope} when a cap refuses, {-1, 'lapsed'}.
  local inc, conn, user, draft = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local cap_user, cap_draft, cap_global = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  if not redis.call('ZSCORE', incarnations, inc) then
    return {-1, 'lapsed'}
  end
  local sockets, users, drafts = keys_of(inc)
  if redis.call('HEXISTS', sockets, conn) == 1 then
    return {1, 'admitted'}
  end
  local n_user, n_draft, n_all = 0, 0, 0
  for _, other in ipairs(redis.call('ZRANGE', incarnations, 0, -1)) do
    local o_sockets, o_users, o_drafts = keys_of(other)
    n_user = n_user + tonumber(redis.call('HGET', o_users, user) or '0')
    n_draft = n_draft + tonumber(redis.call('HGET', o_drafts, draft) or '0')
    n_all = n_all + redis.call('HLEN', o_sockets)
  end
  if cap_global > 0 and n_all >= cap_global then return {0, 'global'} end
  if cap_user > 0 and n_user >= cap_user then return {0, 'user'} end
  if cap_draft > 0 and n_draft >= cap_draft then return {0, 'draft'} end
  redis.call('HSET', sockets, conn, user .. '\n' .. draft)
  redis.call('HINCRBY', users, user, 1)
  redis.call('HINCRBY', drafts, draft, 1)
  expire_with_lease(inc)
  return {1, 'admitted'}
end

if op == 'release' then
  -- ARGV[2] incarnation, ARGV[3] connection. Reply: 1 released, 0 unknown.
  local sockets, users, drafts = keys_of(ARGV[2])
  local entry = redis.call('HGET', sockets, ARGV[3])
  if not entry then
    return 0
  end
  local sep = string.find(entry, '\n', 1, true)
  local user, draft = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  redis.call('HDEL', sockets, ARGV[3])
  if redis.call('HINCRBY', users, user, -1) <= 0 then redis.call('HDEL', users, user) end
  if redis.call('HINCRBY', drafts, draft, -1) <= 0 then redis.call('HDEL', drafts, draft) end
  return 1
end

if op == 'rooms' then
  -- Reply: drafts with at least one socket on any live incarnation.
  local seen, n = {}, 0
  for _, inc in ipairs(redis.call('ZRANGE', incarnations, 0, -1)) do
    local _, _, drafts = keys_of(inc)
    for _, draft in ipairs(redis.call('HKEYS', drafts)) do
      if not seen[draft] then
        seen[draft] = true
        n = n + 1
      end
    end
  end
  return n
end

return redis.error_reply('ERR sockets.lua: unknown operation ' .. tostring(op))
