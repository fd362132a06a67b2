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
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
};

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
    Cluster {
        client: ClusterClient,
        /// A single-node client of the first node given, with the same credentials and TLS
        /// settings, asked why when the cluster refuses every connection: redis-rs reports
        /// that as a generic I/O error, the node's own answer says "wrong password" or "bad
        /// certificate" as a typed error. `None` for a `ClusterClient` built elsewhere.
        first_node: Option<redis::Client>,
    },
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
        let nodes = connection_infos(urls)?;
        let first_node = nodes
            .first()
            .cloned()
            .map(redis::Client::open)
            .transpose()?;
        Ok(Self {
            inner: ClientInner::Cluster {
                client: ClusterClient::new(nodes)?,
                first_node,
            },
        })
    }

    /// A client of the cluster that `urls` belong to, over TLS that trusts `certificates`'
    /// `root_cert` (a private authority's PEM) instead of the system roots, and presents their
    /// `client_tls` when the nodes ask for client certificates; connects nothing yet. The
    /// cluster counterpart of [`redis::Client::build_with_tls`].
    ///
    /// Give the nodes as `rediss://user:password@host:port/` (an ACL user, or only a password
    /// for the default user); every URL must name the same user and password. The nodes the
    /// cluster reports later are reached over TLS too, with the same user: Redis 7 reports
    /// each node's TLS port to a client connected over TLS.
    ///
    /// ```no_run
    /// # use eventsource_redis::RedisClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let certificates = redis::TlsCertificates {
    ///     client_tls: None,
    ///     root_cert: Some(std::fs::read("/etc/ssl/redis-ca.pem")?),
    /// };
    /// let client = RedisClient::open_cluster_with_tls(
    ///     ["rediss://relay:secret@10.0.0.1:6380/", "rediss://relay:secret@10.0.0.2:6380/"],
    ///     certificates,
    /// )?;
    /// let conn = client.connect().await?;
    /// assert!(conn.is_cluster());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when a URL does not parse, `urls` is empty, the URLs name
    /// different users or passwords, or a certificate is not valid PEM. A wrong password or a
    /// server certificate `root_cert` did not sign fails [`connect`](Self::connect) instead.
    #[cfg(feature = "tls-rustls")]
    pub fn open_cluster_with_tls<T: IntoConnectionInfo>(
        urls: impl IntoIterator<Item = T>,
        certificates: redis::TlsCertificates,
    ) -> RedisResult<Self> {
        let nodes = connection_infos(urls)?;
        let first_node = nodes
            .first()
            .cloned()
            .map(|node| redis::Client::build_with_tls(node, certificates.clone()))
            .transpose()?;
        Ok(Self {
            inner: ClientInner::Cluster {
                client: ClusterClient::builder(nodes).certs(certificates).build()?,
                first_node,
            },
        })
    }

    /// Whether this is a cluster client.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, ClientInner::Cluster { .. })
    }

    /// Opens a new connection (a [`ConnectionManager`] or a [`ClusterConnection`]).
    ///
    /// # Errors
    ///
    /// A [`redis::RedisError`] when the node, or every node of the cluster, cannot be reached
    /// or refuses the connection. A wrong password is [`redis::ErrorKind::AuthenticationFailed`]
    /// on a single node and on a cluster opened with [`open_cluster`](Self::open_cluster) or
    /// [`open_cluster_with_tls`](Self::open_cluster_with_tls): when every node refuses, the
    /// first node's own answer is returned rather than redis-rs's generic "failed to create
    /// initial connections" I/O error (which a client converted from a [`ClusterClient`]
    /// returns).
    pub async fn connect(&self) -> RedisResult<RedisConnection> {
        Ok(match &self.inner {
            ClientInner::Single(client) => client.get_connection_manager().await?.into(),
            ClientInner::Cluster { client, first_node } => {
                match client.get_async_connection().await {
                    Ok(conn) => conn.into(),
                    Err(e) => return Err(why_refused(first_node.as_ref(), e).await),
                }
            }
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
            ClientInner::Cluster { client, first_node } => {
                let config = ClusterConfig::new()
                    .set_response_timeout(response_timeout)
                    .set_connection_timeout(connect_timeout);
                match client.get_async_connection_with_config(config).await {
                    Ok(conn) => conn.into(),
                    Err(e) => return Err(why_refused(first_node.as_ref(), e).await),
                }
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
            inner: ClientInner::Cluster {
                client,
                first_node: None,
            },
        }
    }
}

fn connection_infos<T: IntoConnectionInfo>(
    urls: impl IntoIterator<Item = T>,
) -> RedisResult<Vec<redis::ConnectionInfo>> {
    urls.into_iter()
        .map(IntoConnectionInfo::into_connection_info)
        .collect()
}

/// The error to report when a cluster refused every initial connection (`cluster_error`):
/// the first node's own refusal (a wrong password, a certificate not trusted) when connecting
/// to it alone fails too, else `cluster_error`.
async fn why_refused(first_node: Option<&redis::Client>, cluster_error: RedisError) -> RedisError {
    let Some(first_node) = first_node else {
        return cluster_error;
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    match first_node
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Err(node_error) => node_error,
        Ok(_) => cluster_error,
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
