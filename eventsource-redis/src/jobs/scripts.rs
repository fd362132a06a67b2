//! The Lua scripts behind every state transition of a job: each one runs atomically in Redis.
//!
//! The scripts name a queue's fixed keys in `KEYS` and build job hash keys from the queue's key
//! front (`ARGV[1]`, `es:jobs:{<queue>}:`) plus `job:<id>`. Those share the queue's hash tag, so
//! on Redis Cluster every key a script touches lives in the slot of the keys it declares.
//!
//! Times come from the server (`TIME`), so workers on hosts with skewed clocks agree on when a
//! delay ends or a lock expires. Scores in `wait` are `priority * 2^32 + seq`: lower priority
//! first, then first added first (exact in a double: priority < 2^21).

use std::sync::LazyLock;

use redis::Script;

/// Helpers every script starts with.
const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(events, maxlen, ...)
  if maxlen > 0 then
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', ...)
  end
end
local function wait_score(jk)
  local p = tonumber(redis.call('HGET', jk, 'priority') or '0') or 0
  local seq = tonumber(redis.call('HGET', jk, 'seq') or '0') or 0
  return p * 4294967296 + (seq % 4294967296)
end
local function keep_last(set, base, keep)
  if keep < 0 then return end
  local n = redis.call('ZCARD', set)
  if n <= keep then return end
  local old = redis.call('ZRANGE', set, 0, n - keep - 1)
  for _, id in ipairs(old) do redis.call('DEL', base .. 'job:' .. id) end
  redis.call('ZREMRANGEBYRANK', set, 0, n - keep - 1)
end
-- Queues job `id` (hash `jk`): in `delayed` until `now + delay` if `delay > 0`, else in `wait`.
local function enqueue(wait, delayed, jk, id, now, delay)
  if delay > 0 then
    redis.call('ZADD', delayed, now + delay, id)
    redis.call('HSET', jk, 'state', 'delayed')
  else
    redis.call('ZADD', wait, wait_score(jk), id)
    redis.call('HSET', jk, 'state', 'wait')
  end
end
-- Ends an attempt: drops its lock and token, counts it and keeps its error, if any.
-- Returns the attempts made and allowed.
local function end_attempt(active, jk, id, reason)
  redis.call('ZREM', active, id)
  redis.call('HDEL', jk, 'token')
  local made = redis.call('HINCRBY', jk, 'attemptsMade', 1)
  if reason then redis.call('HSET', jk, 'failedReason', reason) end
  return made, tonumber(redis.call('HGET', jk, 'attempts') or '1') or 1
end
-- Moves a job out of attempts to `failed`, keeping the job's number of failed jobs.
local function fail_for_good(failed, events, maxlen, front, jk, id, reason, made, now)
  redis.call('HSET', jk, 'state', 'failed', 'finishedOn', now)
  redis.call('ZADD', failed, now, id)
  emit(events, maxlen, 'event', 'failed', 'id', id, 'name', redis.call('HGET', jk, 'name') or '',
    'reason', reason, 'attemptsMade', made)
  keep_last(failed, front, tonumber(redis.call('HGET', jk, 'keepFailed') or '-1'))
end
-- Promotes due delayed jobs, then takes the first waiting job under `token`'s lock: replies
-- {'job', id, field, value, ...}, {'paused'}, {'empty'} or {'empty', ms until the next is due}.
local function take_next(wait, delayed, active, meta, front, token, lock, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    enqueue(wait, delayed, front .. 'job:' .. id, id, now, 0)
  end
  if #due > 0 then redis.call('ZREM', delayed, unpack(due)) end
  if redis.call('HGET', meta, 'paused') == '1' then return {'paused'} end
  local popped = redis.call('ZPOPMIN', wait)
  if #popped == 0 then
    local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
    if #nxt == 0 then return {'empty'} end
    return {'empty', tostring(math.max(0, tonumber(nxt[2]) - now))}
  end
  local id = popped[1]
  local jk = front .. 'job:' .. id
  redis.call('ZADD', active, now + lock, id)
  redis.call('HSET', jk, 'state', 'active', 'token', token, 'processedOn', now)
  local reply = redis.call('HGETALL', jk)
  table.insert(reply, 1, id)
  table.insert(reply, 1, 'job')
  return reply
end
local function holds(active, jk, id, token)
  return redis.call('HGET', jk, 'token') == token and redis.call('ZSCORE', active, id) ~= false
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Adds a job unless one with its id exists.
///
/// `KEYS = [id counter, wait, delayed, events]`;
/// `ARGV = [front, custom id or '', events max len, delay ms, field, value, …]`;
/// replies `{1, id}` when added, `{0, id}` when a job with that id already exists.
pub(crate) static ADD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local front, maxlen = ARGV[1], tonumber(ARGV[3])
local id = ARGV[2]
local seq = redis.call('INCR', KEYS[1])
if id == '' then
  id = tostring(seq)
elseif redis.call('EXISTS', front .. 'job:' .. id) == 1 then
  return {0, id}
end
local jk = front .. 'job:' .. id
local now = now_ms()
redis.call('HSET', jk, unpack(ARGV, 5))
redis.call('HSET', jk, 'ts', now, 'seq', seq, 'attemptsMade', 0)
enqueue(KEYS[2], KEYS[3], jk, id, now, tonumber(ARGV[4]))
emit(KEYS[4], maxlen, 'event', 'added', 'id', id, 'name', redis.call('HGET', jk, 'name') or '')
return {1, id}
",
    )
});

/// Moves due delayed jobs to `wait`, then the first waiting job to `active` under a lock.
///
/// `KEYS = [wait, delayed, active, meta]`; `ARGV = [front, token, lock ms]`;
/// replies `{'job', id, field, value, …}`, `{'paused'}`, `{'empty'}` or
/// `{'empty', ms until the next delayed job is due}`.
pub(crate) static MOVE_TO_ACTIVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
return take_next(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], tonumber(ARGV[3]), now_ms())
",
    )
});

/// Pushes the lock of an active job forward if `token` still holds it.
///
/// `KEYS = [active]`; `ARGV = [front, id, token, lock ms]`; replies 1, or 0 if the lock is lost.
pub(crate) static EXTEND_LOCK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local jk = ARGV[1] .. 'job:' .. ARGV[2]
if not holds(KEYS[1], jk, ARGV[2], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[4]), ARGV[2])
return 1
",
    )
});

/// Records a job's progress if `token` still holds it.
///
/// `KEYS = [active, events]`; `ARGV = [front, id, token, progress json, events max len]`;
/// replies 1, or 0 if the lock is lost.
pub(crate) static PROGRESS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local jk = ARGV[1] .. 'job:' .. ARGV[2]
if not holds(KEYS[1], jk, ARGV[2], ARGV[3]) then return 0 end
redis.call('HSET', jk, 'progress', ARGV[4])
emit(KEYS[2], tonumber(ARGV[5]), 'event', 'progress', 'id', ARGV[2], 'progress', ARGV[4])
return 1
",
    )
});

/// Moves an active job to `completed` if `token` still holds it, keeping the job's number of
/// completed jobs.
///
/// Then, given a token for it, takes the next job like [`MOVE_TO_ACTIVE`] (one round trip per job
/// under load, as BullMQ's `moveToFinished` with `fetchNext`).
///
/// `KEYS = [active, completed, events, wait, delayed, meta]`;
/// `ARGV = [front, id, token, result json, events max len, next token or '', lock ms]`;
/// replies `{'done' or 'lost', …the next job's reply, if asked}`.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local front, id = ARGV[1], ARGV[2]
local jk = front .. 'job:' .. id
local now = now_ms()
local status = 'lost'
if holds(KEYS[1], jk, id, ARGV[3]) then
  status = 'done'
  end_attempt(KEYS[1], jk, id, nil)
  redis.call('HSET', jk, 'state', 'completed', 'returnvalue', ARGV[4], 'finishedOn', now)
  redis.call('ZADD', KEYS[2], now, id)
  emit(KEYS[3], tonumber(ARGV[5]), 'event', 'completed', 'id', id,
    'name', redis.call('HGET', jk, 'name') or '', 'returnvalue', ARGV[4])
  keep_last(KEYS[2], front, tonumber(redis.call('HGET', jk, 'keepCompleted') or '-1'))
end
if ARGV[6] == '' then return {status} end
local reply = take_next(KEYS[4], KEYS[5], KEYS[1], KEYS[6], front, ARGV[6], tonumber(ARGV[7]), now)
table.insert(reply, 1, status)
return reply
",
    )
});

/// Records a failed attempt if `token` still holds the job: back to `delayed` (or `wait`) while
/// attempts remain, else to `failed`, keeping the job's number of failed jobs.
///
/// `KEYS = [active, wait, delayed, failed, events]`;
/// `ARGV = [front, id, token, reason, retry delay ms, events max len]`;
/// replies 2 (will retry), 1 (failed for good), or 0 if the lock is lost.
pub(crate) static FAIL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local front, id, reason = ARGV[1], ARGV[2], ARGV[4]
local maxlen = tonumber(ARGV[6])
local jk = front .. 'job:' .. id
if not holds(KEYS[1], jk, id, ARGV[3]) then return 0 end
local now = now_ms()
local made, attempts = end_attempt(KEYS[1], jk, id, reason)
if made < attempts then
  local delay = tonumber(ARGV[5])
  enqueue(KEYS[2], KEYS[3], jk, id, now, delay)
  emit(KEYS[5], maxlen, 'event', 'retrying', 'id', id, 'reason', reason,
    'attemptsMade', made, 'delay', delay)
  return 2
end
fail_for_good(KEYS[4], KEYS[5], maxlen, front, jk, id, reason, made, now)
return 1
",
    )
});

/// Takes back active jobs whose lock expired (their worker died or hung, or the reply that
/// handed the job over was lost): each counts as a stall, not as an attempt, and goes back to
/// `wait`, or to `failed` once stalled more than `max stalled` times. An id whose job hash is
/// gone (removed by hand) only leaves `active`: no hash is recreated, no event emitted.
///
/// `KEYS = [active, wait, failed, events]`; `ARGV = [front, events max len, reason, max stalled]`;
/// replies the number of jobs taken back.
pub(crate) static MOVE_STALLED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local front, maxlen, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_stalled = tonumber(ARGV[4])
local now = now_ms()
local stalled = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
local moved = 0
for _, id in ipairs(stalled) do
  local jk = front .. 'job:' .. id
  redis.call('ZREM', KEYS[1], id)
  -- Checked before any write to the hash: an HDEL or HINCRBY would recreate a stub of it.
  if redis.call('EXISTS', jk) == 1 then
    moved = moved + 1
    redis.call('HDEL', jk, 'token')
    local stalls = redis.call('HINCRBY', jk, 'stalledCount', 1)
    local made = tonumber(redis.call('HGET', jk, 'attemptsMade') or '0') or 0
    if stalls > max_stalled then
      redis.call('HSET', jk, 'failedReason', reason)
      fail_for_good(KEYS[3], KEYS[4], maxlen, front, jk, id, reason, made, now)
    else
      enqueue(KEYS[2], nil, jk, id, now, 0)
      emit(KEYS[4], maxlen, 'event', 'stalled', 'id', id, 'attemptsMade', made,
        'stalledCount', stalls)
    end
  end
end
return moved
",
    )
});

/// Sets or clears the paused flag and says so on the events stream.
///
/// `KEYS = [meta, events]`; `ARGV = ['1' to pause or '0' to resume, events max len]`.
pub(crate) static PAUSE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
redis.call('HSET', KEYS[1], 'paused', ARGV[1])
local event = 'resumed'
if ARGV[1] == '1' then event = 'paused' end
emit(KEYS[2], tonumber(ARGV[2]), 'event', event)
return 1
",
    )
});
