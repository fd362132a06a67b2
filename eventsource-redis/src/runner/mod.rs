//! Consumer-group runners: deliver stream entries to an [`EventHandler`], at least once.
//!
//! - `delivery`: reading entries (own pending, reclaimed, new), sorting them into lanes, acks;
//! - `lanes`: one aggregate stream's entries in order, the handler's retries;
//! - `dead_letter`: the atomic move of a given-up entry to its dead-letter stream;
//! - `refetch`: entries deleted while pending, found again in the event store;
//! - `discovery`: new tenants' streams picked up from the relay's tenant registry;
//! - `counters`, `group` (where a group starts, idempotent creation), `options`;
//! - `projection`: read models with exactly-once effects on top of a runner.

mod counters;
mod dead_letter;
mod delivery;
mod discovery;
mod group;
mod lanes;
mod options;
mod projection;
mod refetch;

use std::collections::HashSet;
use std::hash::RandomState;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_core::{EventHandler, EventStore, TenantId};
use tokio_util::sync::CancellationToken;

pub use counters::RunnerCounters;
pub use discovery::TenantDiscovery;
pub use group::{StartId, ensure_group};
pub use options::RunnerOptions;
pub use projection::{Applied, InMemoryProjection, ProjectionHandler, TransactionalProjection};

use crate::backoff::sleep_or_cancel;
use crate::connection::{RedisClient, RedisConnection, same_slot, slot_groups};
use crate::error::{RedisStoreError, RunnerError, is_no_group};
use crate::keys;
use crate::trim::Trimmer;
use group::create_group;
use refetch::Refetch;

/// Runs an [`EventHandler`] as a consumer of a Redis consumer group.
///
/// # Delivery guarantee
///
/// **At-least-once**: an entry is acknowledged only after its handler returned `Ok`, so a crash
/// between the two re-delivers it (to this consumer on restart, or to another after the idle
/// threshold). Handlers get exactly-once *effects* by deduplicating on
/// [`RecordedEvent::position`](eventsource_core::RecordedEvent::position) or
/// [`RecordedEvent::event_id`](eventsource_core::RecordedEvent::event_id) in the same
/// transaction as the effect (see [`TransactionalProjection`]). See [`RunnerOptions`] for the
/// retry, reclaim and dead-letter policy.
///
/// The runner reads each stream key and its requeue stream
/// ([`requeue_stream`](crate::requeue_stream)), creates its group on both if missing (where
/// [`with_start_id`](Self::with_start_id) says), and handles entries of one aggregate stream
/// one after the other, in order; different aggregate streams run concurrently up to
/// [`RunnerOptions::with_concurrency`]. When a handler gives up on an entry, later entries of
/// the same aggregate stream in that batch are left pending too, so they are retried after it.
///
/// Blocking reads use their own connection, opened from the `client` with a response timeout
/// longer than the block (at most [`RunnerOptions::with_max_blocking_reads`] of them);
/// everything else goes through the shared connection. On a Redis
/// Cluster the keys are read per hash slot, see [`run`](Self::run).
///
/// ```no_run
/// # use eventsource_core::{EventHandler, RecordedEvent};
/// # use eventsource_redis::{ConsumerRunner, Keys, RunnerOptions};
/// # use tokio_util::sync::CancellationToken;
/// struct Printer;
/// impl EventHandler for Printer {
///     type Error = std::convert::Infallible;
///     async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
///         tracing::info!(event_type = %event.event_type, "got it");
///         Ok(())
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let conn = client.get_connection_manager().await?;
/// let stream = Keys::default().tenant_stream(&"acme".into());
/// let runner = ConsumerRunner::new(conn, client, [stream], "printer", "printer-1", Printer, RunnerOptions::default());
/// let shutdown = CancellationToken::new();
/// runner.run(shutdown).await?;
/// # Ok(()) }
/// ```
pub struct ConsumerRunner<H> {
    conn: RedisConnection,
    client: RedisClient,
    /// The event stream keys.
    streams: Vec<String>,
    /// Read keys whose group starts at the beginning whatever `start` says (discovered).
    from_beginning: HashSet<String>,
    discovery: Option<TenantDiscovery>,
    /// Every key read: the event streams, then their requeue streams.
    read_keys: Vec<String>,
    /// Per read key, its dead-letter stream.
    dead_letter_keys: Vec<String>,
    /// How many of `read_keys` are event streams (whose entry ids are log positions).
    event_streams: usize,
    group: String,
    consumer: String,
    start: StartId,
    handler: H,
    refetch: Option<Arc<dyn Refetch>>,
    options: RunnerOptions,
    counters: Arc<RunnerCounters>,
    hasher: RandomState,
    /// How entries become events: [`codec::decode`](crate::codec::decode) unless
    /// [`with_decoder`](Self::with_decoder) says otherwise.
    decode: Decoder,
    /// When the next trim pass is due: kept across restarts of the read loops (tenant
    /// discovery restarts them), so frequent restarts cannot postpone trimming for good.
    trim_due: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Turns an entry's fields into the event handed to the handler.
pub(crate) type Decoder = fn(
    &std::collections::HashMap<String, redis::Value>,
) -> Result<eventsource_core::RecordedEvent, crate::error::CodecError>;

impl<H> std::fmt::Debug for ConsumerRunner<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerRunner")
            .field("streams", &self.read_keys)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<H: EventHandler> ConsumerRunner<H> {
    /// A runner for `group` reading `streams` as consumer `consumer`.
    ///
    /// Give each process a stable consumer name (host name, pod name): a restarted consumer
    /// then finds its own pending entries at once instead of waiting for the idle threshold.
    ///
    /// `conn` carries acks, scripts and reclaims; `client` opens the connection of the
    /// blocking reads. Both are of the same topology: a single node's `ConnectionManager` and
    /// `redis::Client`, a cluster's `ClusterConnection` and `ClusterClient`, or this crate's
    /// [`RedisConnection`] and [`RedisClient`].
    pub fn new(
        conn: impl Into<RedisConnection>,
        client: impl Into<RedisClient>,
        streams: impl IntoIterator<Item = impl Into<String>>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        handler: H,
        options: RunnerOptions,
    ) -> Self {
        let mut runner = Self {
            conn: conn.into(),
            client: client.into(),
            streams: streams.into_iter().map(Into::into).collect(),
            from_beginning: HashSet::new(),
            discovery: None,
            event_streams: 0,
            read_keys: Vec::new(),
            dead_letter_keys: Vec::new(),
            group: group.into(),
            consumer: consumer.into(),
            start: StartId::Beginning,
            handler,
            refetch: None,
            options,
            counters: Arc::default(),
            hasher: RandomState::new(),
            decode: crate::codec::decode,
            trim_due: std::sync::Mutex::new(None),
        };
        runner.derive_keys();
        runner
    }

    /// Derives the read keys (the streams, then their requeue streams) and their dead-letter
    /// streams from `streams`.
    fn derive_keys(&mut self) {
        let group = &self.group;
        let mut read_keys = self.streams.clone();
        read_keys.extend(self.streams.iter().map(|s| keys::requeue_stream(s, group)));
        let mut dead_letter_keys: Vec<String> = self
            .streams
            .iter()
            .map(|s| keys::dead_letter_stream(s, group))
            .collect();
        dead_letter_keys.extend_from_within(..);
        self.event_streams = self.streams.len();
        self.read_keys = read_keys;
        self.dead_letter_keys = dead_letter_keys;
    }

    /// Also reads the streams of the tenants `discovery` finds in the relay's tenant
    /// registry, those there at start and those that appear while the runner runs, without a
    /// restart (see [`TenantDiscovery`]). The streams given to [`new`](Self::new) are read too
    /// (none is fine).
    ///
    /// A group on a tenant's stream found at start begins where
    /// [`with_start_id`](Self::with_start_id) says; on a stream found later, at its beginning.
    /// When new tenants appear, the read loops stop as on shutdown (entries being handled are
    /// finished and acknowledged) and start again with the new keys, on a cluster with one
    /// more loop per new slot.
    #[must_use]
    pub fn with_discovery(mut self, discovery: TenantDiscovery) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Refetches entries deleted while pending from `store`, by the log position in their id.
    /// Without a store such entries are dead-lettered with the reason.
    #[must_use]
    pub fn with_store<S: EventStore + 'static>(mut self, store: S) -> Self {
        self.refetch = Some(Arc::new(store));
        self
    }

    /// Decodes entries with `decode` instead of [`codec::decode`](crate::codec::decode): the
    /// bus hands its handler records it parses later (see `bus::entry::decode_deferred`).
    #[must_use]
    pub(crate) fn with_decoder(mut self, decode: Decoder) -> Self {
        self.decode = decode;
        self
    }

    /// Where a group this runner creates starts reading (default [`StartId::Beginning`], the
    /// whole stream); a group that exists keeps its position.
    #[must_use]
    pub fn with_start_id(mut self, start: StartId) -> Self {
        self.start = start;
        self
    }

    /// The runner's counters; clone the `Arc` before [`run`](Self::run) to watch them.
    #[must_use]
    pub fn counters(&self) -> Arc<RunnerCounters> {
        Arc::clone(&self.counters)
    }

    /// The handler.
    #[must_use]
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Creates the group on every key it reads, if missing.
    ///
    /// # Errors
    ///
    /// [`RedisStoreError::Redis`] when Redis fails or refuses (a key holding something other
    /// than a stream, a [`StartId::After`] id that does not parse).
    pub async fn ensure_groups(&mut self) -> Result<(), RedisStoreError> {
        let mut conn = self.conn.clone();
        for key in &self.read_keys {
            create_group(&mut conn, key, &self.group, self.start_of(key)).await?;
        }
        Ok(())
    }

    /// Runs until `shutdown` is cancelled: creates the groups, drains this consumer's pending
    /// entries, then reads new ones, reclaiming idle entries periodically. Transient Redis
    /// failures are retried with backoff (the connections reconnect).
    ///
    /// On a cluster the keys are read per hash slot (one `XREADGROUP` may only name keys of
    /// one slot): one read loop per slot, all in this task, each with its own blocking
    /// connection, so a slow or failing node holds up only the loop of its own slots; past
    /// [`RunnerOptions::with_max_blocking_reads`] (default 16) slots, the further loops poll
    /// through the shared connection instead (see [`RunnerOptions`]). The
    /// handler's concurrency ([`RunnerOptions::with_concurrency`]) applies per loop. A
    /// non-retryable error in one loop stops them all. Beside the loops, the streams are
    /// trimmed on a schedule unless [`RunnerOptions::without_trim`] turned it off.
    ///
    /// # Errors
    ///
    /// [`RunnerError::NoStreams`] without keys (and without
    /// [`with_discovery`](Self::with_discovery), which waits for tenants); on a cluster,
    /// [`RunnerError::SplitSlots`] for a stream key without a hash tag; otherwise the first
    /// non-retryable failure.
    ///
    /// On shutdown the entries being handled are finished and acknowledged; the rest of the
    /// batch stays pending for this consumer's next start.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunnerError> {
        if let Some(discovery) = self.discovery.take() {
            return self.run_discovering(&discovery, &shutdown).await;
        }
        if self.read_keys.is_empty() {
            return Err(RunnerError::NoStreams);
        }
        self.run_loops(&shutdown).await
    }

    /// Where the group on `key` starts if this runner creates it.
    fn start_of(&self, key: &str) -> &StartId {
        if self.from_beginning.contains(key) {
            &StartId::Beginning
        } else {
            &self.start
        }
    }

    /// [`run`](Self::run) with tenant discovery: read loops over the keys known so far, until
    /// the registry shows new tenants; then again with their keys.
    async fn run_discovering(
        mut self,
        discovery: &TenantDiscovery,
        shutdown: &CancellationToken,
    ) -> Result<(), RunnerError> {
        let mut known: HashSet<TenantId> = HashSet::new();
        let mut size: Option<u64> = None;
        let mut conn = self.conn.clone();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let found = match discovery.new_tenants(&mut conn, &known).await {
                Ok(found) => found,
                Err(e) => {
                    failures += 1;
                    let delay = self.options.error_backoff.delay(failures);
                    tracing::warn!(group = %self.group, error = %e, ?delay, "tenant registry not read; retrying");
                    sleep_or_cancel(shutdown, delay).await;
                    continue;
                }
            };
            failures = 0;
            let first = size.is_none();
            size = Some(found.0);
            for tenant in found.1 {
                let stream = discovery.stream(&tenant);
                known.insert(tenant);
                if self.streams.contains(&stream) {
                    continue;
                }
                if !first {
                    // Published before this runner saw the tenant: start at the beginning.
                    self.from_beginning
                        .insert(keys::requeue_stream(&stream, &self.group));
                    self.from_beginning.insert(stream.clone());
                }
                tracing::debug!(group = %self.group, %stream, "reading a discovered tenant's stream");
                self.streams.push(stream);
            }
            self.derive_keys();
            let generation = shutdown.child_token();
            let seen = size.unwrap_or(0);
            let loops = async {
                let result = if self.read_keys.is_empty() {
                    generation.cancelled().await;
                    Ok(())
                } else {
                    self.run_loops(&generation).await
                };
                generation.cancel();
                result
            };
            let watch = async {
                let mut conn = self.conn.clone();
                loop {
                    sleep_or_cancel(&generation, discovery.poll_interval()).await;
                    if generation.is_cancelled() {
                        return;
                    }
                    match discovery.size(&mut conn).await {
                        Ok(now) if now != seen => {
                            generation.cancel();
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(group = %self.group, error = %e, "tenant registry size not read");
                        }
                    }
                }
            };
            let (result, ()) = tokio::join!(loops, watch);
            result?;
        }
        Ok(())
    }

    /// One read loop per slot group of the read keys, until `shutdown`.
    async fn run_loops(&self, shutdown: &CancellationToken) -> Result<(), RunnerError> {
        if self.conn.is_cluster() {
            // A dead letter moves atomically (one script over the stream and its dead-letter
            // stream), so both must share a slot; found out here rather than at the first
            // poison entry.
            for (key, dead_letters) in self.read_keys.iter().zip(&self.dead_letter_keys) {
                if !same_slot(key, dead_letters) {
                    return Err(RunnerError::SplitSlots { key: key.clone() });
                }
            }
        }
        let stop = shutdown.child_token();
        let this = &self;
        // The first loops block on connections of their own, the rest poll: a runner over
        // thousands of slots must not open thousands of connections (ADR 0036).
        let max_blocking = self.options.max_blocking_reads;
        let loops = slot_groups(&self.read_keys, self.conn.is_cluster())
            .into_iter()
            .enumerate()
            .map(|(i, keys)| {
                let stop = &stop;
                async move {
                    let result = this.run_slot(&keys, stop, i < max_blocking).await;
                    if result.is_err() {
                        stop.cancel();
                    }
                    result
                }
            });
        // Trimming runs beside the loops, in this task, until they stop; its failures are
        // logged and retried at the next pass, never stopping the runner.
        let trim = async {
            let Some(options) = &self.options.trim else {
                return;
            };
            let trimmer = Trimmer::new(self.conn.clone(), self.read_keys.clone(), options.clone())
                .for_group(&self.group, Arc::clone(&self.counters.trim));
            loop {
                let due = *self
                    .trim_due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(|| tokio::time::Instant::now() + options.interval());
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = stop.cancelled() => return,
                }
                trimmer.trim_once().await;
                *self
                    .trim_due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(tokio::time::Instant::now() + options.interval());
            }
        };
        let (results, ()) = tokio::join!(futures::future::join_all(loops), trim);
        for result in results {
            result?;
        }
        Ok(())
    }

    /// The read loop of the read keys `keys` (indexes into `read_keys`), which one
    /// `XREADGROUP` may read together; it `blocks` on a connection of its own, or polls.
    async fn run_slot(
        &self,
        keys: &[usize],
        shutdown: &CancellationToken,
        blocks: bool,
    ) -> Result<(), RunnerError> {
        let mut failures = 0u32;
        let mut groups_ready = false;
        // A blocked `XREADGROUP` holds up every command queued behind it on a multiplexed
        // connection: blocking reads get a connection of their own, per loop.
        let mut blocking: Option<RedisConnection> = None;
        // Counts the connection while it is open, however the loop ends (dropped included).
        let mut _open: Option<OpenConnection<'_>> = None;
        // A polled loop's wait after a read that found nothing.
        let mut idle = Duration::ZERO;
        let mut pending: Option<Vec<String>> = None;
        let mut last_reclaim: Option<Instant> = None;
        let mut breaker = 0u32;
        while !shutdown.is_cancelled() {
            let result = async {
                if !groups_ready {
                    let mut conn = self.conn.clone();
                    for &key in keys {
                        let key = &self.read_keys[key];
                        create_group(&mut conn, key, &self.group, self.start_of(key)).await?;
                    }
                    groups_ready = true;
                    pending = Some(vec!["0".to_owned(); keys.len()]);
                }
                if blocks && blocking.is_none() {
                    let timeout = self.options.block_timeout + Duration::from_secs(5);
                    blocking = Some(self.client.connect_blocking(timeout).await?);
                    _open = Some(OpenConnection::count(&self.counters.blocking_connections));
                }
                let (successes, failed) = self
                    .step(
                        keys,
                        shutdown,
                        &mut pending,
                        &mut last_reclaim,
                        blocking.as_mut(),
                    )
                    .await?;
                Ok::<_, RunnerError>((successes, failed))
            }
            .await;
            match result {
                Ok((successes, failed)) => {
                    failures = 0;
                    if !blocks {
                        if successes + failed == 0 {
                            idle = (idle * 2)
                                .max(Duration::from_millis(1))
                                .min(self.options.block_timeout);
                            sleep_or_cancel(shutdown, idle).await;
                        } else {
                            idle = Duration::ZERO;
                        }
                    }
                    if failed > 0 {
                        // Entries that failed, and the later entries of their streams held back
                        // behind them, are still pending: handle them again, in order, before
                        // reading anything new, so a stream's order holds across batches.
                        pending = Some(vec!["0".to_owned(); keys.len()]);
                    }
                    if successes > 0 {
                        breaker = 0;
                    }
                    breaker += failed;
                    if breaker >= self.options.breaker_threshold {
                        tracing::warn!(
                            group = %self.group,
                            consumer = %self.consumer,
                            failed = breaker,
                            cooldown = ?self.options.breaker_cooldown,
                            "handler keeps failing; circuit breaker open"
                        );
                        sleep_or_cancel(shutdown, self.options.breaker_cooldown).await;
                        breaker = self.options.breaker_threshold - 1;
                    }
                }
                Err(RunnerError::Redis(e)) if is_no_group(&e) => {
                    tracing::warn!(group = %self.group, "consumer group missing; recreating it");
                    groups_ready = false;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    let delay = self.options.error_backoff.delay(failures);
                    tracing::warn!(group = %self.group, error = %e, ?delay, "runner step failed; retrying");
                    sleep_or_cancel(shutdown, delay).await;
                }
                Err(e) => {
                    tracing::error!(group = %self.group, error = %e, "runner stopped");
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// A blocking-read connection counted in [`RunnerCounters::blocking_connections`] until
/// dropped.
struct OpenConnection<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> OpenConnection<'a> {
    fn count(counter: &'a std::sync::atomic::AtomicU64) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
