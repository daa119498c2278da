--[[
  claim-3.lua · pylivermore script contract v2
  Claim one resource for one owner, atomically: create the status record with a
  TTL (the lease), issue a new fencing token, and log the claim. On conflict,
  answer with the holder's public fields and remaining TTL in the same reply.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status
  KEYS[2]  log      stream, the activity log         <ns>:{<id>}:log
  KEYS[3]  fence    string, last fencing token       <ns>:{<id>}:fence (never expires)

  ARGV[1]  token          owner secret, 32-128 chars of [A-Za-z0-9_-], >= 128 random bits; only sha1hex(token) is stored
  ARGV[2]  ttl_ms         integer milliseconds, 10..86400000
  ARGV[3]  exchange_id    the <id> of the keys: a positive integer without leading zero, or 1-64 chars of [A-Za-z0-9._-]
  ARGV[4]  exchange_name  UTF-8 text, 1..128 bytes, no control characters
  ARGV[5]  hostname       UTF-8 text, 1..255 bytes, no control characters
  ARGV[6]  instance_id    UTF-8 text, 1..255 bytes, no control characters; identity of the claiming process
  ARGV[7]  reclaim        "1": take over a record held by the same instance_id; "0": never
  ARGV[8]  retention_ms   integer milliseconds 86400000..315360000000, stored in the record; the lease's log writes trim older entries;
                          or 0: no history (the lease writes no log entry; its release wakes waiters and leaves the log empty)
  ARGV[9]  table          "" for the default state table, or edges "from>to" separated by single spaces (at most 2048 bytes, one leaving idle)

  Reply    {"CLAIMED", fencing_token, how}   how = "new" | "reclaim" | "retry" (same token and arguments again: nothing written)
           {"CONFLICT", pttl_ms, field, value, ...}   held by someone else: its public fields (lua/README.md); nothing written
           {"CORRUPT", reason}   a key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug (also: the same token with other arguments); nothing written
  Writes   log (XADD MINID ~, the first write; none without history), status (DEL on reclaim, HSET, PEXPIRE), fence (SET)
  Time     server TIME (timestamps, fencing token floor, log trimming)
  Requires Redis >= 6.2
]]
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
