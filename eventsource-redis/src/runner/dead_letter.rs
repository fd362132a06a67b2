//! Giving up on an entry: it moves to the group's dead-letter stream, atomically with its ack.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use eventsource_core::{EventHandler, RecordedEvent};
use redis::{Script, Value};

use super::ConsumerRunner;
use super::delivery::Delivery;
use crate::codec;
use crate::dead_letter_fields as dlq;
use crate::error::RunnerError;

/// Adds a dead letter to `KEYS[2]` and acks `ARGV[2]` in `KEYS[1]` for group `ARGV[1]`,
/// atomically, if consumer `ARGV[3]` still owns the entry. `ARGV[4]` is `1` when the entry
/// should be in the pending list (`0` for one Redis reported deleted, which left it);
/// `ARGV[5..]` are the dead letter's field/value pairs. Replies the XACK count, or `-1` when
/// another consumer has taken the entry over (reclaimed while this one was still working on
/// it): that consumer decides its fate, so nothing is written.
static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/dead_letter.lua")));

impl<H: EventHandler> ConsumerRunner<H> {
    /// Moves the entry to the dead-letter stream and acks it, in one script.
    pub(super) async fn dead_letter(
        &self,
        d: &Delivery,
        event: Option<&RecordedEvent>,
        error: &str,
        deliveries: u64,
    ) -> Result<(), RunnerError> {
        let source = &self.read_keys[d.key];
        let mut invocation = DEAD_LETTER.prepare_invoke();
        invocation
            .key(source)
            .key(&self.dead_letter_keys[d.key])
            .arg(&self.group)
            .arg(&d.id)
            .arg(&self.consumer)
            .arg(if d.in_pending { "1" } else { "0" });
        if d.fields.is_empty() {
            if let Some(event) = event {
                for (field, value) in codec::encode_pairs(event) {
                    invocation.arg(field).arg(value);
                }
            }
        } else {
            for (field, value) in raw_fields(&d.fields) {
                if !field.starts_with("dlq_") {
                    invocation.arg(field).arg(value);
                }
            }
        }
        invocation
            .arg(dlq::SOURCE_STREAM)
            .arg(source)
            .arg(dlq::SOURCE_ID)
            .arg(&d.id)
            .arg(dlq::GROUP)
            .arg(&self.group)
            .arg(dlq::CONSUMER)
            .arg(&self.consumer)
            .arg(dlq::ERROR)
            .arg(error)
            .arg(dlq::DELIVERIES)
            .arg(deliveries)
            .arg(dlq::AT)
            .arg(chrono::Utc::now().to_rfc3339());
        let acked: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        if acked < 0 {
            tracing::info!(
                stream = %source,
                id = %d.id,
                "entry was reclaimed by another consumer; leaving it to that consumer"
            );
            return Ok(());
        }
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
    use redis::AsyncCommands as _;
    use redis::aio::ConnectionManager;

    use super::*;
    use crate::runner::group::{StartId, create_group};

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
        create_group(&mut conn, &key, "g", &StartId::Beginning)
            .await
            .unwrap();
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
