//! The relay: publishes the event store's global log to Redis streams, each event exactly once.
//!
//! - `lease`: one instance per relay name publishes at a time;
//! - `publish`: a batch into Redis, one script call per stream key (`lua/publish.lua`);
//! - `order`: the check that the log keeps every stream in version order;
//! - `routing`: which stream keys an event goes to;
//! - `options`: [`RelayOptions`].

mod lease;
mod options;
mod order;
mod publish;
mod routing;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_core::{CheckpointStore, EventStore, LogPosition};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use options::RelayOptions;
pub use publish::Published;
pub use routing::{PerAggregateType, PerEventType, PerTenant, Router};

use crate::backoff::sleep_or_cancel;
use crate::connection::RedisConnection;
use crate::error::RedisStoreError;
use crate::keys::{self, Keys};
use order::StreamOrder;

/// Relays the global log of an [`EventStore`] to Redis streams.
///
/// Each event is added to the stream keys its [`Router`] picks (by default its tenant's
/// `es:{<tenant>}:events`) with the entry id `<transaction>-<position>` of its
/// [`LogPosition`]. Those ids sort like the log, so a batch re-sent after a crash is rejected
/// by Redis entry by entry: **each event appears exactly once per key, in log order**, whatever
/// point the relay dies at. The checkpoint (in the [`CheckpointStore`], under
/// [`relay_checkpoint`](crate::relay_checkpoint)) is saved only after Redis answered.
///
/// Never `DEL` a published stream (that resets its last id, and a replay would duplicate) and
/// run Redis with `maxmemory-policy noeviction`.
///
/// ```no_run
/// # use eventsource_core::{InMemoryCheckpointStore, InMemoryEventStore};
/// # use eventsource_redis::{RelayOptions, RedisRelay};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let conn = redis::Client::open("redis://127.0.0.1/")?.get_connection_manager().await?;
/// let store = InMemoryEventStore::new();
/// let relay = RedisRelay::new(
///     store.clone(),
///     InMemoryCheckpointStore::new(),
///     conn,
///     "main",
///     RelayOptions::default(),
/// );
/// let shutdown = CancellationToken::new();
/// let task = tokio::spawn(relay.run(shutdown.clone()));
/// // ... on SIGTERM:
/// shutdown.cancel();
/// task.await??;
/// # Ok(()) }
/// ```
pub struct RedisRelay<S, C> {
    store: S,
    checkpoints: C,
    conn: RedisConnection,
    name: String,
    router: Arc<dyn Router>,
    custom_router: bool,
    options: RelayOptions,
    lease_key: String,
    checkpoint: Option<LogPosition>,
    loaded: bool,
    order: StreamOrder,
}

impl<S, C> std::fmt::Debug for RedisRelay<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRelay")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> RedisRelay<S, C> {
    /// A relay called `name` (its checkpoint and lease are named after it), routing per
    /// tenant under the `es` prefix, publishing through `conn`: a single node's
    /// [`ConnectionManager`](redis::aio::ConnectionManager), a cluster's
    /// [`ClusterConnection`](redis::cluster_async::ClusterConnection) or a [`RedisConnection`].
    pub fn new(
        store: S,
        checkpoints: C,
        conn: impl Into<RedisConnection>,
        name: impl Into<String>,
        options: RelayOptions,
    ) -> Self {
        let name = name.into();
        let keys = Keys::default();
        let order = StreamOrder::new(options.filter.since.is_none());
        Self {
            store,
            checkpoints,
            conn: conn.into(),
            lease_key: keys.relay_lease(&name),
            router: Arc::new(PerTenant::new(keys)),
            custom_router: false,
            name,
            options,
            checkpoint: None,
            loaded: false,
            order,
        }
    }

    /// Routes events with `router` instead of one stream per tenant.
    #[must_use]
    pub fn with_router(mut self, router: impl Router + 'static) -> Self {
        self.router = Arc::new(router);
        self.custom_router = true;
        self
    }

    /// Puts the lease key, and the per-tenant streams unless a custom router is set, under
    /// `keys`' prefix.
    #[must_use]
    pub fn with_keys(mut self, keys: &Keys) -> Self {
        self.lease_key = keys.relay_lease(&self.name);
        if !self.custom_router {
            self.router = Arc::new(PerTenant::new(keys.clone()));
        }
        self
    }

    /// Publishes one batch: reads up to `batch_size` events after the checkpoint, adds them to
    /// their streams and then saves the checkpoint. Does not take the lease.
    ///
    /// Before it publishes anything, it checks that the batch continues every stream it
    /// touches at the next version (for each stream read since the checkpoint was loaded, up
    /// to a hundred thousand streams); otherwise it refuses the batch with
    /// [`RedisStoreError::OutOfOrder`], which is not retryable, and publishes none of it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point loses nothing and duplicates nothing: the checkpoint
    /// has not moved, and the next call re-sends, which Redis rejects per entry.
    pub async fn publish_batch(&mut self) -> Result<Published, RedisStoreError> {
        if !self.loaded {
            self.order.forget();
            self.checkpoint = self
                .checkpoints
                .load(&keys::relay_checkpoint(&self.name))
                .await?;
            self.loaded = true;
        }
        let after = self.checkpoint.unwrap_or(LogPosition::START);
        let events = self
            .store
            .read_all(after, self.options.batch_size, &self.options.filter)
            .await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(Published {
                checkpoint: self.checkpoint,
                ..Published::default()
            });
        };
        if self.options.refuse_out_of_order {
            self.order.check(&events)?;
        } else {
            self.order.warn(&events);
        }
        let span = tracing::debug_span!(
            "eventsource.redis.publish",
            relay = %self.name,
            events = events.len(),
            from = %after,
            to = %last,
        );
        let added = publish::publish(&self.conn, self.router.as_ref(), &events)
            .instrument(span)
            .await?;
        if let Some((wanted, timeout)) = self.options.replicas {
            self.wait_for_replicas(wanted, timeout).await?;
        }
        self.checkpoints
            .save(&keys::relay_checkpoint(&self.name), self.checkpoint, last)
            .await
            .inspect_err(|_| self.loaded = false)?;
        self.checkpoint = Some(last);
        self.order.record(&events);
        Ok(Published {
            events: events.len(),
            added: added.added,
            skipped: added.skipped,
            checkpoint: self.checkpoint,
        })
    }

    /// Publishes until the log is exhausted; returns the number of events read.
    pub async fn catch_up(&mut self) -> Result<u64, RedisStoreError> {
        let mut total = 0u64;
        loop {
            let published = self.publish_batch().await?;
            if published.events == 0 {
                return Ok(total);
            }
            total += published.events as u64;
        }
    }

    /// Runs until `shutdown` is cancelled: waits for the lease, then tails the log, publishing
    /// batches and renewing the lease. Transient failures (Redis down, store unavailable) are
    /// retried with backoff; the lease is released on shutdown.
    ///
    /// # Errors
    ///
    /// Non-transient failures: Redis refusing an entry for another reason than a re-send, a
    /// corrupt store.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RedisStoreError> {
        let notify = self.store.append_notify();
        let ttl = self.options.lease_ttl;
        let mut renewed: Option<Instant> = None;
        let mut idle = Duration::ZERO;
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            // Lease: held, renewed every third of its life.
            if renewed.is_none_or(|at| at.elapsed() >= ttl / 3) {
                match self.take_lease().await {
                    Ok(true) => renewed = Some(Instant::now()),
                    Ok(false) => {
                        if renewed.is_some() {
                            tracing::warn!(relay = %self.name, "relay lease lost to another instance");
                        }
                        renewed = None;
                        self.loaded = false;
                        sleep_or_cancel(&shutdown, ttl / 3).await;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        self.back_off(&shutdown, e, failures).await?;
                        continue;
                    }
                }
            }
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            match self.publish_batch().await {
                Ok(published) if published.events >= self.options.batch_size => {
                    failures = 0;
                    idle = Duration::ZERO;
                }
                Ok(published) => {
                    failures = 0;
                    if published.events > 0 {
                        idle = Duration::ZERO;
                        continue;
                    }
                    idle = (idle * 2)
                        .max(Duration::from_millis(1))
                        .min(self.options.max_idle_poll);
                    let wait = idle.min(ttl / 3);
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                        () = async {
                            match notified.as_mut().as_pin_mut() {
                                Some(n) => n.await,
                                None => std::future::pending().await,
                            }
                        } => { idle = Duration::ZERO; }
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.back_off(&shutdown, e, failures).await?;
                }
            }
        }
        if renewed.is_some() {
            lease::release(&mut self.conn, &self.lease_key, &self.options.instance_id).await;
        }
        Ok(())
    }

    /// `WAIT`s for `wanted` replicas to hold everything sent so far on the connection (the
    /// batch's scripts went through clones of it, which share its sockets).
    async fn wait_for_replicas(
        &mut self,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), RedisStoreError> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let acknowledged: u64 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(ms)
            .query_async(&mut self.conn)
            .await?;
        if acknowledged < u64::from(wanted) {
            return Err(RedisStoreError::NotReplicated {
                wanted,
                acknowledged,
            });
        }
        Ok(())
    }

    async fn take_lease(&mut self) -> Result<bool, RedisStoreError> {
        Ok(lease::take(
            &mut self.conn,
            &self.lease_key,
            &self.options.instance_id,
            self.options.lease_ttl,
        )
        .await?)
    }

    async fn back_off(
        &mut self,
        shutdown: &CancellationToken,
        error: RedisStoreError,
        failures: u32,
    ) -> Result<(), RedisStoreError> {
        if !error.is_retryable() {
            tracing::error!(relay = %self.name, error = %error, "relay stopped");
            return Err(error);
        }
        // Whatever happened, re-read the checkpoint before the next batch.
        self.loaded = false;
        let delay = self.options.error_backoff.delay(failures);
        tracing::warn!(relay = %self.name, error = %error, ?delay, "relay batch failed; retrying");
        sleep_or_cancel(shutdown, delay).await;
        Ok(())
    }
}
