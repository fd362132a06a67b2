//! Consumer-group runners: deliver stream entries to an [`EventHandler`], at least once.

pub mod projection;

use std::collections::{HashMap, HashSet};

use futures::FutureExt as _;
use std::hash::{BuildHasher as _, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    EventHandler, EventStore, LogFilter, LogPosition, RecordedEvent, StoreError,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands as _, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::codec;
use crate::consumer::{DEAD_LETTER, create_group, dead_letter_fields as dlq, raw_fields};
use crate::error::{RedisStoreError, RunnerError, is_no_group};
use crate::keys;
use crate::options::RunnerOptions;
use crate::publisher::sleep_or_cancel;

/// Counters of what a runner did, readable while it runs.
#[derive(Debug, Default)]
pub struct RunnerCounters {
    handled: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
    reclaimed: AtomicU64,
    missing: AtomicU64,
    refetched: AtomicU64,
}

impl RunnerCounters {
    /// Entries handled successfully and acknowledged.
    #[must_use]
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Handler calls that failed.
    #[must_use]
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// Entries moved to the dead-letter stream.
    #[must_use]
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Entries claimed from idle consumers (this one included).
    #[must_use]
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Pending entries found deleted from their stream.
    #[must_use]
    pub fn missing(&self) -> u64 {
        self.missing.load(Ordering::Relaxed)
    }

    /// Missing entries refetched from the event store.
    #[must_use]
    pub fn refetched(&self) -> u64 {
        self.refetched.load(Ordering::Relaxed)
    }
}

type RefetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send + 'a>>;

/// Finds an event in the store by its log position.
trait Refetch: Send + Sync {
    fn refetch(&self, position: LogPosition) -> RefetchFuture<'_>;
}

impl<S: EventStore> Refetch for S {
    fn refetch(&self, position: LogPosition) -> RefetchFuture<'_> {
        Box::pin(async move {
            let after = match position.position().checked_sub(1) {
                Some(p) => LogPosition::new(position.transaction(), p),
                None => match position.transaction().checked_sub(1) {
                    Some(tx) => LogPosition::new(tx, u64::MAX),
                    None => return Ok(None),
                },
            };
            let events = self.read_all(after, 1, &LogFilter::all()).await?;
            Ok(events.into_iter().next().filter(|e| e.position == position))
        })
    }
}

/// Runs an [`EventHandler`] as a consumer of a Redis consumer group.
///
/// # Delivery guarantee
///
/// **At-least-once**: an entry is acknowledged only after its handler returned `Ok`, so a crash
/// between the two re-delivers it (to this consumer on restart, or to another after the idle
/// threshold). Handlers get exactly-once *effects* by deduplicating on
/// [`RecordedEvent::position`] or [`RecordedEvent::event_id`] in the same transaction as the
/// effect (see [`projection`]). See [`RunnerOptions`] for the retry, reclaim and dead-letter
/// policy.
///
/// The runner reads each stream key and its requeue stream ([`keys::requeue_stream`]), creates
/// its group on both if missing, and handles entries of one aggregate stream one after the
/// other, in order; different aggregate streams run concurrently up to
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
    start_id: String,
    handler: H,
    refetch: Option<Arc<dyn Refetch>>,
    options: RunnerOptions,
    counters: Arc<RunnerCounters>,
    hasher: RandomState,
}

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

/// What became of one entry in a lane.
struct LaneOutcome {
    acks: Vec<(usize, String)>,
    successes: u32,
    failures: u32,
    error: Option<RunnerError>,
}

/// Why a handler gave up on an entry.
struct Failure {
    error: String,
    /// The error will recur (the handler said so, or it panicked): dead-letter without
    /// further deliveries.
    permanent: bool,
}

/// An entry as delivered, with its decoded event or the reason it has none.
struct Delivery {
    key: usize,
    id: String,
    fields: HashMap<String, Value>,
    event: Result<RecordedEvent, String>,
    /// `false` for ids `XAUTOCLAIM` reported deleted: Redis already dropped them from the
    /// pending list, so they cannot be delivered again.
    in_pending: bool,
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
            start_id: "0".to_owned(),
            handler,
            refetch: None,
            options,
            counters: Arc::default(),
            hasher: RandomState::new(),
        }
    }

    /// Refetches entries deleted while pending from `store`, by the log position in their id.
    /// Without a store such entries are dead-lettered with the reason.
    #[must_use]
    pub fn with_store<S: EventStore + 'static>(mut self, store: S) -> Self {
        self.refetch = Some(Arc::new(store));
        self
    }

    /// Where a newly created group starts: `"0"` (default, the whole stream) or `"$"` (only
    /// entries added from now on).
    #[must_use]
    pub fn with_start_id(mut self, start_id: impl Into<String>) -> Self {
        self.start_id = start_id.into();
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
    pub async fn ensure_groups(&mut self) -> Result<(), RedisStoreError> {
        for key in &self.read_keys {
            create_group(&mut self.conn, key, &self.group, &self.start_id).await?;
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
                        create_group(&mut self.conn, key, &self.group, &self.start_id).await?;
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

    /// One read (own pending, reclaim, or new entries) and its processing; returns the
    /// numbers of entries handled and of entries given up on.
    async fn step(
        &mut self,
        shutdown: &CancellationToken,
        pending: &mut Option<Vec<String>>,
        last_reclaim: &mut Option<Instant>,
        blocking: Option<&mut ConnectionManager>,
    ) -> Result<(u32, u32), RunnerError> {
        let batch = self.options.batch_size;
        if let Some(cursors) = pending {
            let options = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(batch);
            let reply: Option<StreamReadReply> = self
                .conn
                .xread_options(&self.read_keys, cursors, &options)
                .await?;
            let mut deliveries = Vec::new();
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let Some(idx) = self.read_keys.iter().position(|k| *k == stream.key) else {
                    continue;
                };
                if let Some(last) = stream.ids.last() {
                    cursors[idx].clone_from(&last.id);
                }
                deliveries.extend(stream.ids.into_iter().map(|e| Self::delivery(idx, e, true)));
            }
            if deliveries.is_empty() {
                *pending = None;
                return Ok((0, 0));
            }
            return self.process(deliveries, shutdown).await;
        }
        let reclaim_every = self.options.idle_reclaim / 2;
        if last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every) {
            *last_reclaim = Some(Instant::now());
            return self.reclaim(shutdown).await;
        }
        let until_reclaim = last_reclaim.map_or(Duration::ZERO, |at| {
            reclaim_every.saturating_sub(at.elapsed())
        });
        let block = self
            .options
            .block_timeout
            .min(until_reclaim)
            .max(Duration::from_millis(1));
        let options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(batch)
            .block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
        let ids = vec![">"; self.read_keys.len()];
        let conn = match blocking {
            Some(conn) => conn,
            None => &mut self.conn,
        };
        let reply: Option<StreamReadReply> = tokio::select! {
            () = shutdown.cancelled() => return Ok((0, 0)),
            reply = conn.xread_options(&self.read_keys, &ids, &options) => reply?,
        };
        let mut deliveries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(idx) = self.read_keys.iter().position(|k| *k == stream.key) else {
                continue;
            };
            deliveries.extend(stream.ids.into_iter().map(|e| Self::delivery(idx, e, true)));
        }
        self.process(deliveries, shutdown).await
    }

    /// Claims entries idle past the threshold from any consumer of the group and handles them.
    async fn reclaim(&mut self, shutdown: &CancellationToken) -> Result<(u32, u32), RunnerError> {
        let idle = u64::try_from(self.options.idle_reclaim.as_millis()).unwrap_or(u64::MAX);
        let mut totals = (0, 0);
        for idx in 0..self.read_keys.len() {
            let mut start = "0-0".to_owned();
            loop {
                let reply: StreamAutoClaimReply = self
                    .conn
                    .xautoclaim_options(
                        &self.read_keys[idx],
                        &self.group,
                        &self.consumer,
                        idle,
                        &start,
                        StreamAutoClaimOptions::default().count(self.options.batch_size),
                    )
                    .await?;
                let claimed = reply.claimed.len() + reply.deleted_ids.len();
                if claimed > 0 {
                    tracing::info!(
                        stream = %self.read_keys[idx],
                        group = %self.group,
                        consumer = %self.consumer,
                        claimed,
                        "reclaimed idle entries"
                    );
                }
                self.counters
                    .reclaimed
                    .fetch_add(claimed as u64, Ordering::Relaxed);
                let mut deliveries: Vec<Delivery> = reply
                    .claimed
                    .into_iter()
                    .map(|e| Self::delivery(idx, e, true))
                    .collect();
                deliveries.extend(reply.deleted_ids.into_iter().map(|id| {
                    Self::delivery(
                        idx,
                        StreamId {
                            id,
                            ..StreamId::default()
                        },
                        false,
                    )
                }));
                let (s, f) = self.process(deliveries, shutdown).await?;
                totals = (totals.0 + s, totals.1 + f);
                if reply.next_stream_id == "0-0" || shutdown.is_cancelled() {
                    break;
                }
                start = reply.next_stream_id;
            }
        }
        Ok(totals)
    }

    fn delivery(key: usize, entry: StreamId, in_pending: bool) -> Delivery {
        let event = if entry.map.is_empty() {
            Err(String::new())
        } else {
            codec::decode(&entry.map).map_err(|e| format!("malformed entry: {e}"))
        };
        Delivery {
            key,
            id: entry.id,
            fields: entry.map,
            event,
            in_pending,
        }
    }

    /// Handles a read batch: resolves deleted entries, dead-letters malformed ones, runs the
    /// rest in lanes and acknowledges what succeeded.
    async fn process(
        &self,
        mut deliveries: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<(u32, u32), RunnerError> {
        if deliveries.is_empty() {
            return Ok((0, 0));
        }
        let mut failures = 0;
        let mut lanes: Vec<Vec<Delivery>> =
            (0..self.options.concurrency).map(|_| Vec::new()).collect();
        for mut d in deliveries.drain(..) {
            if d.fields.is_empty() {
                self.resolve_missing(&mut d).await;
            }
            match &d.event {
                Ok(event) => {
                    let lane =
                        usize::try_from(self.hasher.hash_one(&event.stream) % lanes.len() as u64)
                            .unwrap_or(0);
                    lanes[lane].push(d);
                }
                Err(reason) => {
                    if reason.is_empty() {
                        // A refetch that failed transiently: leave it pending for a retry.
                        failures += 1;
                        continue;
                    }
                    tracing::warn!(
                        stream = %self.read_keys[d.key],
                        id = %d.id,
                        reason = %reason,
                        "dead-lettering unusable entry"
                    );
                    self.dead_letter(&d, None, reason, 1).await?;
                }
            }
        }
        let outcomes = futures::future::join_all(
            lanes
                .iter()
                .filter(|lane| !lane.is_empty())
                .map(|lane| self.run_lane(lane, shutdown)),
        )
        .await;
        let mut acks: HashMap<usize, Vec<String>> = HashMap::new();
        let mut successes = 0;
        let mut error = None;
        for outcome in outcomes {
            successes += outcome.successes;
            failures += outcome.failures;
            for (key, id) in outcome.acks {
                acks.entry(key).or_default().push(id);
            }
            if error.is_none() {
                error = outcome.error;
            }
        }
        if !acks.is_empty() {
            let mut pipe = redis::pipe();
            for (key, ids) in &acks {
                pipe.xack(&self.read_keys[*key], &self.group, ids).ignore();
            }
            let span = tracing::debug_span!(
                "eventsource.redis.ack",
                group = %self.group,
                entries = acks.values().map(Vec::len).sum::<usize>()
            );
            pipe.query_async::<()>(&mut self.conn.clone())
                .instrument(span)
                .await?;
        }
        match error {
            Some(e) => Err(e),
            None => Ok((successes, failures)),
        }
    }

    /// Looks a deleted entry up in the store by the position in its id.
    async fn resolve_missing(&self, d: &mut Delivery) {
        self.counters.missing.fetch_add(1, Ordering::Relaxed);
        let stream = &self.read_keys[d.key];
        // Requeued entries have ids of their own, not log positions.
        let position = if d.key < self.event_streams {
            codec::parse_position(&d.id)
        } else {
            None
        };
        tracing::warn!(
            stream = %stream,
            id = %d.id,
            group = %self.group,
            "pending entry was deleted from its stream; refetching it from the event store"
        );
        d.event = match (&self.refetch, position) {
            (Some(store), Some(position)) => match store.refetch(position).await {
                Ok(Some(event)) => {
                    self.counters.refetched.fetch_add(1, Ordering::Relaxed);
                    Ok(event)
                }
                Ok(None) => Err("entry deleted while pending and not in the event store".into()),
                Err(e) if d.in_pending => {
                    tracing::warn!(error = %e, id = %d.id, "refetch failed; will retry");
                    Err(String::new())
                }
                Err(e) => Err(format!("entry deleted while pending; refetch failed: {e}")),
            },
            (None, _) => Err("entry deleted while pending; no event store to refetch from".into()),
            (_, None) => Err("entry deleted while pending; its id is not a log position".into()),
        };
    }

    /// Handles a lane's entries in order.
    async fn run_lane(&self, lane: &[Delivery], shutdown: &CancellationToken) -> LaneOutcome {
        let mut outcome = LaneOutcome {
            acks: Vec::new(),
            successes: 0,
            failures: 0,
            error: None,
        };
        let mut blocked = HashSet::new();
        for d in lane {
            let Ok(event) = &d.event else { continue };
            if shutdown.is_cancelled() {
                break;
            }
            if d.in_pending && blocked.contains(&event.stream) {
                continue;
            }
            match self.handle(d, event, shutdown).await {
                Ok(()) => {
                    self.counters.handled.fetch_add(1, Ordering::Relaxed);
                    outcome.successes += 1;
                    outcome.acks.push((d.key, d.id.clone()));
                }
                Err(Failure { error, permanent }) => {
                    outcome.failures += 1;
                    if shutdown.is_cancelled() && d.in_pending && !permanent {
                        break;
                    }
                    let deliveries = if d.in_pending && !permanent {
                        match self.delivery_count(d).await {
                            Ok(n) => n,
                            Err(e) => {
                                outcome.error = Some(e);
                                break;
                            }
                        }
                    } else {
                        self.options.max_deliveries
                    };
                    if deliveries >= self.options.max_deliveries {
                        tracing::warn!(
                            stream = %self.read_keys[d.key],
                            id = %d.id,
                            deliveries,
                            error = %error,
                            "handler gave up; dead-lettering entry"
                        );
                        if let Err(e) = self.dead_letter(d, Some(event), &error, deliveries).await {
                            outcome.error = Some(e);
                            break;
                        }
                    } else {
                        tracing::info!(
                            stream = %self.read_keys[d.key],
                            id = %d.id,
                            deliveries,
                            error = %error,
                            "handler failed; entry stays pending for redelivery"
                        );
                        blocked.insert(event.stream.clone());
                    }
                }
            }
        }
        outcome
    }

    /// Calls the handler with in-place retries; the error text of the last failure. A
    /// permanent error (see [`EventHandler::is_permanent`]) is not retried.
    async fn handle(
        &self,
        d: &Delivery,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure> {
        let attempts = self.options.retry.max_attempts();
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!(
                "eventsource.redis.handle",
                stream = %self.read_keys[d.key],
                id = %d.id,
                group = %self.group,
                event_type = %event.event_type,
                attempt,
            );
            let call = std::panic::AssertUnwindSafe(self.handler.handle(event).instrument(span))
                .catch_unwind();
            let outcome = match self.options.handler_timeout {
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| limit),
                None => Ok(call.await),
            };
            // The handler's verdict: the error text and whether it will recur.
            let (error, permanent) = match outcome {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(e))) => (error_chain(&e), self.handler.is_permanent(&e)),
                // A panicking handler would panic again on every redelivery and take the
                // runner down each time: dead-letter the entry instead.
                Ok(Err(panic)) => (panic_message(panic.as_ref()), true),
                Err(limit) => (format!("handler timed out after {limit:?}"), false),
            };
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
            if permanent || attempt >= attempts || shutdown.is_cancelled() {
                return Err(Failure { error, permanent });
            }
            tracing::debug!(id = %d.id, attempt, %error, "handler failed; retrying");
            sleep_or_cancel(shutdown, self.options.retry.delay(attempt)).await;
            attempt += 1;
        }
    }

    /// How often Redis delivered the entry.
    async fn delivery_count(&self, d: &Delivery) -> Result<u64, RunnerError> {
        let reply: StreamPendingCountReply = self
            .conn
            .clone()
            .xpending_count(&self.read_keys[d.key], &self.group, &d.id, &d.id, 1)
            .await?;
        Ok(reply.ids.first().map_or(1, |p| p.times_delivered as u64))
    }

    /// Moves the entry to the dead-letter stream and acks it, in one script.
    async fn dead_letter(
        &self,
        d: &Delivery,
        event: Option<&RecordedEvent>,
        error: &str,
        deliveries: u64,
    ) -> Result<(), RunnerError> {
        let source = &self.read_keys[d.key];
        let mut invocation = DEAD_LETTER.prepare_invoke();
        invocation
            .key(source)
            .key(&self.dead_letter_keys[d.key])
            .arg(&self.group)
            .arg(&d.id)
            .arg(&self.consumer)
            .arg(if d.in_pending { "1" } else { "0" });
        if d.fields.is_empty() {
            if let Some(event) = event {
                for (field, value) in codec::encode_pairs(event) {
                    invocation.arg(field).arg(value);
                }
            }
        } else {
            for (field, value) in raw_fields(&d.fields) {
                if !field.starts_with("dlq_") {
                    invocation.arg(field).arg(value);
                }
            }
        }
        invocation
            .arg(dlq::SOURCE_STREAM)
            .arg(source)
            .arg(dlq::SOURCE_ID)
            .arg(&d.id)
            .arg(dlq::GROUP)
            .arg(&self.group)
            .arg(dlq::CONSUMER)
            .arg(&self.consumer)
            .arg(dlq::ERROR)
            .arg(error)
            .arg(dlq::DELIVERIES)
            .arg(deliveries)
            .arg(dlq::AT)
            .arg(chrono::Utc::now().to_rfc3339());
        let acked: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        if acked < 0 {
            tracing::info!(
                stream = %source,
                id = %d.id,
                "entry was reclaimed by another consumer; leaving it to that consumer"
            );
            return Ok(());
        }
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// "handler panicked: <message>" for a caught panic's payload (a `&str` or `String`; other
/// payloads read "a non-string payload").
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("handler panicked: {message}")
}

/// An error and its sources, `: `-separated (`outer: inner: root`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
