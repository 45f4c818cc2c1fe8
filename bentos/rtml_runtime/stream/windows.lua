-- One event into an entity's sliding windows, atomically (rtml_runtime/stream/windowstore.py):
-- the "seen" marker, the buckets, and the aggregates written to Feast's Redis hash happen
-- together or not at all, so a redelivered event is never counted twice.
--
-- KEYS[1]  the entity's seen set (sorted set: member event id, score event time)
-- KEYS[2]  the entity's Feast hash (the online store the runtime reads)
-- KEYS[3..2+G]  one bucket hash per granularity (field: bucket number, value: packed doubles
--          events, then count, sum, max of each aggregated field)
-- ARGV     event id, event time, key ttl (s), horizon (s, the longest window), Feast's `_ts`
--          field, Feast's float and int64 tag bytes, F, F values ("" when absent), G, G widths,
--          A, and per aggregation: granularity index, function, field index (0 for count),
--          window in buckets, Feast field
-- Returns  {status, latest event time}: status is ok, duplicate or late (older than the
--          horizon before the entity's latest event: in no window, so not kept).

local id = ARGV[1]
local t = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local ts_field, float_tag, int_tag = ARGV[5], ARGV[6], ARGV[7]
local F = tonumber(ARGV[8])
local i = 9
local values = {}
for j = 1, F do
  values[j] = ARGV[i] ~= '' and tonumber(ARGV[i]) or false
  i = i + 1
end
local G = tonumber(ARGV[i]); i = i + 1
local widths = {}
for g = 1, G do widths[g] = tonumber(ARGV[i]); i = i + 1 end
local A = tonumber(ARGV[i]); i = i + 1
local aggs = {}
for a = 1, A do
  aggs[a] = {tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]}
  i = i + 5
end

local STATS = 1 + 3 * F
local fmt = '<' .. string.rep('d', STATS)

local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local before = newest[2] and tonumber(newest[2]) or nil
if redis.call('ZSCORE', KEYS[1], id) then
  return {'duplicate', tostring(before)}
end
if before and t <= before - horizon then
  return {'late', tostring(before)}
end

redis.call('ZADD', KEYS[1], t, id)
for g = 1, G do
  local key = KEYS[2 + g]
  local b = string.format('%d', math.floor(t / widths[g]))
  local raw = redis.call('HGET', key, b)
  local s = {}
  if raw then
    s = {struct.unpack(fmt, raw)}
  else
    for k = 1, STATS do s[k] = 0 end
  end
  s[1] = s[1] + 1
  for j = 1, F do
    local v = values[j]
    if v then
      local base = 1 + 3 * (j - 1)
      if s[base + 1] == 0 or v > s[base + 3] then s[base + 3] = v end
      s[base + 1] = s[base + 1] + 1
      s[base + 2] = s[base + 2] + v
    end
  end
  redis.call('HSET', key, b, struct.pack(fmt, unpack(s, 1, STATS)))
  redis.call('EXPIRE', key, ttl)
end

local T = t
if before and before > T then T = before end
-- Markers of events at or before the horizon go: such an event is in no window any more, and a
-- redelivery of it is answered `late` without being counted.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', T - horizon))
redis.call('EXPIRE', KEYS[1], ttl)

-- Aggregate every window as of T, dropping buckets outside the longest one.
local acc = {}
for a = 1, A do acc[a] = {0, 0, 0, false} end -- values counted, sum, max, max set
for g = 1, G do
  local key = KEYS[2 + g]
  local w = widths[g]
  local last = math.floor(T / w)
  local oldest = last - horizon / w
  local all = redis.call('HGETALL', key)
  for k = 1, #all, 2 do
    local b = tonumber(all[k])
    if b <= oldest then
      redis.call('HDEL', key, all[k])
    else
      local s = {struct.unpack(fmt, all[k + 1])}
      for a = 1, A do
        local ag = aggs[a]
        if ag[1] == g and b > last - ag[4] and b <= last then
          local x = acc[a]
          if ag[3] == 0 then
            x[1] = x[1] + s[1]
          else
            local base = 1 + 3 * (ag[3] - 1)
            if s[base + 1] > 0 then
              x[1] = x[1] + s[base + 1]
              x[2] = x[2] + s[base + 2]
              if not x[4] or s[base + 3] > x[3] then x[3] = s[base + 3]; x[4] = true end
            end
          end
        end
      end
    end
  end
end

local function varint(n)
  local out = {}
  repeat
    local byte = n % 128
    n = math.floor(n / 128)
    if n > 0 then byte = byte + 128 end
    out[#out + 1] = string.char(byte)
  until n == 0
  return table.concat(out)
end

local hset = {}
for a = 1, A do
  local ag, x = aggs[a], acc[a]
  local blob
  if ag[2] == 'count' then
    blob = int_tag .. varint(x[1])
  else
    local v = 0
    if ag[2] == 'sum' then
      v = x[2]
    elseif ag[2] == 'avg' then
      if x[1] > 0 then v = x[2] / x[1] end
    elseif x[4] then
      v = x[3]
    end
    blob = float_tag .. struct.pack('<f', v)
  end
  hset[#hset + 1] = ag[5]
  hset[#hset + 1] = blob
end
-- Feast's row timestamp (a google.protobuf.Timestamp: field 1, seconds): the latest event time.
hset[#hset + 1] = ts_field
hset[#hset + 1] = '\8' .. varint(math.floor(T))
redis.call('HSET', KEYS[2], unpack(hset))
return {'ok', string.format('%.17g', T)}
