--[[
  claim-3.lua · pylivermore script contract v1
  Claim one resource for one owner, atomically: create the status record with a
  TTL (the lease), issue a new fencing token, and log the claim. On conflict,
  answer with the holder's record and remaining TTL in the same reply.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status
  KEYS[2]  log      stream, the activity log         <ns>:{<id>}:log
  KEYS[3]  fence    string, last fencing token       <ns>:{<id>}:fence (never expires)

  ARGV[1]  token          owner secret, 16-128 chars of [A-Za-z0-9_-]; only sha1hex(token) is stored
  ARGV[2]  ttl_ms         integer milliseconds, 10..86400000
  ARGV[3]  exchange_id    resource id, 1-64 chars of [A-Za-z0-9._-], first one alphanumeric
  ARGV[4]  exchange_name  text, 1..128 bytes
  ARGV[5]  hostname       text, 1..255 bytes
  ARGV[6]  instance_id    text, 1..255 bytes, identity of the claiming process
  ARGV[7]  reclaim        "1": take over a record held by the same instance_id; "0": never
  ARGV[8]  retention_ms   integer milliseconds 1000..315360000000; log entries older than this are trimmed (MINID ~)

  Reply    {"CLAIMED", fencing_token, how}   how = "new" | "reclaim" | "retry" (same token again: nothing written)
           {"CONFLICT", pttl_ms, field, value, ...}   held by someone else; the holder's record; nothing written
           {"CORRUPT", reason}   a key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   log (XADD MINID ~, the first write), status (DEL on reclaim, HSET, PEXPIRE), fence (SET)
  Time     server TIME (timestamps, fencing token floor, log trimming)
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS ~= 3 or #ARGV ~= 8 then
  return redis.error_reply('ERR pylivermore bad-args: claim takes 3 keys and 8 arguments')
end
local status, log, fence = KEYS[1], KEYS[2], KEYS[3]
local token, ttl_arg, exchange_id, exchange_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hostname, instance_id, reclaim, retention_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end

if #token < 16 or #token > 128 or not string.find(token, '^[%w_%-]+$') then
  return bad('token must be 16-128 characters of [A-Za-z0-9_-]')
end
local ttl = int_in(ttl_arg, 10, 86400000)
if not ttl then return bad('ttl_ms must be an integer from 10 to 86400000') end
if #exchange_id > 64 or not string.find(exchange_id, '^%w[%w._%-]*$') then
  return bad('exchange_id must be 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit')
end
if #exchange_name < 1 or #exchange_name > 128 then return bad('exchange_name must be 1-128 bytes') end
if #hostname < 1 or #hostname > 255 then return bad('hostname must be 1-255 bytes') end
if #instance_id < 1 or #instance_id > 255 then return bad('instance_id must be 1-255 bytes') end
if reclaim ~= '0' and reclaim ~= '1' then return bad('reclaim must be "0" or "1"') end
local retention = int_in(retention_arg, 1000, 315360000000)
if not retention then return bad('retention_ms must be an integer from 1000 to 315360000000') end

-- Read and check everything before the first write: Redis does not roll back
-- writes made before a runtime error.
local kind = rcall('TYPE', status)['ok']
if kind ~= 'hash' and kind ~= 'none' then return {'CORRUPT', 'status key holds a ' .. kind .. ', not a hash'} end

-- Decide first whether this call writes at all: a conflict (the hot path under contention)
-- or a retried claim reads only the status record.
local digest = redis.sha1hex(token)
local how, replaced = 'new', ''
if kind == 'hash' then
  local held = rcall('HMGET', status, 'ownerDigest', 'instanceId', 'fencingToken')
  if not held[1] or not string.find(held[1], '^%x+$') or #held[1] ~= 40 or not held[3] or not int_in(held[3], 1, 9007199254740991) then
    return {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[1] == digest then return {'CLAIMED', held[3], 'retry'} end
  if reclaim == '1' and held[2] == instance_id then
    how, replaced = 'reclaim', held[3]
  else
    local reply = {'CONFLICT', rcall('PTTL', status)}
    local record = rcall('HGETALL', status)
    for i = 1, #record do reply[i + 2] = record[i] end
    return reply
  end
end

-- The fence is read with pcall: a wrong type answers an error table instead of aborting,
-- which spares a TYPE round. The log's type is checked by the XADD below (the first write).
local last_fence = 0
local fence_value = redis.pcall('GET', fence)
if type(fence_value) == 'table' then return {'CORRUPT', 'fence key does not hold a string'} end
if fence_value then
  last_fence = int_in(fence_value, 0, 9007199254740991)
  if not last_fence then return {'CORRUPT', 'fence key does not hold a decimal integer'} end
end

local t = rcall('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
-- Fencing token: strictly above every token issued before, and never below the
-- server clock in microseconds, so it keeps increasing after the fence key was
-- lost (restart without persistence, failover to a stale replica).
local token_num = math.max(last_fence + 1, sec * 1000000 + usec)
local fencing_token = string.format('%d', token_num)

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

-- XADD is the first write: if the log key holds another type it fails (WRONGTYPE) and
-- nothing has been written; any other error (OOM) is passed on as it is.
local added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention), '*',
  'event', 'claim', 'timestamp', now, 'exchangeId', exchange_id, 'exchangeName', exchange_name,
  'hostname', hostname, 'ip', '', 'fencingToken', fencing_token, 'instanceId', instance_id,
  'ttlMs', ttl_arg, 'how', how, 'replaced', replaced)
if type(added) == 'table' then
  if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
  return redis.error_reply(added['err'])
end
if how == 'reclaim' then rcall('DEL', status) end
rcall('HSET', status, 'exchangeId', exchange_id, 'exchangeName', exchange_name, 'hostname', hostname,
  'connectionState', 'idle', 'symbolCount', '0', 'lastHeartbeat', now, 'lastStateChange', now,
  'registeredAt', now, 'fencingToken', fencing_token, 'instanceId', instance_id, 'ownerDigest', digest)
rcall('PEXPIRE', status, ttl)
rcall('SET', fence, fencing_token)
return {'CLAIMED', fencing_token, how}
