//! Consumer groups: where a new group starts reading, and idempotent creation.

use redis::AsyncCommands as _;
use redis::aio::ConnectionLike;

use crate::error::RedisStoreError;

/// Where a newly created consumer group starts reading its stream.
///
/// It only matters when the group is created: an existing group keeps its position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartId {
    /// From the first entry the stream holds (Redis id `0`), the default.
    #[default]
    Beginning,
    /// Only entries added after the group is created (Redis id `$`).
    New,
    /// After the entry with this id (`<ms>-<seq>`, for an event stream a log position; see
    /// [`codec::entry_id`](crate::codec::entry_id)): the group's first delivery is the next
    /// entry. Redis refuses an id that does not parse when it creates the group.
    After(String),
}

impl StartId {
    /// The id `XGROUP CREATE` takes.
    fn as_redis_id(&self) -> &str {
        match self {
            Self::Beginning => "0",
            Self::New => "$",
            Self::After(id) => id,
        }
    }
}

/// Creates `group` on `key` (and the stream if missing), starting at `start`.
///
/// Idempotent: an existing group (`BUSYGROUP`) is success and is left where it is.
///
/// # Errors
///
/// [`RedisStoreError::Redis`] when Redis fails or refuses, e.g. `key` holds something other
/// than a stream or a [`StartId::After`] id does not parse.
pub async fn ensure_group<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    group: &str,
    start: &StartId,
) -> Result<(), RedisStoreError> {
    Ok(create_group(conn, key, group, start).await?)
}

pub(crate) async fn create_group<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    group: &str,
    start: &StartId,
) -> Result<(), redis::RedisError> {
    let created: Result<(), _> = conn
        .xgroup_create_mkstream(key, group, start.as_redis_id())
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use redis::aio::ConnectionManager;
    use redis::streams::{StreamReadOptions, StreamReadReply};

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

    /// The ids `group` is given when it reads new entries as consumer `c`.
    async fn read(conn: &mut ConnectionManager, key: &str, group: &str) -> Vec<String> {
        let options = StreamReadOptions::default().group(group, "c");
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[key], &[">"], &options).await.unwrap();
        reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect()
    }

    #[tokio::test]
    async fn a_group_starts_where_its_start_id_says() {
        let Some(url) = redis_url() else { return };
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_connection_manager().await.unwrap();
        let key = format!("test-{}:{{t}}:events", uuid::Uuid::new_v4().simple());
        for id in ["1-1", "1-2"] {
            let _: String = conn.xadd(&key, id, &[("f", "v")]).await.unwrap();
        }
        ensure_group(&mut conn, &key, "beginning", &StartId::Beginning)
            .await
            .unwrap();
        ensure_group(&mut conn, &key, "new", &StartId::New)
            .await
            .unwrap();
        ensure_group(&mut conn, &key, "after", &StartId::After("1-1".into()))
            .await
            .unwrap();
        // An existing group keeps its position, whatever the start id.
        ensure_group(&mut conn, &key, "beginning", &StartId::New)
            .await
            .unwrap();
        let _: String = conn.xadd(&key, "1-3", &[("f", "v")]).await.unwrap();

        assert_eq!(
            read(&mut conn, &key, "beginning").await,
            ["1-1", "1-2", "1-3"]
        );
        assert_eq!(read(&mut conn, &key, "new").await, ["1-3"]);
        assert_eq!(read(&mut conn, &key, "after").await, ["1-2", "1-3"]);
        let refused =
            ensure_group(&mut conn, &key, "bad", &StartId::After("nonsense".into())).await;
        assert!(
            matches!(refused, Err(RedisStoreError::Redis(_))),
            "{refused:?}"
        );
        let _: () = conn.del(&key).await.unwrap();
    }
}
