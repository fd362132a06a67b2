//! The relay: publishes the event store's global log to Redis streams, each event exactly once.
//!
//! - `lease`: one instance per relay name publishes at a time;
//! - `publish`: a batch into Redis, one script call per stream key (`lua/publish.lua`);
//! - `page`: a batch of one shard as read from the store, possibly read ahead;
//! - `order`: the check that the log keeps every stream in version order;
//! - `routing`: which stream keys an event goes to;
//! - `shards`: each shard's own state (the partition, [`shard_of`], is eventsource-core's);
//! - `registry`: the tenant registry runners discover new tenants from;
//! - `options`: [`RelayOptions`].

mod lease;
mod options;
mod order;
mod page;
mod publish;
mod registry;
mod routing;
mod shards;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{CheckpointStore, EventStore, LogPosition, Shard};
use page::Page;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use eventsource_core::shard_of;
pub use options::RelayOptions;
pub use publish::Published;
pub use registry::registered_tenants;
pub use routing::{PerAggregateType, PerEventType, PerTenant, Router};

use crate::backoff::sleep_or_cancel;
use crate::connection::RedisConnection;
use crate::error::RedisStoreError;
use crate::keys::{self, Keys};
use shards::ShardState;

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
    keys: Keys,
    /// The shards this instance publishes: one, or all of them for "any shard it can get".
    shards: Vec<ShardState>,
}

impl<S, C> std::fmt::Debug for RedisRelay<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRelay")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> RedisRelay<S, C> {
    /// A relay called `name` (its checkpoint and lease are named after it), routing per
    /// tenant under the `es` prefix, publishing through `conn`: a single node's
    /// [`ConnectionManager`](redis::aio::ConnectionManager), a cluster's
    /// [`ClusterConnection`](redis::cluster_async::ClusterConnection) or a [`RedisConnection`].
    ///
    /// With [`RelayOptions::with_shards`] it publishes one shard of the tenants
    /// ([`RelayOptions::with_shard`]) or every shard whose lease it can get.
    pub fn new(
        store: S,
        checkpoints: C,
        conn: impl Into<RedisConnection>,
        name: impl Into<String>,
        options: RelayOptions,
    ) -> Self {
        let name = name.into();
        let keys = Keys::default();
        let mut relay = Self {
            store,
            checkpoints,
            conn: conn.into(),
            router: Arc::new(PerTenant::new(keys.clone())),
            custom_router: false,
            keys,
            name,
            options,
            shards: Vec::new(),
        };
        relay.shards = relay.shard_states();
        relay
    }

    fn shard_states(&self) -> Vec<ShardState> {
        let count = self.options.shards;
        let indexes: Vec<u32> = match self.options.shard {
            Some(index) => vec![index % count],
            None => (0..count).collect(),
        };
        indexes
            .into_iter()
            .map(|index| {
                ShardState::new(
                    Shard::new(index, count),
                    &self.options.filter,
                    self.keys.relay_shard_lease(&self.name, index, count),
                    keys::relay_shard_checkpoint(&self.name, index, count),
                )
            })
            .collect()
    }

    /// Routes events with `router` instead of one stream per tenant.
    #[must_use]
    pub fn with_router(mut self, router: impl Router + 'static) -> Self {
        self.router = Arc::new(router);
        self.custom_router = true;
        self
    }

    /// Puts the lease keys and the tenant registry, and the per-tenant streams unless a custom
    /// router is set, under `keys`' prefix.
    #[must_use]
    pub fn with_keys(mut self, keys: &Keys) -> Self {
        self.keys = keys.clone();
        self.shards = self.shard_states();
        if !self.custom_router {
            self.router = Arc::new(PerTenant::new(keys.clone()));
        }
        self
    }

    /// Publishes one batch per shard of this instance: reads up to `batch_size` events after
    /// the shard's checkpoint, adds its tenants' events to their streams (after recording new
    /// tenants in the [tenant registry](Keys::tenant_registry)) and then saves the checkpoint.
    /// Does not take the lease. With several shards, the sums, and the lowest checkpoint.
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
        let mut shards = std::mem::take(&mut self.shards);
        let mut total: Option<Published> = None;
        let mut result = Ok(());
        for shard in &mut shards {
            match self.publish_shard(shard).await {
                Ok(p) => {
                    total = Some(match total {
                        None => p,
                        Some(t) => Published {
                            events: t.events + p.events,
                            added: t.added + p.added,
                            skipped: t.skipped + p.skipped,
                            checkpoint: t.checkpoint.min(p.checkpoint),
                        },
                    });
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.shards = shards;
        result.map(|()| total.unwrap_or_default())
    }

    /// One batch of `shard`.
    async fn publish_shard(&self, shard: &mut ShardState) -> Result<Published, RedisStoreError> {
        if !shard.loaded {
            shard.order.forget();
            // After an error or a lost lease, the registry may have lost what this shard
            // registered (a failover before the write replicated): register its tenants again.
            shard.forget_registered();
            shard.stored = self.checkpoints.load(&shard.checkpoint_name).await?;
            shard.checkpoint = shard.stored;
            if shard.stored.is_none() && self.options.shards > 1 {
                // Everything the unsharded relay checkpointed is published: start there.
                shard.checkpoint = self
                    .checkpoints
                    .load(&keys::relay_checkpoint(&self.name))
                    .await?;
            }
            shard.loaded = true;
            shard.ahead = None;
        }
        let after = shard.checkpoint.unwrap_or(LogPosition::START);
        let count = self.options.shards;
        let mut page = match shard.ahead.take() {
            Some(page) if page.after == after => page,
            _ => {
                // A shard reads only its tenants' events (the store filters them,
                // `LogFilter::shard`), so at the log's end it asks where the log ends first:
                // what it then reads covers everything up to there, and its checkpoint can
                // move past the other shards' events instead of each poll starting behind
                // all of them.
                let head = if count > 1 && shard.caught_up {
                    self.store.log_head().await?
                } else {
                    None
                };
                let events = self
                    .store
                    .read_all(after, self.options.batch_size, &shard.filter)
                    .await?;
                Page::new(after, events, head, self.options.batch_size, shard.shard)
            }
        };
        shard.caught_up = page.caught_up;
        let Some(last) = page.last else {
            return Ok(Published {
                checkpoint: shard.checkpoint,
                ..Published::default()
            });
        };
        if self.options.refuse_out_of_order {
            shard.order.check(&page.events)?;
        } else {
            shard.order.warn(&page.events);
        }
        let calls = match page.calls.take() {
            Some(calls) => calls,
            None => publish::prepare(self.router.as_ref(), &page.events, count > 1)?,
        };
        let span = tracing::debug_span!(
            "eventsource.redis.publish",
            relay = %self.name,
            shard = shard.index,
            events = page.events.len(),
            from = %after,
            to = %last,
        );
        let tenants = shard.unregistered(&page.events);
        let send = async {
            if !tenants.is_empty() {
                registry::register(&self.conn, &self.keys.tenant_registry(), &tenants).await?;
            }
            publish::send(&self.conn, calls).await
        }
        .instrument(span);
        // Catching up, the next page is read and its calls prepared while Redis runs this
        // one (nothing of it is sent before this page's answer and checkpoint).
        let (added, ahead) = if page.caught_up {
            (send.await?, None)
        } else {
            let (filter, of) = (shard.filter.clone(), shard.shard);
            let ahead = async {
                let events = self
                    .store
                    .read_all(last, self.options.batch_size, &filter)
                    .await
                    .ok()?;
                let mut next = Page::new(last, events, None, self.options.batch_size, of);
                next.calls = publish::prepare(self.router.as_ref(), &next.events, count > 1).ok();
                Some(next)
            };
            let (added, ahead) = tokio::join!(send, ahead);
            (added?, ahead)
        };
        shard.registered(tenants);
        if let Some((wanted, timeout)) = self.options.replicas.filter(|_| !page.events.is_empty()) {
            self.wait_for_replicas(wanted, timeout).await?;
        }
        self.checkpoints
            .save(&shard.checkpoint_name, shard.stored, last)
            .await
            .inspect_err(|_| shard.loaded = false)?;
        shard.checkpoint = Some(last);
        shard.stored = Some(last);
        shard.order.record(&page.events);
        shard.ahead = ahead;
        Ok(Published {
            events: page.read,
            added: added.added,
            skipped: added.skipped,
            checkpoint: shard.checkpoint,
        })
    }

    /// Publishes until the log is exhausted; returns the number of events read (with several
    /// shards, summed over them: each reads its own tenants' events, or the whole log from a
    /// store that does not filter by [`LogFilter::shard`](eventsource_core::LogFilter::shard)).
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

    /// Runs until `shutdown` is cancelled: for each shard of this instance (one, or with
    /// [`RelayOptions::with_shards`] and no [`RelayOptions::with_shard`] all of them,
    /// concurrently in this task) waits for the shard's lease, then tails the log, publishing
    /// batches and renewing the lease. Transient failures (Redis down, store unavailable) are
    /// retried with backoff; leases are released on shutdown.
    ///
    /// Running for any shard, an instance tries first the shard its instance id hashes to
    /// ([`shard_of`] the id), the others a third of a lease later, and the more shards it
    /// holds the longer it waits before trying a free one: instances started together whose
    /// ids hash to different shards take one each, and a shard whose relay died is taken
    /// over, when its lease expires, preferably by an instance holding fewer shards. Nothing
    /// bounds how many shards one instance holds.
    ///
    /// # Errors
    ///
    /// Non-transient failures: Redis refusing an entry for another reason than a re-send, a
    /// corrupt store. One shard failing so stops the others.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RedisStoreError> {
        let shards = std::mem::take(&mut self.shards);
        let pool = shards.len() > 1;
        let home = shard_of(
            &eventsource_core::TenantId::new(self.options.instance_id.as_str()),
            self.options.shards,
        );
        let held = AtomicUsize::new(0);
        let stop = shutdown.child_token();
        let this = &self;
        let loops = shards.into_iter().map(|mut shard| {
            let (stop, held) = (&stop, &held);
            let first_wait = (pool && shard.index != home).then_some(this.options.lease_ttl / 3);
            async move {
                let result = this
                    .run_shard(&mut shard, stop, held, pool, first_wait)
                    .await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            }
        });
        let mut result = Ok(());
        for r in futures::future::join_all(loops).await {
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// The lease and publish loop of one shard.
    async fn run_shard(
        &self,
        shard: &mut ShardState,
        shutdown: &CancellationToken,
        held: &AtomicUsize,
        pool: bool,
        first_wait: Option<Duration>,
    ) -> Result<(), RedisStoreError> {
        let notify = self.store.append_notify();
        let ttl = self.options.lease_ttl;
        let mut conn = self.conn.clone();
        let mut renewed: Option<Instant> = None;
        let mut idle = Duration::ZERO;
        let mut failures = 0u32;
        if let Some(wait) = first_wait {
            sleep_or_cancel(shutdown, wait).await;
        }
        while !shutdown.is_cancelled() {
            // Lease: held, renewed every third of its life.
            if renewed.is_none_or(|at| at.elapsed() >= ttl / 3) {
                if pool && renewed.is_none() {
                    // Instances holding fewer shards get to a free one first.
                    let others = u32::try_from(held.load(Ordering::SeqCst)).unwrap_or(u32::MAX);
                    if others > 0 {
                        sleep_or_cancel(shutdown, ttl / 3 * others).await;
                        if shutdown.is_cancelled() {
                            break;
                        }
                    }
                }
                match lease::take(&mut conn, &shard.lease_key, &self.options.instance_id, ttl).await
                {
                    Ok(true) => {
                        if renewed.is_none() {
                            held.fetch_add(1, Ordering::SeqCst);
                            tracing::debug!(relay = %self.name, shard = shard.index, "relay shard lease taken");
                        }
                        renewed = Some(Instant::now());
                    }
                    Ok(false) => {
                        if renewed.is_some() {
                            held.fetch_sub(1, Ordering::SeqCst);
                            tracing::warn!(relay = %self.name, shard = shard.index, "relay lease lost to another instance");
                        }
                        renewed = None;
                        shard.loaded = false;
                        sleep_or_cancel(shutdown, ttl / 3).await;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        self.back_off(shard, shutdown, e.into(), failures).await?;
                        continue;
                    }
                }
            }
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            match self.publish_shard(shard).await {
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
                    self.back_off(shard, shutdown, e, failures).await?;
                }
            }
        }
        if renewed.is_some() {
            held.fetch_sub(1, Ordering::SeqCst);
            lease::release(&mut conn, &shard.lease_key, &self.options.instance_id).await;
        }
        Ok(())
    }

    /// `WAIT`s for `wanted` replicas to hold everything sent so far on the connection (the
    /// batch's scripts went through clones of it, which share its sockets).
    async fn wait_for_replicas(
        &self,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), RedisStoreError> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let acknowledged: u64 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(ms)
            .query_async(&mut self.conn.clone())
            .await?;
        if acknowledged < u64::from(wanted) {
            return Err(RedisStoreError::NotReplicated {
                wanted,
                acknowledged,
            });
        }
        Ok(())
    }

    async fn back_off(
        &self,
        shard: &mut ShardState,
        shutdown: &CancellationToken,
        error: RedisStoreError,
        failures: u32,
    ) -> Result<(), RedisStoreError> {
        if !error.is_retryable() {
            tracing::error!(relay = %self.name, error = %error, "relay stopped");
            return Err(error);
        }
        // Whatever happened, re-read the checkpoint before the next batch.
        shard.loaded = false;
        let delay = self.options.error_backoff.delay(failures);
        tracing::warn!(relay = %self.name, error = %error, ?delay, "relay batch failed; retrying");
        sleep_or_cancel(shutdown, delay).await;
        Ok(())
    }
}
