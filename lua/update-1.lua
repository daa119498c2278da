--[[
  update-1.lua · pylivermore script contract v1
  Set owner-maintained fields of the caller's record: the symbol count, the
  admin identity, or the public address. Only the owner may; never creates a
  record. Applying the same call twice leaves the same record as once.

  KEYS[1]  status   hash, the live record            <ns>:{<id>}:status

  ARGV[1]  token    owner secret given to claim, 16-128 chars of [A-Za-z0-9_-]
  ARGV[2]  group    "symbols" | "admin" | "address": which fields ARGV[3] and ARGV[4] set
  ARGV[3]  first    symbols: symbolCount, integer 0..1000000000
                    admin: adminEmail, 0-320 bytes ("" = null)
                    address: ipAddress, 0-45 chars of [0-9A-Fa-f.:] ("" = null)
  ARGV[4]  second   symbols: must be ""
                    admin: adminDisplayName, 0-256 bytes ("" = null)
                    address: countryCode, "" (null) or 2 letters A-Z

  Reply    {"OK"}   fields set
           {"EXPIRED"}   no record: the lease ran out or was released; nothing written
           {"TAKEN", fencing_token}   another owner holds the record; nothing written
           {"CORRUPT", reason}   the key holds something this contract never writes; nothing written
  Errors   "ERR pylivermore bad-args: <what>"   a caller bug; nothing written
  Writes   status (HSET / HDEL of the group's two fields)
  Time     none
  Requires Redis >= 6.2
]]
local rcall = redis.call
if #KEYS ~= 1 or #ARGV ~= 4 then
  return redis.error_reply('ERR pylivermore bad-args: update takes 1 key and 4 arguments')
end
local status = KEYS[1]
local token, group, first, second = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function bad(what) return redis.error_reply('ERR pylivermore bad-args: ' .. what) end

if #token < 16 or #token > 128 or not string.find(token, '^[%w_%-]+$') then
  return bad('token must be 16-128 characters of [A-Za-z0-9_-]')
end
local names
if group == 'symbols' then
  if #first > 10 or not (first == '0' or string.find(first, '^[1-9]%d*$')) or tonumber(first) > 1000000000 or second ~= '' then
    return bad('symbols takes a symbol count from 0 to 1000000000 and an empty second value')
  end
  names = {'symbolCount'}
elseif group == 'admin' then
  if #first > 320 or #second > 256 then return bad('admin takes an email of at most 320 bytes and a name of at most 256') end
  names = {'adminEmail', 'adminDisplayName'}
elseif group == 'address' then
  if #first > 45 or not string.find(first, '^[%x.:]*$') then return bad('address takes an IP address of at most 45 chars of [0-9A-Fa-f.:]') end
  if second ~= '' and not string.find(second, '^%u%u$') then return bad('address takes a country code of 2 letters A-Z or ""') end
  names = {'ipAddress', 'countryCode'}
else
  return bad('group must be "symbols", "admin" or "address"')
end

local held = redis.pcall('HMGET', status, 'ownerDigest', 'fencingToken')
if held['err'] then return {'CORRUPT', 'status key is not a hash'} end
if not held[1] then
  if rcall('EXISTS', status) == 1 then return {'CORRUPT', 'status hash has no ownerDigest'} end
  return {'EXPIRED'}
end
if #held[1] ~= 40 or not string.find(held[1], '^%x+$') or not held[2] or not string.find(held[2], '^[1-9]%d*$') then
  return {'CORRUPT', 'status hash lacks a valid ownerDigest or fencingToken'}
end
if held[1] ~= redis.sha1hex(token) then return {'TAKEN', held[2]} end

if group == 'symbols' then
  rcall('HSET', status, names[1], first)
  return {'OK'}
end
-- A null value is an absent field.
if first == '' then rcall('HDEL', status, names[1]) else rcall('HSET', status, names[1], first) end
if second == '' then rcall('HDEL', status, names[2]) else rcall('HSET', status, names[2], second) end
return {'OK'}
