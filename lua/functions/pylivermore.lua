#!lua name=pylivermore_v2
-- GENERATED from lua/*.lua by `python -m pylivermore._library`: do not edit (edit the scripts, run it).
-- Each function is one script's body after its --[[ header ]], byte for byte: the same KEYS, ARGV and
-- replies as that file (lua/README.md). Load with FUNCTION LOAD REPLACE, call with
-- FCALL pylivermore_v2_<operation> <numkeys> <keys...> <args...>

-- claim-3.lua
redis.register_function('pylivermore_v2_claim', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 3 or #ARGV ~= 9 then
  return redis.error_reply('ERR pylivermore bad-args: claim takes 3 keys and 9 arguments')
end
local status, log, fence = KEYS[1], KEYS[2], KEYS[3]
local token, ttl_arg, exchange_id, exchange_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hostname, instance_id, reclaim, retention_arg, edges = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: text (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Valid UTF-8 of lo..hi bytes with no control character (lines: tab, LF and CR are allowed).
local function text_ok(s, lo, hi, lines)
  if #s < lo or #s > hi then return false end
  if not string.find(s, '[^ -~]') then return true end -- printable ASCII, the usual case: one scan
  if string.find(s, lines and '[%z\1-\8\11\12\14-\31\127]' or '[%z\1-\31\127]') then return false end
  local i = 1
  while true do
    local j = string.find(s, '[\128-\255]', i)
    if not j then return true end
    local c, n, lo2, hi2 = string.byte(s, j), 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c >= 224 and c <= 239 then n = 2; if c == 224 then lo2 = 160 elseif c == 237 then hi2 = 159 end
    elseif c >= 240 and c <= 244 then n = 3; if c == 240 then lo2 = 144 elseif c == 244 then hi2 = 143 end
    else return false end
    for k = 1, n do
      local b = string.byte(s, j + k)
      if not b or b < (k == 1 and lo2 or 128) or b > (k == 1 and hi2 or 191) then return false end
    end
    i = j + n + 1
  end
end
--- end

--- shared: retention (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) A retention_ms: 0 (no history: see append) or 86400000 (one day) to 315360000000
-- milliseconds; nil otherwise. A record's retentionMs is absent on a v1 record: the 90-day default.
local function retention_in(value)
  if value == '0' then return 0 end
  return int_in(value, 86400000, 315360000000)
end
local function record_retention(value)
  if not value then return 7776000000 end
  return retention_in(value)
end
--- end

local id, wrong = check_keys('status', 'log', 'fence')
if not id then return wrong end
if exchange_id ~= id then return bad('exchange_id must be the <id> of the keys (' .. id .. ')') end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
local ttl = int_in(ttl_arg, 10, 86400000)
if not ttl then return bad('ttl_ms must be an integer from 10 to 86400000') end
if not text_ok(exchange_name, 1, 128) then return bad('exchange_name must be 1-128 bytes of UTF-8 without control characters') end
if not text_ok(hostname, 1, 255) then return bad('hostname must be 1-255 bytes of UTF-8 without control characters') end
if not text_ok(instance_id, 1, 255) then return bad('instance_id must be 1-255 bytes of UTF-8 without control characters') end
if reclaim ~= '0' and reclaim ~= '1' then return bad('reclaim must be "0" or "1"') end
local retention = retention_in(retention_arg)
if not retention then
  return bad('retention_ms must be 0 (no history) or an integer from 86400000 (one day) to 315360000000')
end
if edges ~= '' then
  local ok = #edges <= 2048 and string.find(' ' .. edges, ' idle>', 1, true) and not string.find(edges, '^ ')
    and not string.find(edges, ' $') and not string.find(edges, '  ', 1, true)
  for edge in string.gmatch(edges, '[^ ]+') do
    local from, to = string.match(edge, '^([a-z_]+)>([a-z_]+)$')
    if not from or #from > 32 or #to > 32 then ok = false end
  end
  if not ok then
    return bad('table must be "" or edges "from>to" (state names of 1-32 chars of [a-z_]) separated by single spaces, ' ..
      'at most 2048 bytes, one of them leaving idle')
  end
end

-- Read and check everything before the first write: Redis does not roll back
-- writes made before a runtime error.
-- One HMGET reads all a conflict, a retry or a reclaim needs (a conflict is the hot path under
-- contention): the public fields (the CONFLICT reply) and the private ones behind them. It is sent
-- with pcall: a status key of another type answers WRONGTYPE, and only then TYPE names it.
local public = {'exchangeId', 'exchangeName', 'hostname', 'ipAddress', 'countryCode', 'adminEmail', 'adminDisplayName',
  'connectionState', 'symbolCount', 'connectedAt', 'lastHeartbeat', 'lastStateChange', 'registeredAt', 'lastError',
  'lastErrorAt', 'fencingToken', 'instanceId', 'stateTable', 'contract'}
local held = redis.pcall('HMGET', status, 'ownerDigest', 'retentionMs', unpack(public))
if held['err'] then
  return {'CORRUPT', 'status key holds a ' .. rcall('TYPE', status)['ok'] .. ', not a hash'}
end
-- held[1] ownerDigest, held[2] retentionMs, then public[i] at held[i + 2]
local h_id, h_name, h_host, h_token, h_instance, h_table = held[3], held[4], held[5], held[18], held[19], held[20]
local exists = held[1] or h_token or h_id or rcall('EXISTS', status) == 1

-- Decide first whether this call writes at all: a conflict (the hot path under contention)
-- or a retried claim reads only the status record.
local digest = redis.sha1hex(token)
local how, replaced = 'new', ''
if exists then
  if not held[1] or not string.find(held[1], '^%x+$') or #held[1] ~= 40 or not h_token or not int_in(h_token, 1, 9007199254740991) then
    return {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if h_id ~= id then return {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  -- A record without a TTL would never expire: no path (retry, reclaim, conflict) treats it as a lease.
  local pttl = rcall('PTTL', status)
  if pttl < 0 then return {'CORRUPT', 'status record has no TTL'} end
  if held[1] == digest then
    -- A token is for one claim: a retry must carry the same record arguments (exchange_name, hostname,
    -- instance_id, retention_ms, table); ttl_ms and reclaim are not stored, so they cannot be compared.
    if h_instance ~= instance_id or h_name ~= exchange_name or h_host ~= hostname
        or (held[2] or '7776000000') ~= retention_arg or (h_table or '') ~= edges then
      return bad('this token already claimed the resource with other arguments: use a new token for every claim')
    end
    return {'CLAIMED', h_token, 'retry'}
  end
  if reclaim == '1' and h_instance == instance_id then
    how, replaced = 'reclaim', h_token
  else
    -- The holder's public fields only: never its digest, sequence or retention.
    local reply = {'CONFLICT', pttl}
    for i = 1, #public do
      local value = held[i + 2]
      if value then reply[#reply + 1] = public[i]; reply[#reply + 1] = value end
    end
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

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
--- shared: append (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Append one activity-log entry, trimming entries older than retention_ms (MINID ~). It is each
-- script's first write: if the log key holds another type, XADD fails (WRONGTYPE) and nothing has been
-- written. Answers nil, or the reply to return (CORRUPT, or the server's error such as OOM).
-- A lease without history (retention_ms 0) writes no entry, except that a release (deregister,
-- force_release) adds one and trims it at once (MAXLEN 0): a waiter blocked on the log (XREAD BLOCK)
-- wakes, and the log stays empty (its last id moves on; an empty stream costs ~0.25 KB, one entry ~4.7).
local function append(log, sec, retention_ms, ...)
  local added
  if retention_ms > 0 then
    added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention_ms), '*', ...)
  else
    local event = select(2, ...)
    if event ~= 'deregister' and event ~= 'force_release' then return nil end
    added = redis.pcall('XADD', log, 'MAXLEN', '0', '*', ...)
  end
  if type(added) == 'table' and added['err'] then
    if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
    return redis.error_reply(added['err'])
  end
  return nil
end
--- end
local now = iso(sec, usec)

local failed = append(log, sec, retention, 'event', 'claim', 'timestamp', now, 'exchangeId', id,
  'exchangeName', exchange_name, 'hostname', hostname, 'ip', '', 'fencingToken', fencing_token,
  'instanceId', instance_id, 'ttlMs', ttl_arg, 'how', how, 'replaced', replaced)
if failed then return failed end
if how == 'reclaim' then rcall('DEL', status) end
rcall('HSET', status, 'exchangeId', id, 'exchangeName', exchange_name, 'hostname', hostname,
  'connectionState', 'idle', 'symbolCount', '0', 'lastHeartbeat', now, 'lastStateChange', now,
  'registeredAt', now, 'fencingToken', fencing_token, 'instanceId', instance_id, 'ownerDigest', digest,
  'seq', '0', 'retentionMs', retention_arg, 'contract', '2')
if edges ~= '' then rcall('HSET', status, 'stateTable', edges) end
rcall('PEXPIRE', status, ttl)
rcall('SET', fence, fencing_token)
return {'CLAIMED', fencing_token, how}
end)

-- deregister-2.lua
redis.register_function('pylivermore_v2_deregister', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 2 then
  return redis.error_reply('ERR pylivermore bad-args: deregister takes 2 keys and 2 arguments')
end
local status, log = KEYS[1], KEYS[2]
local token, fencing_arg = ARGV[1], ARGV[2]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end
--- shared: retention (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) A retention_ms: 0 (no history: see append) or 86400000 (one day) to 315360000000
-- milliseconds; nil otherwise. A record's retentionMs is absent on a v1 record: the 90-day default.
local function retention_in(value)
  if value == '0' then return 0 end
  return int_in(value, 86400000, 315360000000)
end
local function record_retention(value)
  if not value then return 7776000000 end
  return retention_in(value)
end
--- end

local id, wrong = check_keys('status', 'log')
if not id then return wrong end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
if not int_in(fencing_arg, 1, 9007199254740991) then return bad('fencing_token must be the decimal fencing token of the claim') end

local held, answer = owned(status, id, token, 'connectionState', 'exchangeName', 'hostname', 'ipAddress', 'instanceId',
  'retentionMs')
if not held then
  if answer[1] ~= 'EXPIRED' and answer[1] ~= 'TAKEN' then return answer end
  -- Not (or no longer) ours: was it released by its owner? The release's entry carries the lease's
  -- fencing token, and only later leases (higher tokens) write after it: look among the newest 16.
  local entries = redis.pcall('XREVRANGE', log, '+', '-', 'COUNT', 16)
  if entries['err'] then return {'CORRUPT', 'log key is not a stream'} end
  for i = 1, #entries do
    local f, event, fencing, state = entries[i][2], nil, nil, nil
    for j = 1, #f, 2 do
      if f[j] == 'event' then event = f[j + 1] elseif f[j] == 'fencingToken' then fencing = f[j + 1] elseif f[j] == 'state' then state = f[j + 1] end
    end
    if fencing == fencing_arg then
      if event == 'deregister' then return {'REPLAYED', state or ''} end
      break
    end
  end
  return answer
end
if held[2] ~= fencing_arg then return bad('fencing_token is not the fencing token of this lease (' .. held[2] .. ')') end
local retention = record_retention(held[10])
if not held[5] or not held[6] or not held[7] or not retention then
  return {'CORRUPT', 'status hash lacks a valid connectionState, identity or retentionMs'}
end

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
--- shared: append (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Append one activity-log entry, trimming entries older than retention_ms (MINID ~). It is each
-- script's first write: if the log key holds another type, XADD fails (WRONGTYPE) and nothing has been
-- written. Answers nil, or the reply to return (CORRUPT, or the server's error such as OOM).
-- A lease without history (retention_ms 0) writes no entry, except that a release (deregister,
-- force_release) adds one and trims it at once (MAXLEN 0): a waiter blocked on the log (XREAD BLOCK)
-- wakes, and the log stays empty (its last id moves on; an empty stream costs ~0.25 KB, one entry ~4.7).
local function append(log, sec, retention_ms, ...)
  local added
  if retention_ms > 0 then
    added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention_ms), '*', ...)
  else
    local event = select(2, ...)
    if event ~= 'deregister' and event ~= 'force_release' then return nil end
    added = redis.pcall('XADD', log, 'MAXLEN', '0', '*', ...)
  end
  if type(added) == 'table' and added['err'] then
    if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
    return redis.error_reply(added['err'])
  end
  return nil
end
--- end
local t = rcall('TIME')
local sec = tonumber(t[1])
local failed = append(log, sec, retention, 'event', 'deregister', 'timestamp', iso(sec, tonumber(t[2])), 'exchangeId', id,
  'exchangeName', held[6], 'hostname', held[7], 'ip', held[8] or '', 'state', held[5],
  'fencingToken', held[2], 'instanceId', held[9] or '')
if failed then return failed end
rcall('DEL', status)
return {'RELEASED', held[5]}
end)

-- force_release-2.lua
redis.register_function('pylivermore_v2_force_release', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply('ERR pylivermore bad-args: force_release takes 2 keys and 3 arguments')
end
local status, log = KEYS[1], KEYS[2]
local reason, operator, retention_arg = ARGV[1], ARGV[2], ARGV[3]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: text (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Valid UTF-8 of lo..hi bytes with no control character (lines: tab, LF and CR are allowed).
local function text_ok(s, lo, hi, lines)
  if #s < lo or #s > hi then return false end
  if not string.find(s, '[^ -~]') then return true end -- printable ASCII, the usual case: one scan
  if string.find(s, lines and '[%z\1-\8\11\12\14-\31\127]' or '[%z\1-\31\127]') then return false end
  local i = 1
  while true do
    local j = string.find(s, '[\128-\255]', i)
    if not j then return true end
    local c, n, lo2, hi2 = string.byte(s, j), 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c >= 224 and c <= 239 then n = 2; if c == 224 then lo2 = 160 elseif c == 237 then hi2 = 159 end
    elseif c >= 240 and c <= 244 then n = 3; if c == 240 then lo2 = 144 elseif c == 244 then hi2 = 143 end
    else return false end
    for k = 1, n do
      local b = string.byte(s, j + k)
      if not b or b < (k == 1 and lo2 or 128) or b > (k == 1 and hi2 or 191) then return false end
    end
    i = j + n + 1
  end
end
--- end

--- shared: retention (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) A retention_ms: 0 (no history: see append) or 86400000 (one day) to 315360000000
-- milliseconds; nil otherwise. A record's retentionMs is absent on a v1 record: the 90-day default.
local function retention_in(value)
  if value == '0' then return 0 end
  return int_in(value, 86400000, 315360000000)
end
local function record_retention(value)
  if not value then return 7776000000 end
  return retention_in(value)
end
--- end

local id, wrong = check_keys('status', 'log')
if not id then return wrong end
if not text_ok(reason, 1, 1024, true) then
  return bad('reason must be 1-1024 bytes of UTF-8 without control characters other than tab, LF and CR')
end
if not text_ok(operator, 1, 255) then return bad('operator must be 1-255 bytes of UTF-8 without control characters') end
local fallback = retention_in(retention_arg)
if not fallback then
  return bad('retention_ms must be 0 (no history) or an integer from 86400000 (one day) to 315360000000')
end

local held = redis.pcall('HMGET', status, 'fencingToken', 'connectionState', 'exchangeId', 'exchangeName',
  'hostname', 'ipAddress', 'instanceId', 'retentionMs')
if held['err'] then return {'CORRUPT', 'status key is not a hash'} end
if not held[1] then
  if rcall('EXISTS', status) == 1 then return {'CORRUPT', 'status hash has no fencingToken'} end
  return {'ABSENT'}
end
-- The lease's own retention (0: no history) decides, as for its owner's writes; the argument only
-- for a v1 record, which stored none.
local retention = held[8] and retention_in(held[8]) or (not held[8] and fallback)
if not int_in(held[1], 1, 9007199254740991) or not held[2] or held[3] ~= id or not held[4] or not held[5] or not retention then
  return {'CORRUPT', 'status hash lacks a valid fencingToken, connectionState, identity or retentionMs, or its exchangeId is not its key\'s id'}
end

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
--- shared: append (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Append one activity-log entry, trimming entries older than retention_ms (MINID ~). It is each
-- script's first write: if the log key holds another type, XADD fails (WRONGTYPE) and nothing has been
-- written. Answers nil, or the reply to return (CORRUPT, or the server's error such as OOM).
-- A lease without history (retention_ms 0) writes no entry, except that a release (deregister,
-- force_release) adds one and trims it at once (MAXLEN 0): a waiter blocked on the log (XREAD BLOCK)
-- wakes, and the log stays empty (its last id moves on; an empty stream costs ~0.25 KB, one entry ~4.7).
local function append(log, sec, retention_ms, ...)
  local added
  if retention_ms > 0 then
    added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention_ms), '*', ...)
  else
    local event = select(2, ...)
    if event ~= 'deregister' and event ~= 'force_release' then return nil end
    added = redis.pcall('XADD', log, 'MAXLEN', '0', '*', ...)
  end
  if type(added) == 'table' and added['err'] then
    if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
    return redis.error_reply(added['err'])
  end
  return nil
end
--- end
local t = rcall('TIME')
local sec = tonumber(t[1])
local failed = append(log, sec, retention, 'event', 'force_release', 'timestamp', iso(sec, tonumber(t[2])),
  'exchangeId', id, 'exchangeName', held[4], 'hostname', held[5], 'ip', held[6] or '', 'state', held[2],
  'fencingToken', held[1], 'instanceId', held[7] or '', 'reason', reason, 'operator', operator)
if failed then return failed end
rcall('DEL', status)
return {'RELEASED', held[1], held[2]}
end)

-- heartbeat-1.lua (allow-oom: its first write, PEXPIRE, needs no memory; see pylivermore/_library.py)
redis.register_function{function_name = 'pylivermore_v2_heartbeat', flags = {'allow-oom'}, callback = function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 1 or #ARGV ~= 2 then
  return redis.error_reply('ERR pylivermore bad-args: heartbeat takes 1 key and 2 arguments')
end
local status = KEYS[1]
local token, ttl_arg = ARGV[1], ARGV[2]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end

local id, wrong = check_keys('status')
if not id then return wrong end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
-- PEXPIRE with 0 or a negative value would delete the key: never let one through.
local ttl = int_in(ttl_arg, 10, 86400000)
if not ttl then return bad('ttl_ms must be an integer from 10 to 86400000') end
local held, answer = owned(status, id, token)
if not held then return answer end

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
local t = rcall('TIME')
local now = iso(tonumber(t[1]), tonumber(t[2]))
-- PEXPIRE first: it needs no memory, so under maxmemory/noeviction the renewal (and, being
-- no longer the first write, the HSET) still goes through instead of failing with OOM.
rcall('PEXPIRE', status, ttl)
rcall('HSET', status, 'lastHeartbeat', now)
return {'RENEWED', now}
end}

-- record_error-2.lua
redis.register_function('pylivermore_v2_record_error', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply('ERR pylivermore bad-args: record_error takes 2 keys and 3 arguments')
end
local status, log = KEYS[1], KEYS[2]
local token, seq_arg, message = ARGV[1], ARGV[2], ARGV[3]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: text (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Valid UTF-8 of lo..hi bytes with no control character (lines: tab, LF and CR are allowed).
local function text_ok(s, lo, hi, lines)
  if #s < lo or #s > hi then return false end
  if not string.find(s, '[^ -~]') then return true end -- printable ASCII, the usual case: one scan
  if string.find(s, lines and '[%z\1-\8\11\12\14-\31\127]' or '[%z\1-\31\127]') then return false end
  local i = 1
  while true do
    local j = string.find(s, '[\128-\255]', i)
    if not j then return true end
    local c, n, lo2, hi2 = string.byte(s, j), 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c >= 224 and c <= 239 then n = 2; if c == 224 then lo2 = 160 elseif c == 237 then hi2 = 159 end
    elseif c >= 240 and c <= 244 then n = 3; if c == 240 then lo2 = 144 elseif c == 244 then hi2 = 143 end
    else return false end
    for k = 1, n do
      local b = string.byte(s, j + k)
      if not b or b < (k == 1 and lo2 or 128) or b > (k == 1 and hi2 or 191) then return false end
    end
    i = j + n + 1
  end
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end
--- shared: seq (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- The record's last applied seq ('0' after a claim; absent on a record a v1 script claimed).
local function applied_seq(value)
  if not value then return 0 end
  if #value > 16 or not (value == '0' or string.find(value, '^[1-9]%d*$')) then return nil end
  return tonumber(value)
end
--- end
--- shared: retention (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) A retention_ms: 0 (no history: see append) or 86400000 (one day) to 315360000000
-- milliseconds; nil otherwise. A record's retentionMs is absent on a v1 record: the 90-day default.
local function retention_in(value)
  if value == '0' then return 0 end
  return int_in(value, 86400000, 315360000000)
end
local function record_retention(value)
  if not value then return 7776000000 end
  return retention_in(value)
end
--- end

local id, wrong = check_keys('status', 'log')
if not id then return wrong end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
local seq = int_in(seq_arg, 1, 9007199254740991)
if not seq then return bad('seq must be an integer from 1 to 9007199254740991') end
if not text_ok(message, 1, 4096, true) then
  return bad('message must be 1-4096 bytes of UTF-8 without control characters other than tab, LF and CR')
end

local held, answer = owned(status, id, token, 'connectionState', 'exchangeName', 'hostname', 'ipAddress', 'instanceId',
  'retentionMs')
if not held then return answer end
local applied, retention = applied_seq(held[4]), record_retention(held[10])
if not held[5] or not held[6] or not held[7] or not applied or not retention then
  return {'CORRUPT', 'status hash lacks a valid connectionState, identity, seq or retentionMs'}
end
if seq <= applied then return {'REPLAYED', held[4], held[5]} end

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
--- shared: append (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Append one activity-log entry, trimming entries older than retention_ms (MINID ~). It is each
-- script's first write: if the log key holds another type, XADD fails (WRONGTYPE) and nothing has been
-- written. Answers nil, or the reply to return (CORRUPT, or the server's error such as OOM).
-- A lease without history (retention_ms 0) writes no entry, except that a release (deregister,
-- force_release) adds one and trims it at once (MAXLEN 0): a waiter blocked on the log (XREAD BLOCK)
-- wakes, and the log stays empty (its last id moves on; an empty stream costs ~0.25 KB, one entry ~4.7).
local function append(log, sec, retention_ms, ...)
  local added
  if retention_ms > 0 then
    added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention_ms), '*', ...)
  else
    local event = select(2, ...)
    if event ~= 'deregister' and event ~= 'force_release' then return nil end
    added = redis.pcall('XADD', log, 'MAXLEN', '0', '*', ...)
  end
  if type(added) == 'table' and added['err'] then
    if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
    return redis.error_reply(added['err'])
  end
  return nil
end
--- end
local t = rcall('TIME')
local sec = tonumber(t[1])
local now = iso(sec, tonumber(t[2]))
local failed = append(log, sec, retention, 'event', 'error', 'timestamp', now, 'exchangeId', id,
  'exchangeName', held[6], 'hostname', held[7], 'ip', held[8] or '', 'error', message, 'state', held[5],
  'fencingToken', held[2], 'instanceId', held[9] or '', 'seq', seq_arg)
if failed then return failed end
rcall('HSET', status, 'lastError', message, 'lastErrorAt', now, 'seq', seq_arg)
return {'OK', now}
end)

-- renew_many-n.lua (allow-oom: its first write, PEXPIRE, needs no memory; see pylivermore/_library.py)
redis.register_function{function_name = 'pylivermore_v2_renew_many', flags = {'allow-oom'}, callback = function(KEYS, ARGV)
local rcall = redis.call
if #KEYS < 1 or #KEYS > 1000 or #ARGV ~= #KEYS + 1 then
  return redis.error_reply('ERR pylivermore bad-args: renew_many takes 1-1000 keys, then ttl_ms and one token per key')
end

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end

local ttl = int_in(ARGV[1], 10, 86400000)
-- PEXPIRE with 0 or a negative value would delete the key: never let one through.
if not ttl then return bad('ttl_ms must be an integer from 10 to 86400000') end

-- First pass, reads only: decide every key (a bad key or token anywhere refuses the whole call).
-- The reply is flat (word, data per key): cheaper to build and to read than n small arrays.
local replies, renew = {}, {}
local function answer(i, word, data) replies[2 * i - 1] = word; replies[2 * i] = data end
for i = 1, #KEYS do
  local id = key_id(KEYS[i], 'status')
  if not id then
    return bad('key ' .. i .. ' must be <ns>:{<id>}:status, the namespace 1-64 chars of [A-Za-z0-9._-], the id a ' ..
      'positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  if bad_token(ARGV[i + 1]) then return bad('token ' .. i .. ' must be 32-128 characters of [A-Za-z0-9_-]') end
  local held, lost = owned(KEYS[i], id, ARGV[i + 1])
  if held then renew[#renew + 1] = i else answer(i, lost[1], lost[2] or '') end
end
if #renew == 0 then return replies end

-- Second pass, the writes.
--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
local t = rcall('TIME')
local now = iso(tonumber(t[1]), tonumber(t[2]))
-- PEXPIRE first: it needs no memory, so under maxmemory/noeviction the renewals (and, the first
-- write having gone through, the HSETs) still go through instead of failing with OOM.
for j = 1, #renew do
  local i = renew[j]
  rcall('PEXPIRE', KEYS[i], ttl)
  rcall('HSET', KEYS[i], 'lastHeartbeat', now)
  answer(i, 'RENEWED', now)
end
return replies
end}

-- transition-2.lua
redis.register_function('pylivermore_v2_transition', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 2 or #ARGV ~= 4 then
  return redis.error_reply('ERR pylivermore bad-args: transition takes 2 keys and 4 arguments')
end
local status, log = KEYS[1], KEYS[2]
local token, seq_arg, to, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- The seed's lifecycle (idle -> starting -> warming -> active -> stopping -> stopped -> idle, plus the
-- abort edges); each edge is wrapped in spaces so that a plain find matches whole names only.
local DEFAULT = ' idle>starting starting>warming starting>stopping starting>idle warming>active warming>stopping warming>idle active>stopping stopping>stopped stopped>idle '

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end
--- shared: seq (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- The record's last applied seq ('0' after a claim; absent on a record a v1 script claimed).
local function applied_seq(value)
  if not value then return 0 end
  if #value > 16 or not (value == '0' or string.find(value, '^[1-9]%d*$')) then return nil end
  return tonumber(value)
end
--- end
--- shared: retention (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) A retention_ms: 0 (no history: see append) or 86400000 (one day) to 315360000000
-- milliseconds; nil otherwise. A record's retentionMs is absent on a v1 record: the 90-day default.
local function retention_in(value)
  if value == '0' then return 0 end
  return int_in(value, 86400000, 315360000000)
end
local function record_retention(value)
  if not value then return 7776000000 end
  return retention_in(value)
end
--- end

local id, wrong = check_keys('status', 'log')
if not id then return wrong end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
local seq = int_in(seq_arg, 1, 9007199254740991)
if not seq then return bad('seq must be an integer from 1 to 9007199254740991') end
if #to > 32 or not string.find(to, '^[a-z_]+$') then return bad('to must be a state name of 1-32 characters of [a-z_]') end
if expected ~= '' and (#expected > 32 or not string.find(expected, '^[a-z_]+$')) then
  return bad('expected must be "" or a state name of 1-32 characters of [a-z_]')
end

local held, answer = owned(status, id, token, 'connectionState', 'exchangeName', 'hostname', 'ipAddress', 'adminEmail',
  'instanceId', 'stateTable', 'retentionMs')
if not held then return answer end
local current, applied, retention = held[5], applied_seq(held[4]), record_retention(held[12])
if not current or not string.find(current, '^[a-z_]+$') or not held[6] or not held[7] or not applied or not retention then
  return {'CORRUPT', 'status hash lacks a valid connectionState, identity, seq or retentionMs'}
end
if seq <= applied then return {'REPLAYED', held[4], current} end
local edges = held[11] and ' ' .. held[11] .. ' ' or DEFAULT
if (expected ~= '' and current ~= expected) or not string.find(edges, ' ' .. current .. '>' .. to .. ' ', 1, true) then
  return {'BAD_TRANSITION', current}
end

--- shared: iso (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
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
--- end
--- shared: append (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Append one activity-log entry, trimming entries older than retention_ms (MINID ~). It is each
-- script's first write: if the log key holds another type, XADD fails (WRONGTYPE) and nothing has been
-- written. Answers nil, or the reply to return (CORRUPT, or the server's error such as OOM).
-- A lease without history (retention_ms 0) writes no entry, except that a release (deregister,
-- force_release) adds one and trims it at once (MAXLEN 0): a waiter blocked on the log (XREAD BLOCK)
-- wakes, and the log stays empty (its last id moves on; an empty stream costs ~0.25 KB, one entry ~4.7).
local function append(log, sec, retention_ms, ...)
  local added
  if retention_ms > 0 then
    added = redis.pcall('XADD', log, 'MINID', '~', string.format('%d', sec * 1000 - retention_ms), '*', ...)
  else
    local event = select(2, ...)
    if event ~= 'deregister' and event ~= 'force_release' then return nil end
    added = redis.pcall('XADD', log, 'MAXLEN', '0', '*', ...)
  end
  if type(added) == 'table' and added['err'] then
    if string.sub(added['err'], 1, 9) == 'WRONGTYPE' then return {'CORRUPT', 'log key is not a stream'} end
    return redis.error_reply(added['err'])
  end
  return nil
end
--- end
local t = rcall('TIME')
local sec = tonumber(t[1])
local now = iso(sec, tonumber(t[2]))
local failed = append(log, sec, retention, 'event', 'state_transition', 'timestamp', now, 'exchangeId', id,
  'exchangeName', held[6], 'hostname', held[7], 'ip', held[8] or '', 'fromState', current, 'toState', to,
  'adminEmail', held[9] or '', 'fencingToken', held[2], 'instanceId', held[10] or '', 'seq', seq_arg)
if failed then return failed end
if to == 'active' then
  rcall('HSET', status, 'connectionState', to, 'lastStateChange', now, 'seq', seq_arg, 'connectedAt', now)
else
  rcall('HSET', status, 'connectionState', to, 'lastStateChange', now, 'seq', seq_arg)
end
return {'OK', to, now}
end)

-- update-1.lua
redis.register_function('pylivermore_v2_update', function(KEYS, ARGV)
local rcall = redis.call
if #KEYS ~= 1 or #ARGV ~= 5 then
  return redis.error_reply('ERR pylivermore bad-args: update takes 1 key and 5 arguments')
end
local status = KEYS[1]
local token, seq_arg, group, first, second = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

--- shared: bad (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end
--- end
--- shared: int_in (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- A decimal integer from lo to hi (no sign, no leading zero, no exponent), or nil: Lua's tonumber
-- alone accepts ' 15', '0x10', '1e3' and 'inf'.
local function int_in(s, lo, hi)
  if #s > 16 or not (s == '0' or string.find(s, '^[1-9]%d*$')) then return nil end
  local n = tonumber(s)
  if n < lo or n > hi then return nil end
  return n
end
--- end
--- shared: token (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
local function bad_token(token)
  return #token < 32 or #token > 128 or not string.find(token, '^[%w_%-]+$')
end
--- end
--- shared: keys (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- KEYS[1] must be '<ns>:{<id>}:<first>' with a valid namespace and a canonical id (an all-digit id
-- has no leading zero), and every further key the same '<ns>:{<id>}:' with its own suffix: one hash
-- tag, one resource. Answers the id, or nil and the error to return.
local function key_id(key, suffix)
  local ns, id = string.match(key, '^(%w[%w._%-]*):{(%w[%w._%-]*)}:' .. suffix .. '$')
  if not ns or #ns > 64 or #id > 64 or string.find(id, '^0%d*$') then return nil end
  return id, ns
end
local function check_keys(...)
  local suffixes = {...}
  local id, ns = key_id(KEYS[1], suffixes[1])
  if id then
    for i = 2, #suffixes do
      if KEYS[i] ~= ns .. ':{' .. id .. '}:' .. suffixes[i] then id = nil; break end
    end
  end
  if not id then
    return nil, bad('KEYS must be ' .. table.concat(suffixes, ', ') .. ' of one resource: <ns>:{<id>}:<key>, the namespace 1-64 ' ..
      'chars of [A-Za-z0-9._-], the id a positive integer without leading zero or 1-64 chars of [A-Za-z0-9._-]')
  end
  return id
end
--- end
--- shared: text (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- Valid UTF-8 of lo..hi bytes with no control character (lines: tab, LF and CR are allowed).
local function text_ok(s, lo, hi, lines)
  if #s < lo or #s > hi then return false end
  if not string.find(s, '[^ -~]') then return true end -- printable ASCII, the usual case: one scan
  if string.find(s, lines and '[%z\1-\8\11\12\14-\31\127]' or '[%z\1-\31\127]') then return false end
  local i = 1
  while true do
    local j = string.find(s, '[\128-\255]', i)
    if not j then return true end
    local c, n, lo2, hi2 = string.byte(s, j), 0, 128, 191
    if c >= 194 and c <= 223 then n = 1
    elseif c >= 224 and c <= 239 then n = 2; if c == 224 then lo2 = 160 elseif c == 237 then hi2 = 159 end
    elseif c >= 240 and c <= 244 then n = 3; if c == 240 then lo2 = 144 elseif c == 244 then hi2 = 143 end
    else return false end
    for k = 1, n do
      local b = string.byte(s, j + k)
      if not b or b < (k == 1 and lo2 or 128) or b > (k == 1 and hi2 or 191) then return false end
    end
    i = j + n + 1
  end
end
--- end
--- shared: owner (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- (needs int_in) Read the status record and decide whether the caller owns it. Answers the fields (ownerDigest,
-- fencingToken, exchangeId, seq, then the extra ones asked for) when it does; otherwise nil and the
-- reply to return: EXPIRED (no record), TAKEN (another owner) or CORRUPT.
local function owned(status, id, token, ...)
  local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken', 'exchangeId', 'seq', ...)
  if held['err'] then return nil, {'CORRUPT', 'status key is not a hash'} end
  if not held[1] then
    if redis.call('EXISTS', status) == 1 then return nil, {'CORRUPT', 'status hash has no ownerDigest'} end
    return nil, {'EXPIRED'}
  end
  if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not int_in(held[2], 1, 9007199254740991) then
    return nil, {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
  end
  if held[3] ~= id then return nil, {'CORRUPT', 'status hash exchangeId is not the id of its key'} end
  if held[1] ~= redis.sha1hex(token) then return nil, {'TAKEN', held[2]} end
  return held
end
--- end
--- shared: seq (a copy from lua/shared/helpers.lua: edit it there, then make lua-sync)
-- The record's last applied seq ('0' after a claim; absent on a record a v1 script claimed).
local function applied_seq(value)
  if not value then return 0 end
  if #value > 16 or not (value == '0' or string.find(value, '^[1-9]%d*$')) then return nil end
  return tonumber(value)
end
--- end

local id, wrong = check_keys('status')
if not id then return wrong end
if bad_token(token) then return bad('token must be 32-128 characters of [A-Za-z0-9_-] (at least 128 random bits)') end
local seq = int_in(seq_arg, 1, 9007199254740991)
if not seq then return bad('seq must be an integer from 1 to 9007199254740991') end
local names
if group == 'symbols' then
  if not int_in(first, 0, 1000000000) or second ~= '' then
    return bad('symbols takes a symbol count from 0 to 1000000000 and an empty second value')
  end
  names = {'symbolCount'}
elseif group == 'admin' then
  if not text_ok(first, 0, 320) or not text_ok(second, 0, 256) then
    return bad('admin takes an email of at most 320 bytes and a name of at most 256, UTF-8 without control characters')
  end
  names = {'adminEmail', 'adminDisplayName'}
elseif group == 'address' then
  if #first > 45 or not string.find(first, '^[%x.:]*$') then return bad('address takes an IP address of at most 45 chars of [0-9A-Fa-f.:]') end
  if second ~= '' and not string.find(second, '^%u%u$') then return bad('address takes a country code of 2 letters A-Z or ""') end
  names = {'ipAddress', 'countryCode'}
else
  return bad('group must be "symbols", "admin" or "address"')
end

local held, answer = owned(status, id, token, 'connectionState')
if not held then return answer end
local applied = applied_seq(held[4])
if not applied or not held[5] then return {'CORRUPT', 'status hash lacks a valid seq or connectionState'} end
if seq <= applied then return {'REPLAYED', held[4], held[5]} end

if group == 'symbols' then
  rcall('HSET', status, names[1], first, 'seq', seq_arg)
  return {'OK'}
end
-- A null value is an absent field.
rcall('HSET', status, 'seq', seq_arg)
if first == '' then rcall('HDEL', status, names[1]) else rcall('HSET', status, names[1], first) end
if second == '' then rcall('HDEL', status, names[2]) else rcall('HSET', status, names[2], second) end
return {'OK'}
end)
