"""The Lua of the webhook outboxes, run by ``worker.subscriptions`` and its pump and sender.

An outbox is a subscription's copy of the events it wants, kept per conversation so events
of one conversation go out in order (the conversation's first event blocks the rest until it
is delivered or given up), while conversations go out side by side. It is built like a
sender's lane (``producer.transition_scripts``): a zset of conversations scored by when
their first event is due, and one job at a time that may claim, named by a token.

Events sit in the lists in their wire form: the stream id, the type, ``json`` or ``raw``, and
the body, one per line.
"""

from __future__ import annotations

from typing import Final

from producer import keys
from producer.transition_scripts import WAKE, WAKE_IF_WAITING_BODY

__all__ = ["CLAIM", "ENQUEUE_ONE", "FANOUT", "REMOVE", "REPLAY", "SETTLE", "WAKE_IF_WAITING"]

_COMMON_HELPERS: Final = f"""
local SUB = '{keys.subscription("%s", "")}'
local STATES = '{keys.WEBHOOK_STATES}'
local function k(sub, part) return string.format(SUB, sub) .. part end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function enqueue(sub, conversation, wire, now)
  redis.call('HINCRBY', k(sub, 'stats'), 'pending', 1)
  if redis.call('RPUSH', k(sub, 'q:' .. conversation), wire) > 1 then return false end
  redis.call('ZADD', k(sub, 'due'), 'NX', now, conversation)
  return wake(k(sub, 'job'), now)
end
local function park(sub, conversation, wire, reason, status, now)
  redis.call('RPUSH', k(sub, 'dead'), cjson.encode({{conversation = conversation, event = wire,
             reason = reason, status = status or cjson.null, at = now / 1000}}))
  redis.call('HINCRBY', k(sub, 'stats'), 'dead', 1)
end
local function state_of(sub)
  local raw = redis.call('HGET', STATES, sub)
  if not raw then return 'active' end
  return cjson.decode(raw).state
end
-- Everything a stopped subscription still holds goes to its dead letters, in order.
local function park_all(sub, reason, now)
  local parked = 0
  for _, conversation in ipairs(redis.call('ZRANGE', k(sub, 'due'), 0, -1)) do
    local q = k(sub, 'q:' .. conversation)
    for _, wire in ipairs(redis.call('LRANGE', q, 0, -1)) do
      park(sub, conversation, wire, reason, false, now)
      parked = parked + 1
    end
    redis.call('DEL', q)
  end
  redis.call('DEL', k(sub, 'due'), k(sub, 'tries'))
  redis.call('HINCRBY', k(sub, 'stats'), 'pending', -parked)
  return parked
end
"""
_COMMON: Final = WAKE + _COMMON_HELPERS  # wake first: the helpers call it

# KEYS: events stream, cursor, subscriptions. ARGV: most entries to read, stream length to
# trim to once caught up. Copies each new event into the outbox of every subscription that
# wants it (a paused one's dead letters). Returns {entries read, {sub, token, ...} jobs to
# start, {type, count, ...}}. Trims the stream only when it has read to its end, so nothing
# is trimmed before every subscription has its copy. Without subscriptions it reads nothing.
FANOUT: Final = (
    _COMMON
    + """
local cursor = redis.call('GET', KEYS[2]) or '0-0'
local count = tonumber(ARGV[1])
if redis.call('HLEN', KEYS[3]) == 0 then
  -- Nobody to copy to: move the cursor to the end without reading the events (reading is
  -- most of a pump's Redis time), and trim.
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if not last[1] or last[1][1] == cursor then return {0, {}, {}} end
  redis.call('SET', KEYS[2], last[1][1])
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[2]))
  return {0, {}, {}}
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', count)
if #entries == 0 then return {0, {}, {}} end
local subs = {}
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
  local s = cjson.decode(raw)
  local state = state_of(s.id)
  if state ~= 'disabled' then
    local types, numbers = {}, nil
    for _, t in ipairs(s.types) do types[t] = true end
    if #s.numbers > 0 then
      numbers = {}
      for _, n in ipairs(s.numbers) do numbers[n] = true end
    end
    table.insert(subs, {id = s.id, state = state, types = types, numbers = numbers,
                        since = tonumber(s.since_ms)})
  end
end
local function wants(s, kind, data)
  if not (s.types[kind] or (s.types['*'] and kind ~= 'meta.webhook')) then return false end
  if not s.numbers then return true end
  if data.phone_number_id and s.numbers[data.phone_number_id] then return true end
  for _, n in ipairs(data.phone_number_ids or {}) do
    if s.numbers[n] then return true end
  end
  return false
end
local now = now_ms()
local started, counts, seen = {}, {}, {}
for _, entry in ipairs(entries) do
  local id, f = entry[1], entry[2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  local kind = fields.type or ''
  counts[kind] = (counts[kind] or 0) + 1
  local ms = tonumber(string.match(id, '^(%d+)'))
  local data = nil
  for _, s in ipairs(subs) do
    if ms >= s.since then
      data = data or cjson.decode(fields.data or '{}')
      if wants(s, kind, data) then
        local conversation = data.conversation_id
        if kind == 'meta.webhook' then conversation = 'meta'
        elseif not conversation then conversation = 'number:' .. (data.phone_number_id or '-') end
        local form = fields.body and 'raw' or 'json'
        local wire = id .. '\\n' .. kind .. '\\n' .. form .. '\\n' .. (fields.body or fields.data)
        if s.state == 'paused' then
          park(s.id, conversation, wire, 'the subscription is paused', false, now)
        else
          local token = enqueue(s.id, conversation, wire, now)
          if token then seen[s.id] = token end
        end
      end
    end
  end
end
redis.call('SET', KEYS[2], entries[#entries][1])
if #entries < count then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[2])) end
for sub, token in pairs(seen) do
  table.insert(started, sub)
  table.insert(started, token)
end
local flat = {}
for kind, n in pairs(counts) do
  table.insert(flat, kind)
  table.insert(flat, n)
end
return {#entries, started, flat}
"""
)

# KEYS: outbox due, job, subscriptions, tries. ARGV: 1 subscription id, 2 token,
# 3 conversations to look at, 4 events per request, 5 batch window ms, 6 claim deadline ms,
# 7 '1' when the job may sleep or go idle (nothing of its own in flight).
# Returns {'stale'}, {'gone'}, {'inactive', state}, {'idle'}, {'sleep', ms}, {'wait', ms},
# or {'ok', conversation, tries, n, wire..., conversation, ...}.
CLAIM: Final = (
    _COMMON
    + """
local sub = ARGV[1]
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[2] then return {'stale'} end
redis.call('HDEL', KEYS[2], 'until')
if redis.call('HEXISTS', KEYS[3], sub) == 0 then
  redis.call('HDEL', KEYS[2], 'token')
  return {'gone'}
end
local state = state_of(sub)
if state ~= 'active' then
  redis.call('HDEL', KEYS[2], 'token')
  return {'inactive', state}
end
local may_rest = ARGV[7] == '1'
local now = now_ms()
local max_batch = tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[3]))
if #due == 0 then
  local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if not nxt[1] then
    if may_rest then
      redis.call('HDEL', KEYS[2], 'token')
      return {'idle'}
    end
    return {'wait', false}
  end
  local wait = tonumber(nxt[2]) - now
  if may_rest then
    redis.call('HSET', KEYS[2], 'until', nxt[2])
    return {'sleep', tostring(wait)}
  end
  return {'wait', tostring(wait)}
end
local window = tonumber(ARGV[5])
if max_batch > 1 and window > 0 then
  local total, oldest = 0, now
  for i = 1, #due, 2 do
    total = total + redis.call('LLEN', k(sub, 'q:' .. due[i]))
    oldest = math.min(oldest, tonumber(due[i + 1]))
  end
  local left = window - (now - oldest)
  if total < max_batch and left > 0 then return {'wait', tostring(left)} end
end
local out = {'ok'}
local taken = 0
for i = 1, #due, 2 do
  local conversation = due[i]
  local n = 1
  if max_batch > 1 then n = max_batch - taken end
  local events = redis.call('LRANGE', k(sub, 'q:' .. conversation), 0, n - 1)
  if #events == 0 then
    redis.call('ZREM', KEYS[1], conversation)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[6]), conversation)
    table.insert(out, conversation)
    table.insert(out, redis.call('HGET', KEYS[4], conversation) or '0')
    table.insert(out, tostring(#events))
    for _, wire in ipairs(events) do table.insert(out, wire) end
    taken = taken + #events
    if max_batch > 1 and taken >= max_batch then break end
  end
end
if #out == 1 then return {'wait', '0'} end
return out
"""
)

# KEYS: outbox due, tries, subscriptions. ARGV: 1 subscription id, 2 outcome (delivered,
# retry, refused, exhausted, gone), 3 retry in ms, 4 reason, 5 HTTP status or '', 6 the
# attempt's log line (JSON), 7 log lines kept, then per conversation of the request:
# conversation, events, the first event's stream id.
# An outcome applies to a conversation only while the events it names are still first in
# its list (a replay or a removal may have moved them). ``exhausted`` pauses the
# subscription and ``gone`` disables it, parking what it still holds. Returns events settled.
SETTLE: Final = (
    _COMMON
    + """
local sub, kind = ARGV[1], ARGV[2]
local now = now_ms()
local status = ARGV[5] ~= '' and tonumber(ARGV[5]) or false
local settled = 0
for i = 8, #ARGV, 3 do
  local conversation, n, first = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local q = k(sub, 'q:' .. conversation)
  local head = redis.call('LINDEX', q, 0)
  if head and string.sub(head, 1, #first + 1) == first .. '\\n' then
    if kind == 'retry' then
      redis.call('HINCRBY', KEYS[2], conversation, 1)
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), conversation)
    else
      local events = redis.call('LRANGE', q, 0, n - 1)
      redis.call('LTRIM', q, n, -1)
      redis.call('HDEL', KEYS[2], conversation)
      redis.call('HINCRBY', k(sub, 'stats'), 'pending', -#events)
      if kind == 'delivered' then
        redis.call('HINCRBY', k(sub, 'stats'), 'delivered', #events)
      else
        for _, wire in ipairs(events) do park(sub, conversation, wire, ARGV[4], status, now) end
      end
      settled = settled + #events
      if redis.call('LLEN', q) > 0 then
        redis.call('ZADD', KEYS[1], now, conversation)
      else
        redis.call('ZREM', KEYS[1], conversation)
      end
    end
  end
end
redis.call('HINCRBY', k(sub, 'stats'), 'attempts', 1)
if kind ~= 'delivered' then redis.call('HINCRBY', k(sub, 'stats'), 'failures', 1) end
redis.call('LPUSH', k(sub, 'log'), ARGV[6])
redis.call('LTRIM', k(sub, 'log'), 0, tonumber(ARGV[7]) - 1)
if (kind == 'exhausted' or kind == 'gone') and redis.call('HEXISTS', KEYS[3], sub) == 1 then
  local state = kind == 'gone' and 'disabled' or 'paused'
  redis.call('HSET', STATES, sub, cjson.encode({state = state, reason = ARGV[4], at = now / 1000}))
  park_all(sub, ARGV[4], now)
end
return settled
"""
)

# KEYS: outbox dead letters, outbox due, job. ARGV: subscription id, most to replay.
# Puts dead letters back in their conversations' lists, oldest first, behind what is there.
# Returns {replayed, token or false}.
REPLAY: Final = (
    _COMMON
    + """
local sub = ARGV[1]
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #items == 0 then return {0, false} end
local now = now_ms()
local token = false
for _, raw in ipairs(items) do
  local d = cjson.decode(raw)
  token = enqueue(sub, d.conversation, d.event, now) or token
end
redis.call('LTRIM', KEYS[1], #items, -1)
redis.call('HINCRBY', k(sub, 'stats'), 'dead', -#items)
redis.call('HINCRBY', k(sub, 'stats'), 'replayed', #items)
return {#items, token}
"""
)

# KEYS: none. ARGV: subscription id, conversation, wire. One event straight into one outbox
# (the test event). Returns a token to start, or false.
ENQUEUE_ONE: Final = (
    _COMMON
    + """
return enqueue(ARGV[1], ARGV[2], ARGV[3], now_ms())
"""
)

# KEYS: outbox due, job. ARGV: arq's job key for its tokens (no token), '1' to replace a
# job that exists. As a lane's (producer.transition_scripts.WAKE_IF_WAITING_BODY).
WAKE_IF_WAITING: Final = _COMMON + WAKE_IF_WAITING_BODY

# KEYS: subscriptions. ARGV: subscription id. Drops a subscription and everything it holds.
REMOVE: Final = (
    _COMMON
    + """
local sub = ARGV[1]
if redis.call('HDEL', KEYS[1], sub) == 0 then return 0 end
redis.call('HDEL', STATES, sub)
for _, conversation in ipairs(redis.call('ZRANGE', k(sub, 'due'), 0, -1)) do
  redis.call('DEL', k(sub, 'q:' .. conversation))
end
for _, part in ipairs({'due', 'job', 'tries', 'dead', 'log', 'stats'}) do
  redis.call('DEL', k(sub, part))
end
return 1
"""
)
