//! Consumer groups: where a new group starts reading, and idempotent creation.

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;

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
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    start: &StartId,
) -> Result<(), RedisStoreError> {
    Ok(create_group(conn, key, group, start).await?)
}

pub(crate) async fn create_group(
    conn: &mut ConnectionManager,
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
