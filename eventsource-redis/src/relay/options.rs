//! Tuning of the relay.

use std::time::Duration;

use eventsource_core::{LogFilter, RetryPolicy};

/// Tuning of a [`RedisRelay`](crate::RedisRelay).
///
/// ```
/// # use eventsource_redis::RelayOptions;
/// # use std::time::Duration;
/// let options = RelayOptions::default()
///     .with_batch_size(2_000)
///     .with_lease_ttl(Duration::from_secs(5));
/// assert_eq!(options.batch_size(), 2_000);
/// ```
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub(crate) batch_size: usize,
    pub(crate) max_idle_poll: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) instance_id: String,
    pub(crate) filter: LogFilter,
    pub(crate) error_backoff: RetryPolicy,
    pub(crate) refuse_out_of_order: bool,
    /// Replicas that must hold a batch before the checkpoint moves, and how long to wait.
    pub(crate) replicas: Option<(u32, Duration)>,
    /// How many shards the tenants are partitioned into (1: no sharding).
    pub(crate) shards: u32,
    /// The one shard this instance publishes, or `None`: any shard whose lease it can get.
    pub(crate) shard: Option<u32>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 1_000,
            max_idle_poll: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(10),
            instance_id: uuid::Uuid::new_v4().to_string(),
            filter: LogFilter::all(),
            error_backoff: RetryPolicy::default()
                .with_max_attempts(u32::MAX)
                .with_base_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5)),
            refuse_out_of_order: true,
            replicas: None,
            shards: 1,
            shard: None,
        }
    }
}

impl RelayOptions {
    /// Whether a batch that gives a stream out of version order is refused
    /// ([`RedisStoreError::OutOfOrder`](crate::RedisStoreError::OutOfOrder), the default) or
    /// published as the log gives it, with a warning per event out of order. Turn it off only
    /// to publish a log written before the store kept streams in order (`eventsource-postgres`
    /// before migration 0007), whose inversions cannot be undone; the crate README says how
    /// to find them.
    #[must_use]
    pub fn with_refuse_out_of_order(mut self, refuse: bool) -> Self {
        self.refuse_out_of_order = refuse;
        self
    }

    /// Events read from the log and published per batch (default 1,000).
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Longest wait between two polls of an idle log (default 250 ms). After a full batch the
    /// next poll is immediate; after an empty one the wait doubles from 1 ms up to this bound.
    /// A local append wakes the relay at once through [`EventStore::append_notify`].
    ///
    /// [`EventStore::append_notify`]: eventsource_core::EventStore::append_notify
    #[must_use]
    pub fn with_max_idle_poll(mut self, max_idle_poll: Duration) -> Self {
        self.max_idle_poll = max_idle_poll;
        self
    }

    /// How long the lease lives without renewal (default 10 s). A second instance waits until
    /// the first stops renewing; it is renewed every third of this.
    #[must_use]
    pub fn with_lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl.max(Duration::from_millis(30));
        self
    }

    /// A stable id of this instance (default: random). An instance restarted with the same id
    /// takes its own lease back at once instead of waiting for it to expire.
    #[must_use]
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Which events of the log are published (default: all).
    #[must_use]
    pub fn with_filter(mut self, filter: LogFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Backoff between attempts after a transient Redis or store failure.
    #[must_use]
    pub fn with_error_backoff(mut self, backoff: RetryPolicy) -> Self {
        self.error_backoff = backoff;
        self
    }

    /// Waits, after each batch and before its checkpoint moves, until `replicas` replicas of
    /// every master have it (Redis `WAIT`; on a cluster sent to every primary), for at most
    /// `timeout` (default: off, `0` turns it off).
    ///
    /// Redis replicates asynchronously: a master that dies right after answering can take the
    /// last entries with it, and the replica promoted in its place never had them. With the
    /// checkpoint held back until a replica has the batch, the relay re-sends whatever the
    /// failover lost (and Redis skips what the new master already holds). Fewer replicas than
    /// asked within `timeout` fail the batch with the retryable
    /// [`RedisStoreError::NotReplicated`](crate::RedisStoreError::NotReplicated): with
    /// `replicas` above what the deployment runs, the relay never moves on.
    #[must_use]
    pub fn with_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        // `WAIT n 0` would block forever.
        self.replicas = (replicas > 0).then_some((replicas, timeout.max(Duration::from_millis(1))));
        self
    }

    /// Partitions the tenants into `count` shards (default 1; 0 is taken as 1), each with its
    /// own lease and checkpoint, so that several relay processes share the log. A tenant's
    /// shard is [`shard_of`](crate::shard_of) its id.
    ///
    /// Without [`with_shard`](Self::with_shard) an instance publishes every shard whose lease
    /// it can get: start the same relay (same name, same `count`) in several processes and
    /// each takes free shards, renews their leases, and takes over the shard of a process that
    /// died once its lease expired. Each shard reads only its tenants' events
    /// ([`LogFilter::with_shard`]; a store that ignores it sends the whole log, and the shard
    /// keeps its own tenants' events; see ADR 0031 and 0035).
    ///
    /// With more than one shard, every key the router picks must carry the event's tenant as
    /// its hash tag (as the crate's routers do): two shards writing one key would interleave
    /// log positions, which Redis refuses. A key without it fails the batch with
    /// [`RedisStoreError::PublishRefused`](crate::RedisStoreError::PublishRefused).
    ///
    /// Changing `count` changes the shards' checkpoint and lease names: a shard without a
    /// checkpoint starts from the unsharded relay's checkpoint (or the start of the log), and
    /// whatever it re-sends Redis skips.
    #[must_use]
    pub fn with_shards(mut self, count: u32) -> Self {
        self.shards = count.max(1);
        self
    }

    /// Publishes only shard `index` (counted from 0) of [`with_shards`](Self::with_shards),
    /// under that shard's lease: for deployments that give each process its shard. An index
    /// not below the shard count is taken modulo the count.
    #[must_use]
    pub fn with_shard(mut self, index: u32) -> Self {
        self.shard = Some(index);
        self
    }

    /// The number of shards.
    #[must_use]
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Events per batch.
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}
