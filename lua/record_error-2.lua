--[[
  record_error-2.lua · pylivermore script contract v2
  Record an error on the caller's record (lastError, lastErrorAt) and log it,
  only if the caller owns the record. Never creates a record (no ghost keys).

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status
  KEYS[2]  log      stream, the activity log         <ns>:{<id>}:log

  ARGV[1]  token     owner secret given to claim, 32-128 chars of [A-Za-z0-9_-]
  ARGV[2]  seq       the lease's sequence number, integer 1..9007199254740991, higher than its previous call's
  ARGV[3]  message   error text, 1-4096 bytes of UTF-8 without control characters other than tab, LF, CR

  Reply    {"OK", last_error_at_iso}   recorded now
           {"REPLAYED", applied_seq, state}   seq is not higher than the last applied one: never re-applied; nothing written
           {"EXPIRED"}   no record: the lease ran out or was removed; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   a key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   log (XADD MINID ~ with the record's retentionMs), status (HSET lastError, lastErrorAt, seq)
  Time     server TIME (lastErrorAt, log trimming)
  Requires Redis >= 6.2
]]
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
