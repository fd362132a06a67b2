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
const PRELUDE: &str = include_str!("lua/prelude.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// Adds a job unless one with its id exists.
///
/// `KEYS = [id counter, wait, delayed, events]`;
/// `ARGV = [front, custom id or '', events max len, delay ms, field, value, …]`;
/// replies `{1, id}` when added, `{0, id}` when a job with that id already exists.
pub(crate) static ADD: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/add.lua")));

/// Moves due delayed jobs to `wait`, then the first waiting job to `active` under a lock.
///
/// `KEYS = [wait, delayed, active, meta]`; `ARGV = [front, token, lock ms]`;
/// replies `{'job', id, field, value, …}`, `{'paused'}`, `{'empty'}` or
/// `{'empty', ms until the next delayed job is due}`.
pub(crate) static MOVE_TO_ACTIVE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/move_to_active.lua")));

/// Pushes the lock of an active job forward if `token` still holds it.
///
/// `KEYS = [active]`; `ARGV = [front, id, token, lock ms]`; replies 1, or 0 if the lock is lost.
pub(crate) static EXTEND_LOCK: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/extend_lock.lua")));

/// Records a job's progress if `token` still holds it.
///
/// `KEYS = [active, events]`; `ARGV = [front, id, token, progress json, events max len]`;
/// replies 1, or 0 if the lock is lost.
pub(crate) static PROGRESS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/progress.lua")));

/// Moves an active job to `completed` if `token` still holds it, keeping the job's number of
/// completed jobs.
///
/// Then, given a token for it, takes the next job like [`MOVE_TO_ACTIVE`] (one round trip per job
/// under load, as BullMQ's `moveToFinished` with `fetchNext`).
///
/// `KEYS = [active, completed, events, wait, delayed, meta]`;
/// `ARGV = [front, id, token, result json, events max len, next token or '', lock ms]`;
/// replies `{'done' or 'lost', …the next job's reply, if asked}`.
pub(crate) static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/complete.lua")));

/// Records a failed attempt if `token` still holds the job: back to `delayed` (or `wait`) while
/// attempts remain, else to `failed`, keeping the job's number of failed jobs.
///
/// `KEYS = [active, wait, delayed, failed, events]`;
/// `ARGV = [front, id, token, reason, retry delay ms, events max len]`;
/// replies 2 (will retry), 1 (failed for good), or 0 if the lock is lost.
pub(crate) static FAIL: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/fail.lua")));

/// Takes back active jobs whose lock expired (their worker died or hung, or the reply that
/// handed the job over was lost): each counts as a stall, not as an attempt, and goes back to
/// `wait`, or to `failed` once stalled more than `max stalled` times. An id whose job hash is
/// gone (removed by hand) only leaves `active`: no hash is recreated, no event emitted.
///
/// `KEYS = [active, wait, failed, events]`; `ARGV = [front, events max len, reason, max stalled]`;
/// replies the number of jobs taken back.
pub(crate) static MOVE_STALLED: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/move_stalled.lua")));

/// Sets or clears the paused flag and says so on the events stream.
///
/// `KEYS = [meta, events]`; `ARGV = ['1' to pause or '0' to resume, events max len]`.
pub(crate) static PAUSE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/pause.lua")));
