//! One trim of one stream: the floor the consumer groups set, lowered by the retention.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use redis::aio::ConnectionLike;
use redis::streams::{
    StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply, StreamTrimOptions,
    StreamTrimmingMode,
};

use crate::error::RedisStoreError;

/// Entries read per `XRANGE` while looking for the first entry inside the retention.
const PAGE: usize = 100;

/// What [`trim`] or [`trim_with_retention`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Trimmed {
    /// Entries removed.
    pub removed: u64,
    /// The `MINID` used: the oldest entry kept; `None` when nothing was trimmed because the
    /// stream does not exist or has no consumer group.
    pub min_id: Option<String>,
}

impl Trimmed {
    const NOTHING: Self = Self {
        removed: 0,
        min_id: None,
    };
}

/// Trims `key` with `MINID` below what its slowest consumer group still needs.
///
/// For each group the floor is its oldest pending (delivered, unacknowledged) entry, or its
/// last-delivered id when nothing is pending; the stream keeps every entry at or above the
/// lowest floor. A stream without groups is left alone. Group positions only move forward, so
/// the result stays safe even if groups progress meanwhile; do not create a new group that
/// starts at `0` while trimming. The same as [`trim_with_retention`] with a zero retention.
///
/// # Errors
///
/// [`RedisStoreError::Redis`] when Redis fails, or when `key` holds something other than a
/// stream.
pub async fn trim<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
) -> Result<Trimmed, RedisStoreError> {
    trim_key(conn, key, Duration::ZERO, None).await
}

/// Trims `key` like [`trim`], but also keeps every entry recorded less than `retention` ago.
///
/// The entry ids are log positions, not times, so the age of an entry is its `recorded_at`
/// field (when the event store recorded the event): the entries below the groups' floor are
/// read from the oldest on, and the trim stops at the first one recorded within the
/// retention, or whose `recorded_at` is missing or does not parse. Each call reads about as
/// many entries as it removes.
///
/// # Errors
///
/// [`RedisStoreError::Redis`] when Redis fails, or when `key` holds something other than a
/// stream.
pub async fn trim_with_retention<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    retention: Duration,
) -> Result<Trimmed, RedisStoreError> {
    trim_key(conn, key, retention, None).await
}

/// Trims `key`, keeping `retention`; with `own_group`, only once that group exists on it (a
/// runner's group not created yet must not find its entries gone).
pub(super) async fn trim_key<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    retention: Duration,
    own_group: Option<&str>,
) -> Result<Trimmed, RedisStoreError> {
    let exists: bool = conn.exists(key).await?;
    if !exists {
        return Ok(Trimmed::NOTHING);
    }
    let groups: StreamInfoGroupsReply = conn.xinfo_groups(key).await?;
    if own_group.is_some_and(|own| groups.groups.iter().all(|g| g.name != own)) {
        return Ok(Trimmed::NOTHING);
    }
    // XINFO GROUPS before XPENDING: a last-delivered id read first can only be older than
    // the group's position when its pending entries are read, so the floor errs low.
    let mut floor: Option<((u64, u64), String)> = None;
    for group in &groups.groups {
        let pending: StreamPendingReply = conn.xpending(key, &group.name).await?;
        let id = match pending {
            StreamPendingReply::Data(data) if data.count > 0 => data.start_id,
            _ => group.last_delivered_id.clone(),
        };
        let parsed = parse_id(&id);
        if floor.as_ref().is_none_or(|f| parsed < f.0) {
            floor = Some((parsed, id));
        }
    }
    let Some((floor, floor_id)) = floor else {
        return Ok(Trimmed::NOTHING);
    };
    let min_id = if retention.is_zero() {
        floor_id
    } else {
        let cutoff = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| Utc::now().checked_sub_signed(r));
        let Some(cutoff) = cutoff else {
            // A retention further back than the clock can say: nothing is old enough.
            return Ok(Trimmed::NOTHING);
        };
        retention_boundary(conn, key, floor, floor_id, cutoff).await?
    };
    let options = StreamTrimOptions::minid(StreamTrimmingMode::Exact, min_id.clone());
    let removed: u64 = conn.xtrim_options(key, &options).await?;
    tracing::debug!(stream = %key, %min_id, removed, "trimmed stream");
    Ok(Trimmed {
        removed,
        min_id: Some(min_id),
    })
}

/// The first entry below `floor` recorded at or after `cutoff` (or whose time is unknown), or
/// `floor_id` when every entry below it is older.
async fn retention_boundary<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    floor: (u64, u64),
    floor_id: String,
    cutoff: DateTime<Utc>,
) -> Result<String, RedisStoreError> {
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = conn.xrange_count(key, &start, &floor_id, PAGE).await?;
        let Some(last) = page.ids.last() else {
            return Ok(floor_id);
        };
        for entry in &page.ids {
            if parse_id(&entry.id) >= floor {
                return Ok(floor_id);
            }
            let recorded = entry
                .get::<String>("recorded_at")
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok());
            if recorded.is_none_or(|t| t >= cutoff) {
                return Ok(entry.id.clone());
            }
        }
        // `(` makes the start exclusive (Redis 6.2, as `MINID` itself).
        start = format!("({}", last.id);
    }
}

/// An entry id as (milliseconds or transaction, sequence); a part that does not parse is 0,
/// which only lowers a floor.
fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_compare_by_number_not_text() {
        assert!(parse_id("9-5") < parse_id("10-0"));
        assert!(parse_id("10-9") < parse_id("10-10"));
        assert_eq!(parse_id("7"), (7, 0));
    }
}
