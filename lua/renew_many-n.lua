--[[
  renew_many-n.lua · pylivermore script contract v1
  Renew many leases in one call, for a process that holds many: each record is renewed
  exactly as heartbeat-1.lua renews one (only if it exists and its owner digest is
  sha1hex(its token); never re-created). Every key is read and every argument checked
  before the first write; the server time is read once for all.

  KEYS[1]  status   hash, a live record <ns>:{<id>}:status; then KEYS[2..n] likewise, 1-1000 keys
                    (in a Redis Cluster, all of one hash slot)

  ARGV[1]  ttl_ms   integer milliseconds, 10..86400000, for every key
  ARGV[2]  token    owner secret of KEYS[1]; ARGV[i + 1] is the token of KEYS[i]; 16-128 chars of [A-Za-z0-9_-]

  Reply    a flat array of 2n strings: for KEYS[i], its word at 2i-1 and its data at 2i, as
           heartbeat-1.lua answers (data "" where heartbeat sends none):
           {"RENEWED", last_heartbeat_iso}   TTL reset to ttl_ms
           {"EXPIRED", ""}   no record: the lease ran out or was released; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   the key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written, for any key
  Writes   each renewed status (PEXPIRE, then HSET lastHeartbeat)
  Time     server TIME, once (lastHeartbeat)
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS < 1 or #KEYS > 1000 or #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR pylivermore bad-args: renew_many takes 1-1000 keys, then ttl_ms and one token per key')
end
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
local ttl_arg = ARGV[1]
local ttl = #ttl_arg <= 8 and string.find(ttl_arg, '^[1-9]%d*$') and tonumber(ttl_arg)
if not ttl or ttl < 10 or ttl > 86400000 then
  -- PEXPIRE with 0 or a negative value would delete the key: never let one through.
  return bad('ttl_ms must be an integer from 10 to 86400000')
end

-- First pass, reads only: decide every key (a bad token anywhere refuses the whole call).
-- The reply is flat (word, data per key): cheaper to build and to read than n small arrays.
local replies, renew = {}, {}
local function answer(i, word, data) replies[2 * i - 1] = word; replies[2 * i] = data end
for i = 1, #KEYS do
  local status, token = KEYS[i], ARGV[i + 1]
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken')
  -- The stored digest is sha1hex of a token that the claim checked: when it matches, neither the
  -- token nor the digest needs a pattern check (on every other path the token is checked first).
  local mine = held[1] and #token <= 128 and held[1] == redis.sha1hex(token)
  if mine and held[2] and string.find(held[2], '^[1-9]%d*$') then
    renew[#renew + 1] = i
  elseif not mine and (#token < 16 or #token > 128 or not string.find(token, '^[%w_%-]+$')) then
    return bad('token ' .. i .. ' must be 16-128 characters of [A-Za-z0-9_-]')
  elseif held['err'] then
    answer(i, 'CORRUPT', 'status key is not a hash')
  elseif not held[1] then
    if rcall('EXISTS', status) == 1 then answer(i, 'CORRUPT', 'status hash has no ownerDigest') else answer(i, 'EXPIRED', '') end
  elseif mine or #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not string.find(held[2], '^[1-9]%d*$') then
    answer(i, 'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken')
  else
    answer(i, 'TAKEN', held[2])
  end
end
if #renew == 0 then return replies end

-- Second pass, the writes.
local t = rcall('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local function iso(s, us)
  -- ISO-8601 UTC with milliseconds from TIME; civil date from days (H. Hinnant's algorithm),
  -- with floor(a / b) written as (a - a % b) / b: no function calls on this hot path.
  local rem = s % 86400
  local z = (s - rem) / 86400 + 719468
  local doe = z % 146097
  local a = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524 - (doe - doe % 146096) / 146096
  local yoe = (a - a % 365) / 365
  local doy = doe - 365 * yoe - (yoe - yoe % 4) / 4 + (yoe - yoe % 100) / 100
  local b = 5 * doy + 2
  local mp = (b - b % 153) / 153
  local c = 153 * mp + 2
  local month = mp < 10 and mp + 3 or mp - 9
  local h = rem % 3600
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', yoe + (z - doe) / 146097 * 400 + (month <= 2 and 1 or 0),
    month, doy - (c - c % 5) / 5 + 1, (rem - h) / 3600, (h - h % 60) / 60, h % 60, (us - us % 1000) / 1000)
end
local now = iso(sec, usec)
-- PEXPIRE first: it needs no memory, so under maxmemory/noeviction the renewals (and, the first
-- write having gone through, the HSETs) still go through instead of failing with OOM.
for j = 1, #renew do
  local i = renew[j]
  rcall('PEXPIRE', KEYS[i], ttl)
  rcall('HSET', KEYS[i], 'lastHeartbeat', now)
  answer(i, 'RENEWED', now)
end
return replies
