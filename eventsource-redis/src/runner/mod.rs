//! Consumer-group runners: deliver stream entries to an [`EventHandler`], at least once.
//!
//! - `delivery`: reading entries (own pending, reclaimed, new), sorting them into lanes, acks;
//! - `lanes`: one aggregate stream's entries in order, the handler's retries;
//! - `dead_letter`: the atomic move of a given-up entry to its dead-letter stream;
//! - `refetch`: entries deleted while pending, found again in the event store;
//! - `counters`, `group` (where a group starts, idempotent creation), `options`;
//! - `projection`: read models with exactly-once effects on top of a runner.

mod counters;
mod dead_letter;
mod delivery;
mod group;
mod lanes;
mod options;
mod projection;
mod refetch;

use std::hash::RandomState;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_core::{EventHandler, EventStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

pub use counters::RunnerCounters;
pub use group::{StartId, ensure_group};
pub use options::RunnerOptions;
pub use projection::{Applied, InMemoryProjection, ProjectionHandler, TransactionalProjection};

use crate::backoff::sleep_or_cancel;
use crate::error::{RedisStoreError, RunnerError, is_no_group};
use crate::keys;
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
/// longer than the block; everything else goes through the shared [`ConnectionManager`].
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
    conn: ConnectionManager,
    client: redis::Client,
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
    pub fn new(
        conn: ConnectionManager,
        client: redis::Client,
        streams: impl IntoIterator<Item = impl Into<String>>,
        group: impl Into<String>,
        consumer: impl Into<String>,
        handler: H,
        options: RunnerOptions,
    ) -> Self {
        let group = group.into();
        let streams: Vec<String> = streams.into_iter().map(Into::into).collect();
        let mut read_keys = streams.clone();
        read_keys.extend(streams.iter().map(|s| keys::requeue_stream(s, &group)));
        let mut dead_letter_keys: Vec<String> = streams
            .iter()
            .map(|s| keys::dead_letter_stream(s, &group))
            .collect();
        dead_letter_keys.extend_from_within(..);
        Self {
            conn,
            client,
            event_streams: streams.len(),
            read_keys,
            dead_letter_keys,
            group,
            consumer: consumer.into(),
            start: StartId::Beginning,
            handler,
            refetch: None,
            options,
            counters: Arc::default(),
            hasher: RandomState::new(),
            decode: crate::codec::decode,
        }
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
        for key in &self.read_keys {
            create_group(&mut self.conn, key, &self.group, &self.start).await?;
        }
        Ok(())
    }

    /// Runs until `shutdown` is cancelled: creates the groups, drains this consumer's pending
    /// entries, then reads new ones, reclaiming idle entries periodically. Transient Redis
    /// failures are retried with backoff (the connection manager reconnects).
    ///
    /// On shutdown the entries being handled are finished and acknowledged; the rest of the
    /// batch stays pending for this consumer's next start.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunnerError> {
        if self.read_keys.is_empty() {
            return Err(RunnerError::NoStreams);
        }
        let mut failures = 0u32;
        let mut groups_ready = false;
        let mut blocking: Option<ConnectionManager> = None;
        let mut pending: Option<Vec<String>> = None;
        let mut last_reclaim: Option<Instant> = None;
        let mut breaker = 0u32;
        while !shutdown.is_cancelled() {
            let result = async {
                if !groups_ready {
                    for key in &self.read_keys {
                        create_group(&mut self.conn, key, &self.group, &self.start).await?;
                    }
                    groups_ready = true;
                    pending = Some(vec!["0".to_owned(); self.read_keys.len()]);
                }
                if blocking.is_none() {
                    let timeout = self.options.block_timeout + Duration::from_secs(5);
                    let config = ConnectionManagerConfig::new()
                        .set_response_timeout(Some(timeout))
                        .set_connection_timeout(Some(Duration::from_secs(2)));
                    blocking = Some(
                        self.client
                            .get_connection_manager_with_config(config)
                            .await?,
                    );
                }
                let (successes, failed) = self
                    .step(
                        &shutdown,
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
                    if failed > 0 {
                        // Entries that failed, and the later entries of their streams held back
                        // behind them, are still pending: handle them again, in order, before
                        // reading anything new, so a stream's order holds across batches.
                        pending = Some(vec!["0".to_owned(); self.read_keys.len()]);
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
                        sleep_or_cancel(&shutdown, self.options.breaker_cooldown).await;
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
                    sleep_or_cancel(&shutdown, delay).await;
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
