--[[
  record_error-2.lua · pylivermore script contract v1
  Record an error on the caller's record (lastError, lastErrorAt) and log it,
  only if the caller owns the record. Never creates a record (no ghost keys).

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status
  KEYS[2]  log      stream, the activity log         <ns>:{<id>}:log

  ARGV[1]  token          owner secret given to claim, 16-128 chars of [A-Za-z0-9_-]
  ARGV[2]  request_id     1-64 chars of [A-Za-z0-9_-], unique per logical call; a repeat is answered "OK" without writing
  ARGV[3]  message        error text, 1-4096 bytes
  ARGV[4]  retention_ms   integer milliseconds 1000..315360000000; log entries older than this are trimmed (MINID ~)

  Reply    {"OK", last_error_at_iso}   recorded now, or already recorded by this request_id
           {"EXPIRED"}   no record: the lease ran out or was released; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   a key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   log (XADD MINID ~), status (HSET lastError, lastErrorAt, errorRequest)
  Time     server TIME (lastErrorAt, log trimming)
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 4 then
  return redis.error_reply('ERR pylivermore bad-args: record_error takes 2 keys and 4 arguments')
end
local status, log = KEYS[1], KEYS[2]
local token, request_id, message, retention_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end

if #token < 16 or #token > 128 or not string.find(token, '^[%w_%-]+$') then
  return bad('token must be 16-128 characters of [A-Za-z0-9_-]')
end
if #request_id < 1 or #request_id > 64 or not string.find(request_id, '^[%w_%-]+$') then
  return bad('request_id must be 1-64 characters of [A-Za-z0-9_-]')
end
if #message < 1 or #message > 4096 then return bad('message must be 1-4096 bytes') end
local retention = #retention_arg <= 12 and string.find(retention_arg, '^[1-9]%d*$') and tonumber(retention_arg)
if not retention or retention < 1000 or retention > 315360000000 then
  return bad('retention_ms must be an integer from 1000 to 315360000000')
end

local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'connectionState', 'errorRequest',
  'exchangeId', 'exchangeName', 'hostname', 'ipAddress', 'instanceId', 'lastErrorAt')
if held['err'] then return {'CORRUPT', 'status key is not a hash'} end
if not held[1] then
  if rcall('EXISTS', status) == 1 then return {'CORRUPT', 'status hash has no ownerDigest'} end
  return {'EXPIRED'}
end
if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not string.find(held[2], '^[1-9]%d*$')
    or not held[3] or not held[5] or not held[6] or not held[7] then
  return {'CORRUPT', 'status hash lacks a valid ownerDigest, fencingToken, connectionState or identity'}
end
if held[1] ~= redis.sha1hex(token) then return {'TAKEN', held[2]} end
if held[4] == request_id then return {'OK', held[10] or ''} end

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

-- XADD is the first write: if the log key holds another type it fails (WRONGTYPE) and
-- nothing has been written; any other error (OOM) is passed on as it is.
local added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention), '*',
  'event', 'error', 'timestamp', now, 'exchangeId', held[5], 'exchangeName', held[6],
  'hostname', held[7], 'ip', held[8] or '', 'error', message, 'state', held[3],
  'fencingToken', held[2], 'instanceId', held[9] or '', 'requestId', request_id)
if type(added) == 'table' then
  if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
  return redis.error_reply(added['err'])
end
rcall('HSET', status, 'lastError', message, 'lastErrorAt', now, 'errorRequest', request_id)
return {'OK', now}
