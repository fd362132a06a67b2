//! Tuning of a [`PgRebuild`](crate::PgRebuild).

use std::time::Duration;

use eventsource_core::{LogFilter, LogPosition};

/// Tuning of a [`PgRebuild`](crate::PgRebuild).
///
/// ```
/// # use std::time::Duration;
/// # use eventsource_postgres::RebuildOptions;
/// let options = RebuildOptions::default()
///     .with_batch_size(10_000)
///     .with_cutover_lag(500)
///     .with_grace_period(Duration::from_secs(300))
///     .with_instance_id("rebuilder-1");
/// assert_eq!(options.batch_size(), 10_000);
/// ```
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub(super) batch_size: usize,
    pub(super) cutover_lag: usize,
    pub(super) grace_period: Duration,
    pub(super) reader_schema: String,
    pub(super) schema_prefix: Option<String>,
    pub(super) lease_ttl: Duration,
    pub(super) instance_id: String,
    pub(super) filter: LogFilter,
    pub(super) start: LogPosition,
    pub(super) cutover_lock_timeout: Duration,
    pub(super) workers: u32,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            cutover_lag: 1_000,
            grace_period: Duration::from_mins(1),
            reader_schema: "public".to_owned(),
            schema_prefix: None,
            lease_ttl: Duration::from_secs(30),
            instance_id: uuid::Uuid::new_v4().to_string(),
            filter: LogFilter::all(),
            start: LogPosition::START,
            cutover_lock_timeout: Duration::from_secs(2),
            workers: 1,
        }
    }
}

impl RebuildOptions {
    /// Events read and applied per transaction while filling (default 5,000).
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Cut over once a read from the log returns at most this many events (default 1,000):
    /// the new generation is then that close to the head. The cutover's transaction applies
    /// the rest, while the live runner waits for it, so this bounds the pause.
    #[must_use]
    pub fn with_cutover_lag(mut self, cutover_lag: usize) -> Self {
        self.cutover_lag = cutover_lag;
        self
    }

    /// How long a generation replaced by a cutover is kept before its schema may be dropped
    /// (default 60 s): readers inside a transaction begun before the cutover finish on it.
    #[must_use]
    pub fn with_grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// The schema holding the readers' views (default `public`).
    #[must_use]
    pub fn with_reader_schema(mut self, reader_schema: impl Into<String>) -> Self {
        self.reader_schema = reader_schema.into();
        self
    }

    /// The generations' schemas are named `<prefix>_g<n>` (default: the projection's name,
    /// lowercased, with characters other than letters, digits and `_` replaced by `_`). Only
    /// the first 40 bytes of the prefix are used: PostgreSQL cuts longer identifiers, and two
    /// generations would then share one schema. A prefix another projection's generations
    /// already use is refused ([`PgProjectionError::SchemaPrefixTaken`](crate::PgProjectionError::SchemaPrefixTaken)).
    #[must_use]
    pub fn with_schema_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.schema_prefix = Some(prefix.into());
        self
    }

    /// The rebuild lease's time to live (default 30 s); it is renewed with every batch.
    #[must_use]
    pub fn with_lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl.max(Duration::from_millis(30));
        self
    }

    /// This rebuilder's id, the rebuild lease's holder (default: random).
    #[must_use]
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Which events of the log the new generation is built from (default: every tenant's).
    /// A partial rebuild: [`LogFilter::tenant`] for a projection of one tenant (its live
    /// runner uses the same filter; each transaction is scoped to the tenant), or
    /// [`LogFilter::with_since`] for one that only holds events from a date on. The new
    /// generation replaces the whole read model at the cutover: it holds what the filter let
    /// through, nothing else.
    #[must_use]
    pub fn with_filter(mut self, filter: LogFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Build the new generation from the events after `start` only (default: the whole log),
    /// for a projection that only holds recent events. As with
    /// [`with_filter`](Self::with_filter), the new generation holds those, nothing else.
    #[must_use]
    pub fn with_start(mut self, start: LogPosition) -> Self {
        self.start = start;
        self
    }

    /// How long the cutover waits for the readers' views (default 2 s): repointing them takes
    /// a lock that waits for readers' transactions in flight on them, and that new readers
    /// queue behind. Past this the cutover rolls back (readers go on with the old generation
    /// at once) and is tried again after as long, up to 10 times.
    #[must_use]
    pub fn with_cutover_lock_timeout(mut self, timeout: Duration) -> Self {
        self.cutover_lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Fill the new generation with this many workers at once (default 1: one after the
    /// other). Each worker applies the events of the streams whose key falls in its shard
    /// (`stream_key % workers`), in log order, so each stream's events stay in version order
    /// while streams of different shards are applied concurrently: only for projections whose
    /// rows never combine events of two streams. Each shard keeps its checkpoint, so a stopped
    /// fill resumes shard by shard (with the number of workers it began with, whatever this
    /// says); once every shard reached the same position the rest of the fill and the cutover
    /// run as with one worker. Each worker holds a connection of the pool.
    #[must_use]
    pub fn with_workers(mut self, workers: u32) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Events per batch.
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The lag under which the rebuild cuts over.
    #[must_use]
    pub fn cutover_lag(&self) -> usize {
        self.cutover_lag
    }

    /// The grace period before a replaced generation is dropped.
    #[must_use]
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }
}
