//! Consumer-group plumbing: idempotent group creation and the atomic dead-letter move.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Script, Value};

use crate::error::RedisStoreError;

/// Names of the fields a dead letter carries besides the original entry's fields.
pub mod dead_letter_fields {
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

/// Adds a dead letter to `KEYS[2]` and acks `ARGV[2]` in `KEYS[1]` for group `ARGV[1]`,
/// atomically. `ARGV[3..]` are the dead letter's field/value pairs.
pub(crate) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

/// Creates `group` on `key` (and the stream if missing), starting at `start_id`
/// (`"0"`: from the first entry, `"$"`: only new ones).
///
/// Idempotent: an existing group (`BUSYGROUP`) is success and is left where it is.
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    start_id: &str,
) -> Result<(), RedisStoreError> {
    Ok(create_group(conn, key, group, start_id).await?)
}

pub(crate) async fn create_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    start_id: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), _> = conn.xgroup_create_mkstream(key, group, start_id).await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The raw field map of an entry as bytes, for copying it elsewhere.
pub(crate) fn raw_fields(map: &HashMap<String, Value>) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = map
        .iter()
        .map(|(k, v)| {
            let bytes = match v {
                Value::BulkString(b) => b.clone(),
                Value::SimpleString(s) => s.clone().into_bytes(),
                other => format!("{other:?}").into_bytes(),
            };
            (k.clone(), bytes)
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}
