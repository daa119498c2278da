--[[
  force_release-2.lua · pylivermore script contract v1
  Operator tool: remove whoever holds the resource, whatever its state, and log
  who did it and why. The holder's next heartbeat answers EXPIRED. The fence key
  is kept, so the next claim's token is higher.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status
  KEYS[2]  log      stream, the activity log         <ns>:{<id>}:log

  ARGV[1]  reason         why, 1-1024 bytes
  ARGV[2]  operator       who, 1-255 bytes
  ARGV[3]  retention_ms   integer milliseconds 1000..315360000000; log entries older than this are trimmed (MINID ~)

  Reply    {"RELEASED", fencing_token, state}   the removed holder's token and state
           {"ABSENT"}   no record; nothing written
           {"CORRUPT", reason}   a key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   log (XADD MINID ~), status (DEL)
  Time     server TIME (timestamp, log trimming)
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply('ERR pylivermore bad-args: force_release takes 2 keys and 3 arguments')
end
local status, log = KEYS[1], KEYS[2]
local reason, operator, retention_arg = ARGV[1], ARGV[2], ARGV[3]
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
if #reason < 1 or #reason > 1024 then return bad('reason must be 1-1024 bytes') end
if #operator < 1 or #operator > 255 then return bad('operator must be 1-255 bytes') end
local retention = #retention_arg <= 12 and string.find(retention_arg, '^[1-9]%d*$') and tonumber(retention_arg)
if not retention or retention < 1000 or retention > 315360000000 then
  return bad('retention_ms must be an integer from 1000 to 315360000000')
end

local held = redis.pcall('HMGET', status, 'fencingToken', 'connectionState', 'exchangeId', 'exchangeName',
  'hostname', 'ipAddress', 'instanceId')
if held['err'] then return {'CORRUPT', 'status key is not a hash'} end
if not held[1] then
  if rcall('EXISTS', status) == 1 then return {'CORRUPT', 'status hash has no fencingToken'} end
  return {'ABSENT'}
end
if not string.find(held[1], '^[1-9]%d*$') or not held[2] or not held[3] or not held[4] or not held[5] then
  return {'CORRUPT', 'status hash lacks a valid fencingToken, connectionState or identity'}
end
local log_kind = rcall('TYPE', log)['ok']
if log_kind ~= 'stream' and log_kind ~= 'none' then return {'CORRUPT', 'log key holds a ' .. log_kind .. ', not a stream'} end

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

rcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention), '*',
  'event', 'force_release', 'timestamp', iso(sec, usec), 'exchangeId', held[3], 'exchangeName', held[4],
  'hostname', held[5], 'ip', held[6] or '', 'state', held[2], 'fencingToken', held[1],
  'instanceId', held[7] or '', 'reason', reason, 'operator', operator)
rcall('DEL', status)
return {'RELEASED', held[1], held[2]}
