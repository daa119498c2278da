--[[
  renew_many-n.lua · pylivermore script contract v2
  Renew many leases in one call, for a process that holds many: each record is renewed
  exactly as heartbeat-1.lua renews one (only if it exists and its owner digest is
  sha1hex(its token); never re-created). Every key is read and every argument checked
  before the first write; the server time is read once for all.

  KEYS[1]  status   hash, a live record <ns>:{<id>}:status; then KEYS[2..n] likewise (any resources), 1-1000 keys

  ARGV[1]  ttl_ms   integer milliseconds, 10..86400000, for every key
  ARGV[2]  token    owner secret of KEYS[1]; ARGV[i + 1] is the token of KEYS[i]; 32-128 chars of [A-Za-z0-9_-]

  Reply    a flat array of 2n strings: for KEYS[i], its word at 2i-1 and its data at 2i, as
           {"RENEWED", last_heartbeat_iso}   TTL reset to ttl_ms
           {"EXPIRED", ""}   no record: the lease ran out or was removed; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   the key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug (a bad key or token anywhere); nothing written, for any key
  Writes   each renewed status (PEXPIRE, then HSET lastHeartbeat)
  Time     server TIME, once (lastHeartbeat)
  Requires Redis >= 6.2
]]
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
