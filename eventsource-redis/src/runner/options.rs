//! Tuning of a consumer runner.

use std::time::Duration;

use eventsource_core::RetryPolicy;

use crate::trim::TrimOptions;

/// Tuning of a [`ConsumerRunner`](crate::ConsumerRunner).
///
/// # Delivery and reclaim policy
///
/// - On start the runner re-reads its own pending entries (id `0`), then new ones (`>`).
/// - A failing handler is retried in place following [`with_retry`](Self::with_retry)
///   (exponential backoff with jitter). If it still fails, the entry stays pending, and the
///   runner re-reads its own pending entries (a new delivery each) before reading new ones, so
///   a stream's later entries never overtake a failed one.
/// - A handler error that [`EventHandler::is_permanent`](eventsource_core::EventHandler::is_permanent)
///   calls permanent, or a panicking handler, dead-letters the entry at once.
/// - [`with_handler_timeout`](Self::with_handler_timeout) bounds each handler call.
/// - Every half [`idle_reclaim`](Self::with_idle_reclaim) the runner claims (`XAUTOCLAIM`)
///   entries pending for longer than that in *any* consumer of the group — a crashed
///   consumer's entries, and its own failed ones — which counts as a new delivery.
/// - An entry whose handler fails on its [`max_deliveries`](Self::with_max_deliveries)-th
///   delivery (or that is malformed) moves to the group's dead-letter stream, atomically with
///   its ack — unless another consumer has reclaimed it meanwhile; then that consumer decides.
/// - After [`breaker_threshold`](Self::with_breaker_threshold) entries in a row failed, the
///   runner pauses for [`breaker_cooldown`](Self::with_breaker_cooldown) (circuit breaker),
///   then tries one batch again.
///
/// # Trimming
///
/// By default the runner also trims its streams (and their requeue streams) on a schedule:
/// every minute, `MINID` below the oldest entry any consumer group of the stream has not
/// acknowledged or not yet read, keeping at least the last 24 hours (see [`TrimOptions`] and
/// [`Trimmer`](crate::Trimmer)). A stream is trimmed only once this runner's group exists on
/// it; a stream without groups never is. [`with_trim`](Self::with_trim) changes the schedule,
/// [`without_trim`](Self::without_trim) turns it off.
///
/// # Blocking connections
///
/// A read loop waits for new entries with a blocking `XREADGROUP` on a connection of its own
/// (a blocked read would hold up every command queued behind it on a shared one). On a single
/// node the runner has one read loop; on a cluster one per hash slot it reads (one command
/// may not name keys of two slots, even on one node), so a runner over many tenants would open
/// as many connections. [`with_max_blocking_reads`](Self::with_max_blocking_reads) caps them
/// (default 16): the loops of the first slots, in the order of the runner's streams (those
/// given to [`ConsumerRunner::new`](crate::ConsumerRunner::new), then discovered tenants' in
/// the order found), block on a connection each; the loops of the slots past the cap read
/// without `BLOCK` through the shared connection and, while they find nothing, wait between
/// reads from 1 ms doubling up to the [block timeout](Self::with_block_timeout). A new entry
/// in an idle polled slot is so read up to one block timeout (default 2 s) late, and each idle
/// polled slot costs one read per block timeout; a busy one reads back to back.
///
/// ```
/// # use eventsource_redis::RunnerOptions;
/// # use std::time::Duration;
/// let options = RunnerOptions::default()
///     .with_batch_size(256)
///     .with_block_timeout(Duration::from_secs(2))
///     .with_concurrency(8);
/// assert_eq!(options.concurrency(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub(crate) batch_size: usize,
    pub(crate) block_timeout: Duration,
    pub(crate) idle_reclaim: Duration,
    pub(crate) max_deliveries: u64,
    pub(crate) retry: RetryPolicy,
    pub(crate) concurrency: usize,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) error_backoff: RetryPolicy,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) trim: Option<TrimOptions>,
    pub(crate) max_blocking_reads: usize,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            block_timeout: Duration::from_secs(2),
            idle_reclaim: Duration::from_secs(30),
            max_deliveries: 5,
            retry: RetryPolicy::default()
                .with_max_attempts(3)
                .with_base_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_secs(1)),
            concurrency: 1,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(5),
            error_backoff: RetryPolicy::default()
                .with_max_attempts(u32::MAX)
                .with_base_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5)),
            handler_timeout: None,
            trim: Some(TrimOptions::default()),
            max_blocking_reads: 16,
        }
    }
}

impl RunnerOptions {
    /// Gives up on a handler call after `limit`, as on a failure (retried, then dead-lettered);
    /// default: no limit. A handler stuck on one entry otherwise holds up its whole batch.
    #[must_use]
    pub fn with_handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// Entries read per `XREADGROUP` (default 100).
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long a read blocks waiting for new entries (default 2 s). The blocking connection's
    /// response timeout is set longer than this.
    #[must_use]
    pub fn with_block_timeout(mut self, block_timeout: Duration) -> Self {
        self.block_timeout = block_timeout.max(Duration::from_millis(1));
        self
    }

    /// How long an entry must sit unacknowledged before another consumer may claim it
    /// (default 30 s). Keep it well above the slowest handler's run time.
    #[must_use]
    pub fn with_idle_reclaim(mut self, idle_reclaim: Duration) -> Self {
        self.idle_reclaim = idle_reclaim.max(Duration::from_millis(1));
        self
    }

    /// Deliveries after which a failing entry is dead-lettered (default 5, at least 1).
    #[must_use]
    pub fn with_max_deliveries(mut self, max_deliveries: u64) -> Self {
        self.max_deliveries = max_deliveries.max(1);
        self
    }

    /// In-place retries of a failing handler within one delivery (default 3 attempts, 10 ms
    /// doubling to 1 s, full jitter).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Entries handled at once (default 1). Entries of one aggregate stream are always
    /// handled one after the other, in stream order.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Failed entries in a row that open the circuit breaker (default 5).
    #[must_use]
    pub fn with_breaker_threshold(mut self, threshold: u32) -> Self {
        self.breaker_threshold = threshold.max(1);
        self
    }

    /// How long an open breaker pauses the runner (default 5 s).
    #[must_use]
    pub fn with_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Backoff between attempts after a transient Redis failure.
    #[must_use]
    pub fn with_error_backoff(mut self, backoff: RetryPolicy) -> Self {
        self.error_backoff = backoff;
        self
    }

    /// Trims the runner's streams on this schedule (default [`TrimOptions::default`]: every
    /// minute, keeping 24 hours).
    #[must_use]
    pub fn with_trim(mut self, trim: TrimOptions) -> Self {
        self.trim = Some(trim);
        self
    }

    /// Turns scheduled trimming off: the streams grow until trimmed some other way.
    #[must_use]
    pub fn without_trim(mut self) -> Self {
        self.trim = None;
        self
    }

    /// At most `max` read loops block on a connection of their own (default 16); the loops of
    /// further hash slots poll through the shared connection (see [Blocking
    /// connections](Self#blocking-connections)). 0 makes every loop poll, on a single node
    /// too: the runner then opens no connection of its own.
    #[must_use]
    pub fn with_max_blocking_reads(mut self, max: usize) -> Self {
        self.max_blocking_reads = max;
        self
    }

    /// How many read loops may block on a connection of their own.
    #[must_use]
    pub fn max_blocking_reads(&self) -> usize {
        self.max_blocking_reads
    }

    /// The trimming schedule, `None` when off.
    #[must_use]
    pub fn trim(&self) -> Option<&TrimOptions> {
        self.trim.as_ref()
    }

    /// Entries per read.
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Entries handled at once.
    #[must_use]
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}
