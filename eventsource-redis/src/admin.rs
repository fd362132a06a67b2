//! Operating the streams: statistics, health (trimming is in `trim`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use redis::aio::ConnectionLike;
use redis::streams::StreamInfoGroupsReply;

use crate::error::RedisStoreError;
use crate::keys;

/// One consumer group's state on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// The group's name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// The last entry delivered to the group.
    pub last_delivered_id: String,
    /// Entries not yet delivered to the group (`None` when Redis cannot tell, e.g. after
    /// deletions).
    pub lag: Option<u64>,
    /// Entries in the group's dead-letter stream.
    pub dead_letters: u64,
}

/// A stream's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// The stream key.
    pub key: String,
    /// Entries in the stream.
    pub length: u64,
    /// Its consumer groups.
    pub groups: Vec<GroupStats>,
}

/// Length, and per group pending entries, lag and dead letters of `key`.
pub async fn stats<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
) -> Result<StreamStats, RedisStoreError> {
    let length: u64 = conn.xlen(key).await?;
    let exists: bool = conn.exists(key).await?;
    let mut groups = Vec::new();
    if exists {
        let reply: StreamInfoGroupsReply = conn.xinfo_groups(key).await?;
        for group in reply.groups {
            let dead_letters: u64 = conn
                .xlen(keys::dead_letter_stream(key, &group.name))
                .await?;
            groups.push(GroupStats {
                consumers: group.consumers as u64,
                pending: group.pending as u64,
                last_delivered_id: group.last_delivered_id,
                lag: group.lag.map(|l| l as u64),
                dead_letters,
                name: group.name,
            });
        }
    }
    Ok(StreamStats {
        key: key.to_owned(),
        length,
        groups,
    })
}

/// What [`health_check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Round-trip time of a `PING`.
    pub latency: Duration,
    /// The server's `maxmemory-policy`, when `CONFIG GET` is allowed.
    pub eviction_policy: Option<String>,
}

impl Health {
    /// Whether the server may evict keys: anything but `noeviction` can silently drop a
    /// stream and, with it, the ids that make the relay exactly-once.
    #[must_use]
    pub fn may_evict(&self) -> bool {
        self.eviction_policy
            .as_deref()
            .is_some_and(|p| p != "noeviction")
    }
}

/// Pings the server and reads its eviction policy.
///
/// On a cluster connection both go through redis-rs's routing (`PING` to the primaries it
/// reaches, the policy from one node): an answer says the cluster answers, not that every
/// node is up (watch `CLUSTER INFO` for that); give every node the same `maxmemory-policy`.
pub async fn health_check<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
) -> Result<Health, RedisStoreError> {
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(conn).await?;
    let latency = started.elapsed();
    let policy: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    Ok(Health {
        latency,
        eviction_policy: policy.ok().and_then(|m| m.get("maxmemory-policy").cloned()),
    })
}
