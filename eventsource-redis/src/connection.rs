//! One connection type for a single Redis node and for a Redis Cluster (ADR 0029).
//!
//! [`RedisConnection`] is what the relay, the runners and the admin functions send commands
//! through; [`RedisClient`] is what a runner opens its own blocking-read connection from.
//! Both are cheap to clone and convert from redis-rs's own handles.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to a single Redis node or to a Redis Cluster, cheap to clone.
///
/// Either wraps a [`ConnectionManager`] (single node; reconnects on failure) or a
/// [`ClusterConnection`] (cluster; follows `MOVED`/`ASK` redirections and failovers). Every
/// command this crate sends through it touches the keys of one hash slot (keys carry a
/// `{tenant}` hash tag, see [`Keys`](crate::Keys)), so the same code runs on both.
///
/// ```no_run
/// # use eventsource_redis::RedisConnection;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), redis::RedisError> {
/// let single = RedisConnection::open("redis://127.0.0.1:6379/").await?;
/// let cluster = RedisConnection::open_cluster([
///     "redis://10.0.0.1:6379/",
///     "redis://10.0.0.2:6379/",
/// ])
/// .await?;
/// assert!(cluster.is_cluster() && !single.is_cluster());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = if self.is_cluster() {
            "cluster"
        } else {
            "single node"
        };
        f.debug_struct("RedisConnection")
            .field("topology", &topology)
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// Connects to the single node at `url` (`redis://` or, with the `tls-rustls` feature,
    /// `rediss://`) through a [`ConnectionManager`].
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when the URL does not parse or the node cannot be reached.
    pub async fn open(url: impl IntoConnectionInfo) -> RedisResult<Self> {
        RedisClient::open(url)?.connect().await
    }

    /// Connects to the Redis Cluster that `urls` (one or more of its nodes) belong to.
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when a URL does not parse, when `urls` is empty or when no node
    /// answers with the cluster's slot map.
    pub async fn open_cluster<T: IntoConnectionInfo>(
        urls: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        RedisClient::open_cluster(urls)?.connect().await
    }

    /// Whether this is a cluster connection.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(conn: ConnectionManager) -> Self {
        Self {
            inner: Inner::Single(conn),
        }
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(conn: ClusterConnection) -> Self {
        Self {
            inner: Inner::Cluster(conn),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

/// What opens [`RedisConnection`]s: a [`redis::Client`] (single node) or a
/// [`ClusterClient`] (cluster). Cheap to clone.
///
/// A [`ConsumerRunner`](crate::ConsumerRunner) takes one to open a connection of its own for
/// its blocking reads: a blocked `XREADGROUP` holds up every command queued behind it on a
/// multiplexed connection, so it must not share one with acks and scripts.
#[derive(Clone)]
pub struct RedisClient {
    inner: ClientInner,
}

#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "a client lives once per relay or runner; boxing saves nothing that matters"
)]
enum ClientInner {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topology = if self.is_cluster() {
            "cluster"
        } else {
            "single node"
        };
        f.debug_struct("RedisClient")
            .field("topology", &topology)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// A client of the single node at `url`; connects nothing yet.
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when the URL does not parse.
    pub fn open(url: impl IntoConnectionInfo) -> RedisResult<Self> {
        Ok(redis::Client::open(url)?.into())
    }

    /// A client of the cluster that `urls` (one or more of its nodes) belong to; connects
    /// nothing yet.
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when a URL does not parse or `urls` is empty.
    pub fn open_cluster<T: IntoConnectionInfo>(
        urls: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        Ok(ClusterClient::new(urls)?.into())
    }

    /// Whether this is a cluster client.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, ClientInner::Cluster(_))
    }

    /// Opens a new connection (a [`ConnectionManager`] or a [`ClusterConnection`]).
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when the node, or every node of the cluster, cannot be reached.
    pub async fn connect(&self) -> RedisResult<RedisConnection> {
        Ok(match &self.inner {
            ClientInner::Single(client) => client.get_connection_manager().await?.into(),
            ClientInner::Cluster(client) => client.get_async_connection().await?.into(),
        })
    }

    /// Opens a connection for blocking reads: its own sockets, and a response timeout of
    /// `response_timeout` (longer than the longest block).
    pub(crate) async fn connect_blocking(
        &self,
        response_timeout: Duration,
    ) -> RedisResult<RedisConnection> {
        let connect_timeout = Duration::from_secs(2);
        Ok(match &self.inner {
            ClientInner::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(connect_timeout));
                client
                    .get_connection_manager_with_config(config)
                    .await?
                    .into()
            }
            ClientInner::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_response_timeout(response_timeout)
                    .set_connection_timeout(connect_timeout);
                client
                    .get_async_connection_with_config(config)
                    .await?
                    .into()
            }
        })
    }
}

impl From<redis::Client> for RedisClient {
    fn from(client: redis::Client) -> Self {
        Self {
            inner: ClientInner::Single(client),
        }
    }
}

impl From<ClusterClient> for RedisClient {
    fn from(client: ClusterClient) -> Self {
        Self {
            inner: ClientInner::Cluster(client),
        }
    }
}

/// Splits `keys` (by index) into groups that one multi-key command may read together: on a
/// cluster, one group per hash slot, in the order each slot first appears; on a single node,
/// one group of every key (no slots to respect).
pub(crate) fn slot_groups(keys: &[String], cluster: bool) -> Vec<Vec<usize>> {
    if !cluster {
        return if keys.is_empty() {
            Vec::new()
        } else {
            vec![(0..keys.len()).collect()]
        };
    }
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (idx, key) in keys.iter().enumerate() {
        let slot = Slot::for_key(key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(idx),
            None => groups.push((slot, vec![idx])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// Whether two keys hash to the same cluster slot.
pub(crate) fn same_slot(a: &str, b: &str) -> bool {
    Slot::for_key(a) == Slot::for_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_by_hash_tag_on_a_cluster_only() {
        let keys: Vec<String> = [
            "es:{a}:events",
            "es:{b}:events",
            "es:{a}:events:requeue:g",
            "es:{b}:events:requeue:g",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(slot_groups(&keys, true), [vec![0, 2], vec![1, 3]]);
        assert_eq!(slot_groups(&keys, false), [vec![0, 1, 2, 3]]);
        assert!(slot_groups(&[], false).is_empty());
    }

    #[test]
    fn derived_keys_share_the_slot_of_a_tagged_stream_only() {
        let tagged = "es:{acme}:events";
        assert!(same_slot(
            tagged,
            &crate::keys::dead_letter_stream(tagged, "g{x}")
        ));
        assert!(same_slot(tagged, &crate::keys::requeue_stream(tagged, "g")));
        assert!(!same_slot(
            "orders",
            &crate::keys::dead_letter_stream("orders", "g")
        ));
    }

    #[test]
    fn slots_match_redis_cluster_keyslot() {
        // Known answers of `CLUSTER KEYSLOT` (the hash-tag rule: only `{...}` is hashed).
        assert_eq!(Slot::for_key("foo"), Slot::for_key("{foo}:bar"));
        assert_eq!(Slot::new(12182), Some(Slot::for_key("foo")));
        assert_eq!(Slot::new(5061), Some(Slot::for_key("bar")));
    }
}
