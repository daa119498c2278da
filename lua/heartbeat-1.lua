--[[
  heartbeat-1.lua · pylivermore script contract v1
  Renew the caller's lease: refresh lastHeartbeat and the TTL, only if the
  record exists and its owner digest is sha1hex(token). Never re-creates a record.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status

  ARGV[1]  token    owner secret given to claim, 16-128 chars of [A-Za-z0-9_-]
  ARGV[2]  ttl_ms   integer milliseconds, 10..86400000

  Reply    {"RENEWED", last_heartbeat_iso}   TTL reset to ttl_ms
           {"EXPIRED"}   no record: the lease ran out or was released; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   the key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   status (PEXPIRE, then HSET lastHeartbeat)
  Time     server TIME (lastHeartbeat)
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS ~= 1 or #ARGV ~= 2 then
  return redis.error_reply('ERR pylivermore bad-args: heartbeat takes 1 key and 2 arguments')
end
local status = KEYS[1]
local token, ttl_arg = ARGV[1], ARGV[2]
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end

local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken')
-- The stored digest is sha1hex of a token that the claim checked: when it matches, neither the
-- token nor the digest needs a pattern check (on every other path the token is checked first).
local mine = held[1] and #token <= 128 and held[1] == redis.sha1hex(token)
if not mine and (#token < 16 or #token > 128 or not string.find(token, '^[%w_%-]+$')) then
  return bad('token must be 16-128 characters of [A-Za-z0-9_-]')
end
local ttl = #ttl_arg <= 8 and string.find(ttl_arg, '^[1-9]%d*$') and tonumber(ttl_arg)
if not ttl or ttl < 10 or ttl > 86400000 then
  -- PEXPIRE with 0 or a negative value would delete the key: never let one through.
  return bad('ttl_ms must be an integer from 10 to 86400000')
end
if held['err'] then return {'CORRUPT', 'status key is not a hash'} end
if not held[1] then
  if rcall('EXISTS', status) == 1 then return {'CORRUPT', 'status hash has no ownerDigest'} end
  return {'EXPIRED'}
end
if (not mine and (#held[1] ~= 40 or not string.find(held[1], '^%x+$'))) or not held[2] or not string.find(held[2], '^[1-9]%d*$') then
  return {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
end
if not mine then return {'TAKEN', held[2]} end

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
-- PEXPIRE first: it needs no memory, so under maxmemory/noeviction the renewal (and, being
-- no longer the first write, the HSET) still goes through instead of failing with OOM.
rcall('PEXPIRE', status, ttl)
rcall('HSET', status, 'lastHeartbeat', now)
return {'RENEWED', now}
