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
/// atomically, if consumer `ARGV[3]` still owns the entry. `ARGV[4]` is `1` when the entry
/// should be in the pending list (`0` for one Redis reported deleted, which left it);
/// `ARGV[5..]` are the dead letter's field/value pairs. Replies the XACK count, or `-1` when
/// another consumer has taken the entry over (reclaimed while this one was still working on
/// it): that consumer decides its fate, so nothing is written.
pub(crate) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[4] == '1' then
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if #p == 0 or p[1][2] ~= ARGV[3] then
    return -1
  end
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `REDIS_URL`, or `None` outside CI (a panic under `CI`, where the service must exist).
    fn redis_url() -> Option<String> {
        match std::env::var("REDIS_URL") {
            Ok(url) => Some(url),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("REDIS_URL must be set in CI: {e}")
            }
            Err(_) => None,
        }
    }

    async fn dead_letter_as(
        conn: &mut ConnectionManager,
        key: &str,
        dlq: &str,
        id: &str,
        consumer: &str,
    ) -> i64 {
        DEAD_LETTER
            .prepare_invoke()
            .key(key)
            .key(dlq)
            .arg("g")
            .arg(id)
            .arg(consumer)
            .arg("1")
            .arg("dlq_error")
            .arg("boom")
            .invoke_async(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_the_owner_dead_letters_an_entry() {
        let Some(url) = redis_url() else { return };
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection_manager().await.unwrap();
        let key = format!("test-{}:{{t}}:events", uuid::Uuid::new_v4().simple());
        let dlq = format!("{key}:dlq:g");
        create_group(&mut conn, &key, "g", "0").await.unwrap();
        let id: String = conn.xadd(&key, "1-1", &[("f", "v")]).await.unwrap();
        let _: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("a")
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Consumer b reclaims the entry while a still works on it.
        let _: Value = redis::cmd("XCLAIM")
            .arg(&key)
            .arg("g")
            .arg("b")
            .arg(0)
            .arg(&id)
            .query_async(&mut conn)
            .await
            .unwrap();

        assert_eq!(dead_letter_as(&mut conn, &key, &dlq, &id, "a").await, -1);
        let dead: usize = conn.xlen(&dlq).await.unwrap();
        assert_eq!(dead, 0, "a no longer owns the entry");
        assert_eq!(dead_letter_as(&mut conn, &key, &dlq, &id, "b").await, 1);
        let dead: usize = conn.xlen(&dlq).await.unwrap();
        assert_eq!(dead, 1);
        let _: () = conn.del(&[&key, &dlq]).await.unwrap();
    }
}
