//! Dead letters: the fields they carry, inspecting them, sending them back to their group.
//!
//! The runner writes them (`runner/dead_letter.rs`); this module reads and requeues them.

use std::collections::HashMap;
use std::sync::LazyLock;

use eventsource_core::RecordedEvent;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands as _, Script, Value};

use crate::codec;
use crate::error::{CodecError, RedisStoreError};
use crate::keys;
use fields as dlq;

/// Names of the fields a dead letter carries besides the original entry's fields.
pub mod fields {
    /// The stream the entry was read from.
    pub const SOURCE_STREAM: &str = "dlq_source_stream";
    /// The entry's id in that stream.
    pub const SOURCE_ID: &str = "dlq_source_id";
    /// The consumer group that gave up.
    pub const GROUP: &str = "dlq_group";
    /// The consumer that gave up.
    pub const CONSUMER: &str = "dlq_consumer";
    /// The last error (handler error, decode error, or why the entry vanished).
    pub const ERROR: &str = "dlq_error";
    /// Deliveries before it was given up.
    pub const DELIVERIES: &str = "dlq_deliveries";
    /// When it was dead-lettered (RFC 3339).
    pub const AT: &str = "dlq_at";
}

/// Copies dead letter `ARGV[1]` of `KEYS[1]` without its `dlq_*` fields to `KEYS[2]`, then
/// deletes it; replies the new id, or nil when there is no such entry.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/requeue.lua")));

/// An entry of a dead-letter stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The stream it was read from.
    pub source_stream: Option<String>,
    /// Its id there.
    pub source_id: Option<String>,
    /// The consumer that gave up.
    pub consumer: Option<String>,
    /// Why.
    pub error: Option<String>,
    /// Deliveries before giving up.
    pub deliveries: Option<u64>,
    /// The event, if the fields still decode.
    pub event: Result<RecordedEvent, CodecError>,
    /// Every field as stored.
    pub fields: HashMap<String, Value>,
}

/// Number of dead letters `group` left for `stream_key`.
///
/// `conn` is any async connection: a [`RedisConnection`](crate::RedisConnection), a single
/// node's `ConnectionManager`, a cluster's `ClusterConnection`.
pub async fn dead_letter_count<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream_key: &str,
    group: &str,
) -> Result<u64, RedisStoreError> {
    Ok(conn
        .xlen(keys::dead_letter_stream(stream_key, group))
        .await?)
}

/// The oldest `count` dead letters `group` left for `stream_key`.
pub async fn dead_letters<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream_key: &str,
    group: &str,
    count: usize,
) -> Result<Vec<DeadLetter>, RedisStoreError> {
    let reply: StreamRangeReply = conn
        .xrange_count(keys::dead_letter_stream(stream_key, group), "-", "+", count)
        .await?;
    Ok(reply
        .ids
        .into_iter()
        .map(|entry| {
            let field = |name| codec::text(&entry.map, name).ok().map(str::to_owned);
            DeadLetter {
                source_stream: field(dlq::SOURCE_STREAM),
                source_id: field(dlq::SOURCE_ID),
                consumer: field(dlq::CONSUMER),
                error: field(dlq::ERROR),
                deliveries: field(dlq::DELIVERIES).and_then(|d| d.parse().ok()),
                event: codec::decode(&entry.map),
                id: entry.id,
                fields: entry.map,
            }
        })
        .collect())
}

/// Sends dead letter `id` back to `group`: copies its original fields to the group's requeue
/// stream ([`requeue_stream`](crate::requeue_stream), which [`ConsumerRunner`](crate::ConsumerRunner) reads) and
/// deletes it from the dead-letter stream, atomically. Returns the new entry id.
///
/// The entry is not put back into the event stream itself: a fresh id there would sort after
/// every future log position and make Redis refuse the relay's next entries.
///
/// # Errors
///
/// [`RedisStoreError::NoSuchEntry`] when there is no such dead letter;
/// [`RedisStoreError::NothingToRequeue`] when it carries none of the original entry's fields
/// (the entry was deleted before anyone read it and no event store could refetch it): read the
/// event from the store by its `dlq_source_id` instead.
pub async fn requeue_dead_letter<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream_key: &str,
    group: &str,
    id: &str,
) -> Result<String, RedisStoreError> {
    let dead_letters = keys::dead_letter_stream(stream_key, group);
    let new_id: Option<String> = REQUEUE
        .key(&dead_letters)
        .key(keys::requeue_stream(stream_key, group))
        .arg(id)
        .invoke_async(conn)
        .await
        .map_err(|e| {
            if e.code() == Some("REQUEUEEMPTY") {
                RedisStoreError::NothingToRequeue {
                    key: dead_letters.clone(),
                    id: id.to_owned(),
                }
            } else {
                RedisStoreError::Redis(e)
            }
        })?;
    new_id.ok_or_else(|| RedisStoreError::NoSuchEntry {
        key: dead_letters,
        id: id.to_owned(),
    })
}
