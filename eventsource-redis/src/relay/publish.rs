//! One batch into Redis: events grouped per stream key, each key's entries added by one script.

use std::collections::HashMap;
use std::sync::LazyLock;

use eventsource_core::{LogPosition, RecordedEvent};
use redis::{Script, ScriptInvocation};

use super::routing::Router;
use crate::codec::{self, FIELDS};
use crate::connection::RedisConnection;
use crate::error::RedisStoreError;
use crate::keys;

/// XADDs a batch of entries with explicit ids to `KEYS[1]`, skipping those Redis rejects as
/// "equal or smaller than the target stream top item" (already published) and stopping at any
/// other error.
///
/// A rejected id is a re-send only if the stream holds that very event at that id, or held it
/// and lost it to trimming (the id is below the first entry) or deletion (at or below the
/// stream's `max-deleted-entry-id`). An entry at that id with another `event_id`, or a missing id
/// inside the stream that was never deleted, means the event store and the stream disagree — a
/// store restored or reset behind Redis's back — and the script refuses rather than drop the
/// event silently. (A reset whose new ids all fall below a trimmed stream's first entry cannot be
/// told from a re-send; `check_transaction_ids` in eventsource-postgres guards that case.)
///
/// `ARGV = [n, field_1 .. field_n, id_1, value_1_1 .. value_1_n, id_2, …]`; replies
/// `{added, skipped}`.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));

/// What one published batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Events read from the log.
    pub events: usize,
    /// Entries added to streams.
    pub added: u64,
    /// Entries Redis already had (re-sent after a crash) and rejected.
    pub skipped: u64,
    /// The checkpoint after the batch.
    pub checkpoint: Option<LogPosition>,
}

/// What Redis did with a batch, summed over its stream keys.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Added {
    /// Entries added.
    pub(super) added: u64,
    /// Entries Redis already had.
    pub(super) skipped: u64,
}

/// The script calls of one batch, one per stream key, ready to send.
pub(super) struct Calls(Vec<(String, ScriptInvocation<'static>)>);

/// Groups `events` per key `router` picks and builds one script call per key (encoding every
/// event once), sending nothing: the relay prepares the next batch while Redis runs this one.
///
/// `tenant_tagged`: every key must carry its event's tenant as hash tag (a sharded relay, so
/// that no two shards write one key); a key without it refuses the batch.
pub(super) fn prepare(
    router: &dyn Router,
    events: &[RecordedEvent],
    tenant_tagged: bool,
) -> Result<Calls, RedisStoreError> {
    // Keys in first-seen order, with the index of their call: one lookup per event, no
    // intermediate per-key vectors.
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut calls: Vec<(String, ScriptInvocation<'static>)> = Vec::new();
    let mut targets = Vec::with_capacity(2);
    for event in events {
        targets.clear();
        router.route(event, &mut targets);
        if tenant_tagged {
            let tag = format!("{{{}}}", keys::escape(event.tenant().as_str()));
            if let Some(key) = targets.iter().find(|k| !k.contains(&tag)) {
                return Err(RedisStoreError::PublishRefused {
                    key: key.clone(),
                    id: codec::entry_id(event.position),
                    reason: format!(
                        "a sharded relay only publishes to keys with the hash tag {tag} of the event's tenant"
                    ),
                });
            }
        }
        let id = codec::entry_id(event.position);
        let values = codec::encode(event);
        for key in targets.drain(..) {
            let at = if let Some(at) = index.get(&key) {
                *at
            } else {
                let mut invocation = PUBLISH.prepare_invoke();
                invocation.key(&key).arg(FIELDS.len()).arg(&FIELDS[..]);
                index.insert(key.clone(), calls.len());
                calls.push((key, invocation));
                calls.len() - 1
            };
            calls[at].1.arg(&id).arg(&values[..]);
        }
    }
    Ok(Calls(calls))
}

/// Sends prepared calls, all keys at once; sums what Redis did.
pub(super) async fn send(conn: &RedisConnection, calls: Calls) -> Result<Added, RedisStoreError> {
    let calls = calls.0.into_iter().map(|(key, invocation)| {
        let mut conn = conn.clone();
        async move {
            let reply: Result<(u64, u64), redis::RedisError> =
                invocation.invoke_async(&mut conn).await;
            reply.map_err(|e| refused(&key, e))
        }
    });
    let replies = futures::future::try_join_all(calls).await?;
    Ok(replies
        .into_iter()
        .fold(Added::default(), |total, (added, skipped)| Added {
            added: total.added + added,
            skipped: total.skipped + skipped,
        }))
}

/// Maps the publish script's own refusal to [`RedisStoreError::PublishRefused`].
fn refused(key: &str, e: redis::RedisError) -> RedisStoreError {
    if e.code() == Some("PUBLISHREFUSED") {
        let detail = e.detail().unwrap_or_default();
        let (id, reason) = detail.split_once(' ').unwrap_or((detail, ""));
        return RedisStoreError::PublishRefused {
            key: key.to_owned(),
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
    }
    RedisStoreError::Redis(e)
}
