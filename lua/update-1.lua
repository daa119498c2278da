--[[
  update-1.lua · pylivermore script contract v2
  Set owner-maintained fields of the caller's record: the symbol count, the
  admin identity, or the public address. Only the owner may; never creates a
  record. A replay (a seq not higher than the last applied one) is never re-applied.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status

  ARGV[1]  token    owner secret given to claim, 32-128 chars of [A-Za-z0-9_-]
  ARGV[2]  seq      the lease's sequence number, integer 1..9007199254740991, higher than its previous call's
  ARGV[3]  group    "symbols" | "admin" | "address": which fields ARGV[4] and ARGV[5] set
  ARGV[4]  first    symbols: symbolCount, integer 0..1000000000
                    admin: adminEmail, 0-320 bytes of UTF-8 without control characters ("" = null)
                    address: ipAddress, 0-45 chars of [0-9A-Fa-f.:] ("" = null)
  ARGV[5]  second   symbols: must be ""
                    admin: adminDisplayName, 0-256 bytes of UTF-8 without control characters ("" = null)
                    address: countryCode, "" (null) or 2 letters A-Z

  Reply    {"OK"}   fields set
           {"REPLAYED", applied_seq, state}   seq is not higher than the last applied one: never re-applied; nothing written
           {"EXPIRED"}   no record: the lease ran out or was removed; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   the key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   status (HSET / HDEL of the group's two fields, HSET seq)
  Time     none
  Requires Redis >= 6.2
]]
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
