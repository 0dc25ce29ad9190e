"""The Lua of every message transition; ``producer.transitions`` is the only module that runs it.

Each script is one atomic step over a message's record, its history, its conversation's order
list and its sender's lane, and it emits the step's event (``producer.events``) to the events
stream in that same step: an event exists exactly when its transition happened, and the
stream's order is the order of the transitions. They share these helpers:
``finish`` (a message is final: out of its lane and order list, the conversation's next
message becomes due), ``wake`` (a lane with no job, or a job asleep past a message now due,
gets a new job token), ``count`` (the dead-letter counts, kept from the entry's own JSON) and
``emit`` (an event).

Key names built inside a script come from ``producer.keys`` (``_FORMATS``), so the two never
disagree. On one Redis that is all a script needs; see docs/performance.md for the keys a
Redis Cluster deployment has to move into the sender's slot first.
"""

from __future__ import annotations

from typing import Final

from producer import keys
from producer.status import FINAL_STATES, STATE_RANK

__all__ = [
    "CANCEL",
    "CLAIM",
    "DEAD_LETTER",
    "EMIT",
    "ENQUEUE_MANY",
    "EXPIRE_DEAD_LETTERS",
    "INBOUND",
    "OPEN_WINDOW",
    "OPT_OUT",
    "PURGE",
    "RECORD",
    "RECORD_WINDOW",
    "REQUEUE",
    "SETTLE",
    "SLOWDOWN_FACTOR",
    "WAKE",
    "WAKE_IF_WAITING",
    "WAKE_IF_WAITING_BODY",
    "WINDOW_CLOSING",
]

_RANKS = "{" + ", ".join(f"{state.value}={rank}" for state, rank in STATE_RANK.items()) + "}"
_FINAL = "{" + ", ".join(f"{state.value}=true" for state in FINAL_STATES) + "}"

_FORMATS: Final = f"""
local RANK = {_RANKS}
local FINAL = {_FINAL}
local LANE, JOB = '{keys.lane("%s")}', '{keys.lane_job("%s")}'
local ORDER, WINDOW = '{keys.order("%s", "%s")}', '{keys.window("%s", "%s")}'
local PAIR, MSG = '{keys.pair_rate("%s", "%s")}', '{keys.message("")}'
local HISTORY = '{keys.message_history("%s")}'
local WAMID, LETTER = '{keys.wamid("")}', '{keys.dead_letter("")}'
local LETTERS, LETTER_COUNTS = '{keys.DEAD_LETTERS}', '{keys.DEAD_LETTER_COUNTS}'
local RECIPIENT, RECIPIENT_KEEP = '{keys.recipient_messages("")}', {keys.RECIPIENT_RECENT}
local RECENT, RECENT_KEEP = '{keys.recent_customers("%s")}', {keys.RECENT_CUSTOMERS_KEPT}
-- A customer wrote to a sender: the sender's newest writers (keys.recent_customers).
local function note_recent(pnid, wa, at, window_s)
  local recent = string.format(RECENT, pnid)
  redis.call('ZADD', recent, at, wa)
  redis.call('ZREMRANGEBYRANK', recent, 0, -RECENT_KEEP - 1)
  redis.call('EXPIRE', recent, window_s)
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function wa_of(to) return (string.gsub(to or '', '^%+', '')) end
-- A message's lane: the bulk lane (keys.bulk_lane) for priority bulk, else the lane.
local function lane_of(lane, id)
  if redis.call('HGET', MSG .. id, 'priority') == 'bulk' then return lane .. ':bulk' end
  return lane
end
-- A time as text to the microsecond: Lua's tostring keeps 14 digits, a tenth of a
-- millisecond for a unix time, and a limiter's next slot rounded down by up to that on every
-- claim ran 3% fast (992/s against 970/s booked).
local function t6(x) return string.format('%.6f', x) end
-- The pipeline's counters for the console's charts (keys.stats): a step adds up its batch in
-- a table, then one HINCRBY a field.
local STATS = '{keys.stats(0)[:-1]}'
local LAT_EDGES = {{{", ".join(repr(e) for e in keys.LATENCY_EDGES_S)}}}
local function add_stat(tally, field, n) tally[field] = (tally[field] or 0) + n end
local function latency_field(seconds)
  for i, edge in ipairs(LAT_EDGES) do if seconds <= edge then return 'lat:' .. (i - 1) end end
  return 'lat:' .. #LAT_EDGES
end
local function flush_stats(tally, now)
  local key = STATS .. math.floor(now / {keys.STATS_BUCKET_S})
  local any = false
  for field, n in pairs(tally) do
    redis.call('HINCRBY', key, field, n)
    any = true
  end
  if any then redis.call('EXPIRE', key, {keys.STATS_KEEP_S}) end
end
"""

# ``emit`` appends one event; ``emit_message`` a message's, with the fields every message
# event carries, from its record; ``dead_lettered`` a dead letter's, from its entry's JSON.
# Events carry what a service needs to act without a second read (ids, the caller's metadata
# and callback data, the error). A message event is built as text, not through cjson: it is
# on the hot path (two per message), its ids and numbers were validated on the way in, the
# metadata is stored as JSON already, and only free text (callback data, wamid, errors) is
# encoded.
EMIT: Final = f"""
local EVENTS = '{keys.EVENTS}'
local BROADCAST = '{keys.broadcast("")}'
local OPTOUTS = '{keys.opt_outs("%s")}'
local function emit(kind, data)
  redis.call('XADD', EVENTS, '*', 'type', kind, 'data', cjson.encode(data))
end
-- A broadcast's funnel, counted where its messages' transitions happen.
local STEP = {{['message.queued'] = 'queued', ['message.sent'] = 'sent',
  ['message.delivered'] = 'delivered', ['message.read'] = 'read', ['message.failed'] = 'failed',
  ['message.dead_lettered'] = 'dead', ['message.cancelled'] = 'cancelled'}}
local function count_step(broadcast, kind, late_failure)
  local bc = BROADCAST .. broadcast
  if redis.call('EXISTS', bc) == 0 then return end  -- a caller's own broadcast_id tag
  if STEP[kind] then redis.call('HINCRBY', bc, STEP[kind], 1) end
  local done = 0
  if kind == 'message.requeued' then redis.call('HINCRBY', bc, 'done', -1) end
  if kind == 'message.sent' or kind == 'message.cancelled'
      or (kind == 'message.dead_lettered' and not late_failure) then
    done = redis.call('HINCRBY', bc, 'done', 1)
  end
  local total = tonumber(redis.call('HGET', bc, 'total') or '-1')
  if done > 0 and done == total then
    local f = redis.call('HMGET', bc, 'sent', 'dead', 'cancelled')
    emit('broadcast.finished', {{broadcast_id = broadcast, total = total,
         sent = tonumber(f[1] or '0'), dead = tonumber(f[2] or '0'),
         cancelled = tonumber(f[3] or '0')}})
  end
end
local function emit_message(kind, id, key, extra)
  local m = redis.call('HMGET', key, 'phone_number_id', 'to', 'conversation_id', 'metadata',
                       'callback', 'wamid', 'broadcast', 'created_at')
  local parts = {{'{{"message_id":"', id, '"'}}
  if m[1] then table.insert(parts, ',"phone_number_id":"' .. m[1] .. '"') end
  if m[2] then table.insert(parts, ',"to":"' .. m[2] .. '"') end
  if m[3] then table.insert(parts, ',"conversation_id":"' .. m[3] .. '"') end
  table.insert(parts, ',"metadata":' .. (m[4] or '{{}}'))
  if m[5] then table.insert(parts, ',"biz_opaque_callback_data":' .. cjson.encode(m[5])) end
  if m[6] and not (extra and extra.wamid) then
    table.insert(parts, ',"wamid":' .. cjson.encode(m[6]))
  end
  for name, value in pairs(extra or {{}}) do
    table.insert(parts, ',"' .. name .. '":' .. cjson.encode(value))
  end
  table.insert(parts, '}}')
  redis.call('XADD', EVENTS, '*', 'type', kind, 'data', table.concat(parts))
  if m[7] then
    local late = extra and type(extra.error) == 'table' and extra.error.source == 'status webhook'
    count_step(m[7], kind, late)
  end
  return m  -- the record's fields it read (m[8]: created_at), for a caller's own use
end
-- A customer joins or leaves a sender's opt-out list; an event only when the list changed.
local function opt_out(pnid, wa, add, data)
  local changed
  if add then
    changed = redis.call('SADD', string.format(OPTOUTS, pnid), wa)
  else
    changed = redis.call('SREM', string.format(OPTOUTS, pnid), wa)
  end
  if changed == 1 then
    data.phone_number_id, data.wa_id, data.customer = pnid, wa, '+' .. wa
    emit(add and 'optout.added' or 'optout.removed', data)
  end
  return changed
end
local function dead_lettered(id, key, raw)
  local e = cjson.decode(raw)
  local code = type(e.error) == 'table' and e.error.code or nil
  if code == nil or code == cjson.null then code = '' end
  flush_stats({{['dead:' .. tostring(code)] = 1}}, clock())
  if type(e.error) == 'table' and tonumber(e.error.code) == 131050 then
    -- Meta: the user stopped marketing messages from this number.
    local who = redis.call('HMGET', key, 'phone_number_id', 'to')
    local pnid, to = who[1] or e.phone_number_id, who[2] or e.to
    if pnid and to then
      opt_out(pnid, (string.gsub(to, '^%+', '')), true, {{reason = 'meta_131050'}})
    end
  end
  local function extra(fields)
    if redis.call('HEXISTS', key, 'phone_number_id') == 0 then  -- the record expired
      fields.phone_number_id, fields.to = e.phone_number_id, e.to
    end
    return fields
  end
  if type(e.error) == 'table' and e.error.source == 'status webhook' then
    emit_message('message.failed', id, key, extra({{error = e.error}}))
  end
  emit_message('message.dead_lettered', id, key,
               extra({{error = e.error, hint = e.hint, suggestion = e.suggestion}}))
end
"""

# A lane (or a webhook outbox: worker.outbox_scripts) with no job (no token), or whose job
# sleeps past ``due_ms``, gets a new token: the caller starts the job it names. A job that
# finds its token replaced exits.
WAKE: Final = """
local function wake(job, due_ms)
  local j = redis.call('HMGET', job, 'token', 'until')
  if j[1] and (not j[2] or tonumber(j[2]) <= due_ms) then return false end
  local n = redis.call('HINCRBY', job, 'n', 1)
  redis.call('HSET', job, 'token', n)
  redis.call('HDEL', job, 'until')
  return tostring(n)
end
"""

# The message left its conversation (final, or gone): out of the lane and the order list; the
# next message of the conversation is due now. Returns a token when a job must be started.
_FINISH: Final = """
local function finish(pnid, wa, id, now)
  local lane, job = string.format(LANE, pnid), string.format(JOB, pnid)
  redis.call('ZREM', lane, id)
  redis.call('ZREM', lane .. ':bulk', id)
  local order = string.format(ORDER, pnid, wa)
  if redis.call('LREM', order, 1, id) == 1 then redis.call('HINCRBY', job, 'pending', -1) end
  local head = redis.call('LINDEX', order, 0)
  if not head then return false end
  local now_ms = math.floor((now or clock()) * 1000)
  redis.call('ZADD', lane_of(lane, head), 'NX', now_ms, head)
  return wake(job, now_ms)
end
"""

# The message joins its conversation (order list, history, the sender's pending count); the
# conversation's head is due in the lane now. Returns a token when a job must be started.
_JOIN: Final = """
local function join(order, lane, job, history, id, event, retention)
  redis.call('RPUSH', history, event)
  redis.call('EXPIRE', history, retention)
  redis.call('HINCRBY', job, 'pending', 1)
  local token = false
  if redis.call('RPUSH', order, id) == 1 then
    local now_ms = math.floor(clock() * 1000)
    redis.call('ZADD', lane_of(lane, id), now_ms, id)
    token = wake(job, now_ms)
  end
  redis.call('EXPIRE', order, retention)
  return token
end
"""

# Dead-letter counts by code, suggestion and sender, and each label's index (the entries by
# when they died, for filtered pages), from the entry's own JSON.
_COUNT: Final = f"""
local LETTERS_BY = '{keys.dead_letter_index("")}'
local function count(hash, raw, by)
  local e = cjson.decode(raw)
  local code = e.error and e.error.code
  if code == nil or code == cjson.null then code = '' end
  for _, label in ipairs({{'code:' .. tostring(code), 'suggestion:' .. tostring(e.suggestion),
                          'number:' .. tostring(e.phone_number_id)}}) do
    if redis.call('HINCRBY', hash, label, by) <= 0 then redis.call('HDEL', hash, label) end
    if by > 0 then
      redis.call('ZADD', LETTERS_BY .. label, t6(tonumber(e.dead_at) or 0), e.id)
    else
      redis.call('ZREM', LETTERS_BY .. label, e.id)
    end
  end
end
"""

_PRELUDE: Final = _FORMATS + EMIT + WAKE + _FINISH + _JOIN + _COUNT

# One message's enqueue, for ENQUEUE_MANY: the record, history, order list, lane
# and lane job's keys; the id, request fingerprint, retention s, first history event, and
# the record's fields (a flat list of pairs). Returns {'', token or false} created, or {state}
# when the id has a record (an idempotent repeat; '!state' when the record was made by a
# different request under the same key).
_ENQUEUE_ONE: Final = """
local function enqueue_one(record, history, order, lane, job, id, fingerprint, retention,
                           event, fields)
  local state = redis.call('HGET', record, 'state')
  if state then
    local first = redis.call('HGET', record, 'request_hash')
    if first and first ~= fingerprint then return {'!' .. state} end
    return {state}
  end
  redis.call('HSET', record, 'request_hash', fingerprint, unpack(fields))
  local send_at = tonumber(redis.call('HGET', record, 'send_at') or '0')
  local now = clock()
  if send_at > now then
    -- Scheduled: the lane is its timer (scored at send_at); it joins its conversation when
    -- the time comes (CLAIM), so it holds up nobody before then. Kept for the wait plus
    -- the retention.
    local ttl = math.floor(tonumber(retention) + send_at - now)
    redis.call('EXPIRE', record, ttl)
    redis.call('RPUSH', history, event)
    redis.call('EXPIRE', history, ttl)
    redis.call('HINCRBY', job, 'pending', 1)
    local due = math.floor(send_at * 1000)
    redis.call('ZADD', lane_of(lane, id), due, id)
    emit_message('message.queued', id, record, {send_at = send_at})
    return {'', wake(job, due)}
  end
  if send_at > 0 then redis.call('HSET', record, 'state', 'queued') end  -- its time just came
  redis.call('EXPIRE', record, retention)
  emit_message('message.queued', id, record)
  return {'', join(order, lane, job, history, id, event, retention)}
end
"""

# KEYS: the senders set. ARGV: retention s, then the batch as one JSON array with an array per
# message: id, phone_number_id, wa_id, request fingerprint, first history event (its JSON
# text), record fields (an object). A batch's enqueue in one command: redis-py packs every
# argument in Python (~1 µs each, 44 % of a batch's CPU in a profile); one message's keys and
# pairs were 26 arguments, then 6, and now the batch is 2. Each message's fields were
# decoded with cjson already, so decoding the batch at once cost Redis nothing measurable
# (19.2-19.9 µs a message before, 18.9-20.6 after), and the gateway 4 µs a message less
# (29.8-31.2 -> 25.2-27.7, interleaved runs). The keys are built here from the ids
# (producer.keys' formats), as other scripts do. Returns one answer per message
# (``enqueue_one``'s), in order.
ENQUEUE_MANY: Final = (
    _PRELUDE
    + _ENQUEUE_ONE
    + """
local retention = ARGV[1]
local out, senders = {}, {}
for _, item in ipairs(cjson.decode(ARGV[2])) do
  local id, pnid, wa = item[1], item[2], item[3]
  local fields = {}
  for name, value in pairs(item[6]) do
    table.insert(fields, name)
    table.insert(fields, value)
  end
  local answer = enqueue_one(MSG .. id, string.format(HISTORY, id),
                             string.format(ORDER, pnid, wa), string.format(LANE, pnid),
                             string.format(JOB, pnid), id, item[4], retention,
                             item[5], fields)
  table.insert(out, answer)
  if answer[1] == '' then  -- the recipient's newest messages, for the console's search
    local recent = RECIPIENT .. wa
    if redis.call('LPUSH', recent, id) > RECIPIENT_KEEP then  -- trimmed only once it is full
      redis.call('LTRIM', recent, 0, RECIPIENT_KEEP - 1)
    end
    redis.call('EXPIRE', recent, retention)
  end
  senders[pnid] = true
end
for pnid in pairs(senders) do redis.call('SADD', KEYS[1], pnid) end
local created = 0
for _, answer in ipairs(out) do if answer[1] == '' then created = created + 1 end end
flush_stats({queued = created}, clock())
return out
"""
)

# A rate divisor after Meta throttled (``worker.limits`` doubles it), decaying back to 1 over
# ``recover`` seconds; the claim divides the number's rate by it. One definition for both.
SLOWDOWN_FACTOR: Final = """
local function factor(key, recover, now)
  local f = tonumber(redis.call('HGET', key, 'factor') or '1')
  local at = tonumber(redis.call('HGET', key, 'at') or '0')
  local left = 1 - (now - at) / recover
  if left <= 0 then return 1 end
  return 1 + (f - 1) * left
end
"""

# KEYS: lane, lane job, number TAT, number slowdown, paused numbers, configured rates, bulk lane.
# ARGV: 1 token, 2 phone_number_id, 3 max batch, 4 horizon s, 5 default mps, 6 safety,
# 7 pair interval s, 8 pair burst, 9 recover s, 10 app slowdown factor, 11 reconcile wait s,
# 12 reconcile check s, 13 claim deadline s, 14 ambiguous policy, 15 window s (minus margin),
# 16 sleep threshold ms, 17 may go idle (1/0), 18 now (unix s) for the record, 19 bulk share.
# The history gets its `sending` event when the batch settles, at the time the request really left.
# Returns {'stale'} (another job owns the lane), {'paused'}, {'idle'} (lane
# empty, token given up), {'sleep', ms} (token marked asleep until the next due message),
# {'wait', ms or nil} (look again in ms; nil: when a batch in flight settles), or
# {'ok', booked s, Redis's now, slot spacing s, kind, id, attempt, slot s, request, ...}
# with kind send, closed or ambiguous.
CLAIM: Final = (
    _PRELUDE
    + SLOWDOWN_FACTOR
    + """
if redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] then return {'stale'} end
redis.call('HDEL', KEYS[2], 'until')
local pnid = ARGV[2]
if redis.call('HEXISTS', KEYS[5], pnid) == 1 then return {'paused'} end
local now = clock()
local now_ms = math.floor(now * 1000)
local recover = tonumber(ARGV[9])
local mps = tonumber(redis.call('HGET', KEYS[6], pnid) or ARGV[5])
local rate = mps * (1 - tonumber(ARGV[6])) / (factor(KEYS[4], recover, now) * tonumber(ARGV[10]))
local interval = 1 / rate
local pair_interval = tonumber(ARGV[7])
local pair_tolerance = (tonumber(ARGV[8]) - 1) * pair_interval
local tat = math.max(now, tonumber(redis.call('GET', KEYS[3]) or '0'))
local horizon = now + tonumber(ARGV[4])
local PAIR_WAIT = 'waiting for the rate limit of this customer (Meta: 1 per 6 s, bursts of 45)'
local deadline = tonumber(ARGV[13])
local window = tonumber(ARGV[15])
local out = {'ok', false, false, t6(interval)}
local blocked = false
-- Interactive heads first. While both wait, bulk keeps its share (ARGV[19]) of the slots
-- booked, by a credit kept with the lane's job across claims (a claim in a steady backlog
-- books one slot, so a share within one claim would give bulk every slot): each interactive
-- slot adds share / (1 - share), a bulk one takes 1, and bulk goes when the credit is >= 1.
-- Alone, either kind takes every slot.
local batch = tonumber(ARGV[3])
local fast = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, batch)
local slow = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now_ms, 'LIMIT', 0, batch)
local share = tonumber(ARGV[19])
local gain = share < 1 and share / (1 - share) or 1e9
local credit = tonumber(redis.call('HGET', KEYS[2], 'bulk_credit') or '0')
local credit_was = credit
local fi, si, taken = 1, 1, 0
local function pick()  -- at most a batch of them, as before: the caller has that many calls free
  if taken >= batch then return nil end
  taken = taken + 1
  local both = fi <= #fast and si <= #slow
  if si <= #slow and (fi > #fast or credit >= 1) then
    si = si + 1
    return slow[si - 1], KEYS[7], both
  end
  if fi > #fast then return nil end
  fi = fi + 1
  return fast[fi - 1], KEYS[1], both
end
while true do
  local id, lane, both = pick()
  if not id then break end
  local key = MSG .. id
  local m = redis.call('HMGET', key, 'state', 'attempts', 'to', 'type', 'sending_at', 'request',
                       'detail', 'next_attempt_at', 'error', 'broadcast')
  local state, wa = m[1], wa_of(m[3])
  local later = math.floor((now + deadline) * 1000)
  local bc = m[10] and redis.call('HMGET', BROADCAST .. m[10], 'state', 'share', 'tat')
  local bc_tat = bc and bc[2] and tonumber(bc[3] or '0') or 0
  if bc and bc[1] == 'paused' and (state == 'queued' or state == 'retrying') then
    redis.call('ZADD', lane, now_ms + 1000, id)  -- its broadcast is paused: look again in 1 s
  elseif not state or FINAL[state] then
    redis.call('ZREM', lane, id)  -- a leftover: its record expired, or it is final
    if state then finish(pnid, wa, id, now) end
  elseif state == 'scheduled' then
    -- Its send_at came: it joins its conversation now, as if enqueued now; as the head it is
    -- claimed by the next claim, behind others it waits its turn.
    local order = string.format(ORDER, pnid, wa)
    local place = redis.call('RPUSH', order, id)
    redis.call('EXPIRE', order, math.max(redis.call('TTL', key), 60))
    redis.call('HSET', key, 'state', 'queued', 'updated_at', ARGV[18])
    redis.call('RPUSH', string.format(HISTORY, id),
               '{"at":' .. ARGV[18] .. ',"state":"queued","detail":"its send_at came"}')
    if place == 1 then
      redis.call('ZADD', lane, now_ms, id)
    else
      redis.call('ZREM', lane, id)
    end
  elseif state == 'sending' and now - (tonumber(m[5] or '0') or 0) < tonumber(ARGV[11]) then
    redis.call('ZADD', lane, math.floor((now + tonumber(ARGV[12])) * 1000), id)
  elseif state == 'sending' and ARGV[14] == 'dead_letter' then
    redis.call('ZADD', lane, later, id)
    for _, v in ipairs({'ambiguous', id, m[2] or '0', '0', m[6]}) do table.insert(out, v) end
  elseif m[4] ~= 'template' and now - (tonumber(
      redis.call('GET', string.format(WINDOW, pnid, wa)) or '0') or 0) >= window then
    redis.call('ZADD', lane, later, id)
    for _, v in ipairs({'closed', id, m[2] or '0', '0', m[6]}) do table.insert(out, v) end
  else
    local pair = string.format(PAIR, pnid, wa)
    local pair_tat = math.max(tonumber(redis.call('GET', pair) or '0'), now)
    if pair_tat - pair_tolerance > now then
      redis.call('ZADD', lane, math.ceil((pair_tat - pair_tolerance) * 1000), id)
      if m[7] ~= PAIR_WAIT then  -- said once per wait, in the record and its history
        redis.call('HSET', key, 'detail', PAIR_WAIT)
        redis.call('RPUSH', string.format(HISTORY, id),
                   '{"at":' .. ARGV[18] .. ',"state":"queued","detail":"' .. PAIR_WAIT .. '"}')
      end
    elseif bc_tat > tat then
      -- Its broadcast has a share of the number (``share``) and used it: its turn comes at
      -- the broadcast's own next slot. Other messages take this slot.
      redis.call('ZADD', lane, math.ceil(bc_tat * 1000), id)
    elseif tat > horizon then
      blocked = true
      break
    else
      local slot = tat
      tat = slot + interval
      if bc and bc[2] then
        redis.call('HSET', BROADCAST .. m[10], 'tat',
                   t6(math.max(bc_tat, slot) + interval / tonumber(bc[2])))
      end
      local pair_next = math.max(pair_tat, slot) + pair_interval
      redis.call('SET', pair, t6(pair_next), 'PX',
                 math.ceil((pair_next - now) * 1000) + 1000)
      local attempt = (tonumber(m[2] or '0') or 0) + 1
      redis.call('HSET', key, 'state', 'sending', 'attempts', attempt, 'sending_at',
                 t6(now), 'updated_at', ARGV[18])
      if m[7] or m[8] or m[9] then redis.call('HDEL', key, 'next_attempt_at', 'detail', 'error') end
      redis.call('ZADD', lane, math.floor((slot + deadline) * 1000), id)
      if both then credit = lane == KEYS[7] and credit - 1 or credit + gain end
      for _, v in ipairs({'send', id, tostring(attempt), tostring(slot - now), m[6]}) do
        table.insert(out, v)
      end
    end
  end
end
if tat > now then
  redis.call('SET', KEYS[3], t6(tat), 'PX', math.ceil((tat - now + interval) * 1000) + 1000)
end
if credit ~= credit_was then redis.call('HSET', KEYS[2], 'bulk_credit', t6(credit)) end
if #out > 4 then
  out[2] = tostring(tat - now)
  out[3] = t6(now)
  return out
end
if blocked then return {'wait', tostring(math.ceil((tat - horizon) * 1000))} end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local nxt_bulk = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
if nxt_bulk[1] and (not nxt[1] or tonumber(nxt_bulk[2]) < tonumber(nxt[2])) then nxt = nxt_bulk end
if not nxt[1] then
  if ARGV[17] == '1' then
    redis.call('HDEL', KEYS[2], 'token', 'until')
    return {'idle'}
  end
  return {'wait', false}
end
local wait_ms = math.max(tonumber(nxt[2]) - now_ms, 0)
if wait_ms > tonumber(ARGV[16]) and ARGV[17] == '1' then
  redis.call('HSET', KEYS[2], 'until', nxt[2])
  return {'sleep', tostring(wait_ms)}
end
return {'wait', tostring(wait_ms)}
"""
)

# KEYS: lane, dead-letter index, dead-letter counts. ARGV: phone_number_id, retention s,
# pair interval s, then 7 per outcome: kind, id, wa_id, a, b, c, d:
#   accepted: attempt, wamid, history events, -
#   retry:    due in s, history events, fields JSON (state, detail, error, ...),
#             'unsent' when the request never left (its pair slot is given back)
#   dead:     dead_at, history events, fields JSON, entry JSON
# (history events: JSON, one per line: the attempt's `sending`, then its outcome).
# An outcome applies only to a message still in the worker's hands (sending, retrying,
# queued): a status webhook may have made it final first. Returns started job tokens.
SETTLE: Final = (
    _PRELUDE
    + """
local pnid, retention, pair_interval = ARGV[1], ARGV[2], tonumber(ARGV[3])
local tokens = {}
local tally = {}
local function log(history, events)
  local lines = {}
  for event in string.gmatch(events, '[^\\n]+') do table.insert(lines, event) end
  redis.call('RPUSH', history, unpack(lines))
end
local now = clock()
for i = 4, #ARGV, 7 do
  local kind, id, wa = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key, history = MSG .. id, string.format(HISTORY, id)
  local state = redis.call('HGET', key, 'state')
  local open = state and not FINAL[state]
  local token = false
  if kind == 'accepted' then
    -- The claim cleared detail, error and next_attempt_at; the record and its history keep
    -- the retention their last move gave them (a status webhook gives them another).
    if open then
      redis.call('HSET', key, 'wamid', ARGV[i + 4], 'state', 'accepted', 'updated_at', t6(now))
      local m = emit_message('message.sent', id, key,
                             {wamid = ARGV[i + 4], attempt = tonumber(ARGV[i + 3])})
      add_stat(tally, 'sent:' .. pnid, 1)
      local created_at = tonumber(m[8] or '')  -- read by the event already: no second HGET
      if created_at then add_stat(tally, latency_field(now - created_at), 1) end
    else
      redis.call('HSET', key, 'wamid', ARGV[i + 4])
    end
    redis.call('SET', WAMID .. ARGV[i + 4], id, 'EX', retention)
    log(history, ARGV[i + 5])
    token = finish(pnid, wa, id, now)
  elseif kind == 'retry' then
    if open then
      add_stat(tally, 'retry:' .. pnid, 1)
      for field, value in pairs(cjson.decode(ARGV[i + 5])) do
        redis.call('HSET', key, field, value)
      end
      log(history, ARGV[i + 4])
      redis.call('ZADD', lane_of(string.format(LANE, pnid), id),
                 math.floor((now + tonumber(ARGV[i + 3])) * 1000), id)
      if ARGV[i + 6] == 'unsent' then  -- it never left: its pair slot goes back
        local pair = string.format(PAIR, pnid, wa)
        local tat = tonumber(redis.call('GET', pair) or '0')
        if tat > now then
          redis.call('SET', pair, t6(math.max(now, tat - pair_interval)), 'KEEPTTL')
        end
      end
    else
      token = finish(pnid, wa, id, now)
    end
  elseif kind == 'dead' then
    if open then
      local old = redis.call('GET', LETTER .. id)
      if old then count(KEYS[3], old, -1) end
      redis.call('SET', LETTER .. id, ARGV[i + 6])
      redis.call('ZADD', KEYS[2], ARGV[i + 3], id)
      count(KEYS[3], ARGV[i + 6], 1)
      for field, value in pairs(cjson.decode(ARGV[i + 5])) do
        redis.call('HSET', key, field, value)
      end
      redis.call('HDEL', key, 'next_attempt_at')
      log(history, ARGV[i + 4])
      dead_lettered(id, key, ARGV[i + 6])
    end
    token = finish(pnid, wa, id, now)
  end
  if kind == 'dead' and open then
    -- Kept as long as its dead letter: the worker's sweep drops the three together.
    redis.call('PERSIST', key)
    redis.call('PERSIST', history)
  elseif state and kind ~= 'accepted' then
    redis.call('EXPIRE', key, retention)
    redis.call('EXPIRE', history, retention)
  end
  if token then table.insert(tokens, token) end
end
flush_stats(tally, now)
return tokens
"""
)

# KEYS: record, history, wamid index. ARGV: state, event, retention s, message id,
# fields set always (JSON), fields set only when the state moves (JSON), fields to clear then.
# A state moves only forward (the worker's own states, ranks 0 and 1, among themselves). A
# message that becomes final here (a status webhook reconciling an unknown outcome) leaves
# its lane. Returns {1 moved / 0 kept / -1 no record[, token, phone_number_id]}.
RECORD: Final = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1} end
local new, old = RANK[ARGV[1]], RANK[current]
local moves = new >= old or (new <= 1 and old <= 1)
for field, value in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[1], field, value) end
if moves then
  redis.call('HSET', KEYS[1], 'state', ARGV[1])
  for field, value in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[1], field, value) end
  for field in string.gmatch(ARGV[7], '[^,]+') do redis.call('HDEL', KEYS[1], field) end
end
-- Events for what moved forward: Meta's word that it took a message whose outcome waq did
-- not know is its `sent`; then delivered and read. A repeat or a late status emits nothing.
if moves and new > old then
  if old < 2 and new >= 2 then
    emit_message('message.sent', ARGV[4], KEYS[1])
  end
  if ARGV[1] == 'delivered' or ARGV[1] == 'read' then
    flush_stats({[ARGV[1]] = 1}, clock())
    local step = cjson.decode(ARGV[2])
    emit_message('message.' .. ARGV[1], ARGV[4], KEYS[1], {at = step.reported_at or step.at})
  end
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if KEYS[3] ~= KEYS[1] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3]) end
local token = false
if moves and FINAL[ARGV[1]] and not FINAL[current] then
  local m = redis.call('HMGET', KEYS[1], 'phone_number_id', 'to')
  token = finish(m[1], wa_of(m[2]), ARGV[4])
  if token then return {1, token, m[1]} end
end
if moves then return {1} end
return {0}
"""
)

# KEYS: entry, index zset, counts, record, history.
# ARGV: id, entry JSON, dead_at, event, retention s, states that keep the message alive
# (",delivered,read," or ","), record fields (flat pairs)... Returns {1 added / 0 refused
# (the message is already in one of those states: a stale failure)[, token, phone_number_id]}.
DEAD_LETTER: Final = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[4], 'state')
if current and string.find(ARGV[6], ',' .. current .. ',', 1, true) then return {0} end
local old = redis.call('GET', KEYS[1])
if old then count(KEYS[3], old, -1) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
count(KEYS[3], ARGV[2], 1)
redis.call('HSET', KEYS[4], unpack(ARGV, 7))
redis.call('HDEL', KEYS[4], 'next_attempt_at')
redis.call('RPUSH', KEYS[5], ARGV[4])
-- Kept as long as its dead letter: the worker's sweep (or a purge) drops the three together.
redis.call('PERSIST', KEYS[4])
redis.call('PERSIST', KEYS[5])
dead_lettered(ARGV[1], KEYS[4], ARGV[2])
local m = redis.call('HMGET', KEYS[4], 'phone_number_id', 'to')
if m[1] then
  local token = finish(m[1], wa_of(m[2]), ARGV[1])
  if token then return {1, token, m[1]} end
end
return {1}
"""
)

# Taking an entry out checks first that it is the entry as listed (``expected``: its JSON
# then), so an entry rewritten in between (the message died again) stays. Returns the entry,
# or the answer to give.
_TAKE: Final = """
local function take(id, expected)
  local raw = redis.call('GET', LETTER .. id)
  if not raw then return nil, {'missing'} end
  if raw ~= expected then return nil, {'changed'} end
  return raw, nil
end
"""

# ARGV: id, expected entry JSON, retention s, event, created_at, phone_number_id, wa_id,
# record fields (a JSON object). Puts the message back as the producer enqueues it and
# removes the entry, or changes nothing. Keys are built here from the ids (8 arguments, not
# 30: redis-py packs each in Python, and a bulk requeue spent most of its time there).
# Returns {'ok', token or nil} or {'missing'} / {'changed'}.
REQUEUE: Final = (
    _PRELUDE
    + _TAKE
    + """
local id, pnid, wa = ARGV[1], ARGV[6], ARGV[7]
local raw, refused = take(id, ARGV[2])
if not raw then return refused end
local record, history = MSG .. id, string.format(HISTORY, id)
redis.call('HDEL', record, 'attempts', 'metadata', 'callback', 'updated_at')
local fields = {}
for name, value in pairs(cjson.decode(ARGV[8])) do
  table.insert(fields, name)
  table.insert(fields, value)
end
redis.call('HSET', record, unpack(fields))
redis.call('HSETNX', record, 'created_at', ARGV[5])
redis.call('HDEL', record, 'error', 'detail', 'wamid', 'next_attempt_at', 'sending_at')
redis.call('EXPIRE', record, ARGV[3])
local token = join(string.format(ORDER, pnid, wa), string.format(LANE, pnid),
                   string.format(JOB, pnid), history, id, ARGV[4], ARGV[3])
emit_message('message.requeued', id, record)
count(LETTER_COUNTS, raw, -1)
redis.call('DEL', LETTER .. id)
redis.call('ZREM', LETTERS, id)
return {'ok', token}
"""
)

# ARGV: id, expected entry JSON. The entry goes, and the dead message's record and history
# with it (they were kept for it); a ``message.purged`` event says so.
PURGE: Final = (
    _PRELUDE
    + _TAKE
    + """
local id = ARGV[1]
local raw, refused = take(id, ARGV[2])
if not raw then return refused end
local record = MSG .. id
count(LETTER_COUNTS, raw, -1)
redis.call('DEL', LETTER .. id)
redis.call('ZREM', LETTERS, id)
emit_message('message.purged', id, record)
if redis.call('HGET', record, 'state') == 'dead' then
  local wamid = redis.call('HGET', record, 'wamid')
  if wamid then redis.call('DEL', WAMID .. wamid) end
  redis.call('DEL', string.format(HISTORY, id), record)
end
return {'ok'}
"""
)

# KEYS: index, counts. ARGV: cutoff (unix s), most to take. Drops the dead letters that died
# before the cutoff (``WAQ_DLQ_RETENTION_S``), oldest first, with their dead messages'
# records and histories. Returns how many it dropped.
EXPIRE_DEAD_LETTERS: Final = (
    _PRELUDE
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local raw = redis.call('GET', LETTER .. id)
  if raw then count(KEYS[2], raw, -1) end
  redis.call('DEL', LETTER .. id)
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', MSG .. id, 'state') == 'dead' then
    local wamid = redis.call('HGET', MSG .. id, 'wamid')
    if wamid then redis.call('DEL', WAMID .. wamid) end
    redis.call('DEL', MSG .. id, string.format(HISTORY, id))
  end
end
return #ids
"""
)

# KEYS: none. ARGV: phone_number_id, wa_id, 'add' or 'remove', reason. An operator's (or a
# service's) change to the opt-out list. Returns 1 changed, 0 already so.
OPT_OUT: Final = (
    _FORMATS + EMIT + "return opt_out(ARGV[1], ARGV[2], ARGV[3] == 'add', {reason = ARGV[4]})"
)

# KEYS: record, history. ARGV: id, history event, now. Takes a message back if it was not yet
# handed to Meta (scheduled, queued or retrying): it becomes final, ``cancelled``, and its
# conversation's next message moves up. Returns {'cancelled', token or false, phone_number_id},
# {'refused', state} or {'missing'}.
CANCEL: Final = (
    _PRELUDE
    + """
local m = redis.call('HMGET', KEYS[1], 'state', 'phone_number_id', 'to')
local state = m[1]
if not state then return {'missing'} end
if state ~= 'queued' and state ~= 'retrying' and state ~= 'scheduled' then
  return {'refused', state}
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'next_attempt_at', 'detail')
redis.call('RPUSH', KEYS[2], ARGV[2])
emit_message('message.cancelled', ARGV[1], KEYS[1], {was = state})
local token = false
if state == 'scheduled' then  -- never joined its conversation: only the timer goes
  redis.call('ZREM', lane_of(string.format(LANE, m[2]), ARGV[1]), ARGV[1])
  redis.call('HINCRBY', string.format(JOB, m[2]), 'pending', -1)
else
  token = finish(m[2], wa_of(m[3]), ARGV[1])
end
return {'cancelled', token, m[2]}
"""
)

# KEYS: lane (or outbox due), its job[, the bulk lane]. ARGV: arq's job key for its tokens,
# without the token; '1' to replace a job that exists (a resumed number's, deferred while it
# was paused). One with messages (events) whose job is gone (its starter died between a step
# and starting the job, or arq dropped it) or asleep gets a new token; returns it, or nil.
# The outboxes run the same body after their own helpers.
WAKE_IF_WAITING_BODY: Final = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if KEYS[3] then  -- a lane's bulk lane
  local bulk = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if bulk[1] and (not first[1] or tonumber(bulk[2]) < tonumber(first[2])) then first = bulk end
end
if not first[1] then return false end
local token = redis.call('HGET', KEYS[2], 'token')
if token and (ARGV[2] == '1' or redis.call('EXISTS', ARGV[1] .. token) == 0) then
  redis.call('HDEL', KEYS[2], 'token', 'until')
end
return wake(KEYS[2], tonumber(first[2]))
"""

WAKE_IF_WAITING: Final = _PRELUDE + WAKE_IF_WAITING_BODY

# A window opens or moves forward only (webhooks arrive out of order and twice) and expires
# when it closes; the closing-soon index learns its new close. Returns 2 opened (it was
# closed), 1 extended, 0 kept (an older message). KEYS: window, closing index. ARGV at,
# window s, the index member.
OPEN_WINDOW: Final = """
local function open_window(window, closing, at, window_s, member)
  local current = tonumber(redis.call('GET', window) or '0')
  if at <= current then return 0 end
  redis.call('SET', window, t6(at), 'EXAT', math.floor(at) + window_s)
  if member then redis.call('ZADD', closing, at + window_s, member) end
  if at - current >= window_s then return 2 end
  return 1
end
"""

# KEYS: window. ARGV: at, window s, phone_number_id, wa_id. A window moved by hand (tests,
# the demo, benchmarks).
RECORD_WINDOW: Final = (
    _FORMATS
    + OPEN_WINDOW
    + """
local moved = open_window(KEYS[1], nil, tonumber(ARGV[1]), tonumber(ARGV[2]), nil)
if moved > 0 then note_recent(ARGV[3], ARGV[4], tonumber(ARGV[1]), tonumber(ARGV[2])) end
return moved
"""
)

# KEYS: window, closing-soon index, conversation. ARGV: 1 Meta's time of the message (unix
# s), 2 window s, 3 conversation id, 4 phone_number_id, 5 wa_id, 6 profile name or '',
# 7 the message's JSON (as Meta sent it), 8 now, 9 'out' / 'in' / '' (an opt-out or opt-in
# keyword), 10 the keyword, 11 the conversation's retention s. A customer's message: the
# window, the conversation (created on its first message; kept for the retention after the
# last), and their events. The message goes into its
# event as it came (spliced, not re-encoded: cjson would turn [] into {}).
INBOUND: Final = (
    _FORMATS
    + EMIT
    + OPEN_WINDOW
    + """
local pnid, wa = ARGV[4], ARGV[5]
local at, window_s = tonumber(ARGV[1]), tonumber(ARGV[2])
local opened = open_window(KEYS[1], KEYS[2], at, window_s, pnid .. ':' .. wa .. ':' .. ARGV[3])
if opened > 0 then note_recent(pnid, wa, at, window_s) end
local created = redis.call('HSETNX', KEYS[3], 'created_at', ARGV[8]) == 1
redis.call('HSET', KEYS[3], 'phone_number_id', pnid, 'wa_id', wa)
redis.call('EXPIRE', KEYS[3], ARGV[11])
local name = nil
if ARGV[6] ~= '' then
  name = ARGV[6]
  redis.call('HSET', KEYS[3], 'profile_name', name)
end
local who = {conversation_id = ARGV[3], phone_number_id = pnid, wa_id = wa,
             customer = '+' .. wa, profile_name = name}
if created then emit('conversation.created', who) end
who.window_opened = opened == 2
if opened > 0 then who.window_closes_at = at + window_s end
local head = cjson.encode(who)
redis.call('XADD', EVENTS, '*', 'type', 'message.received',
           'data', string.sub(head, 1, -2) .. ',"message":' .. ARGV[7] .. '}')
if ARGV[9] ~= '' then  -- an opt-out or opt-in keyword (STOP, START...)
  opt_out(pnid, wa, ARGV[9] == 'out', {reason = 'keyword', keyword = ARGV[10],
                                       conversation_id = ARGV[3]})
end
return opened
"""
)

# KEYS: closing-soon index. ARGV: now (unix s), lead s, most to take. Each window closing
# within the lead (and not closed yet) gets its ``conversation.window_closing`` event, once:
# a new message moves the window, and the member comes back with its new close.
WINDOW_CLOSING: Final = (
    _FORMATS
    + EMIT
    + """
local now, lead = tonumber(ARGV[1]), tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + lead, 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[3]))
local emitted = 0
for i = 1, #due, 2 do
  local member, closes = due[i], tonumber(due[i + 1])
  redis.call('ZREM', KEYS[1], member)
  if closes > now then
    local pnid, wa, conversation = string.match(member, '^([^:]+):([^:]+):(.+)$')
    if pnid then
      emit('conversation.window_closing', {conversation_id = conversation,
           phone_number_id = pnid, wa_id = wa, customer = '+' .. wa, closes_at = closes,
           closes_in_s = math.floor(closes - now)})
      emitted = emitted + 1
    end
  end
end
return {emitted, #due / 2}
"""
)
