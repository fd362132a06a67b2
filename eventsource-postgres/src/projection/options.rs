//! Tuning of a [`PgProjectionRunner`](crate::PgProjectionRunner).

use std::time::Duration;

use eventsource_core::LogFilter;

/// Tuning of a [`PgProjectionRunner`](crate::PgProjectionRunner).
///
/// ```
/// # use std::time::Duration;
/// # use eventsource_core::{LogFilter, TenantId};
/// # use eventsource_postgres::ProjectionOptions;
/// let options = ProjectionOptions::default()
///     .with_batch_size(1_000)
///     .with_lease_ttl(Duration::from_secs(5))
///     .with_instance_id("projector-a")
///     .with_filter(LogFilter::tenant(TenantId::new("acme")));
/// assert_eq!(options.batch_size(), 1_000);
/// ```
#[derive(Debug, Clone)]
pub struct ProjectionOptions {
    pub(crate) batch_size: usize,
    pub(crate) max_idle_poll: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) instance_id: String,
    pub(crate) filter: LogFilter,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_idle_poll: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(10),
            instance_id: uuid::Uuid::new_v4().to_string(),
            filter: LogFilter::all(),
        }
    }
}

impl ProjectionOptions {
    /// Events read from the log and applied per transaction (default 500).
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Longest wait between two polls of an idle log (default 250 ms). After a full batch the
    /// next poll is immediate; after an empty one the wait doubles from 1 ms up to this bound.
    /// An append through a clone of the runner's [`PgEventStore`](crate::PgEventStore) in the
    /// same process wakes the runner at once.
    #[must_use]
    pub fn with_max_idle_poll(mut self, max_idle_poll: Duration) -> Self {
        self.max_idle_poll = max_idle_poll;
        self
    }

    /// How long the projection's lease lives without renewal (default 10 s, at least 30 ms).
    /// The runner renews it with every batch and, when idle, every third of this; a batch
    /// must take less than this, or another instance may take the lease over (the batch then
    /// rolls back and the runner stops with
    /// [`PgProjectionError::LeaseLost`](crate::PgProjectionError::LeaseLost)). A standby polls
    /// every third of this (at most every second): after a crash it takes over within this
    /// time and one poll, after a graceful stop (which releases the lease) within one poll.
    #[must_use]
    pub fn with_lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl.max(Duration::from_millis(30));
        self
    }

    /// A stable id of this instance (default: random), recorded as the lease's holder. An
    /// instance restarted under the same id takes the lease back at once instead of waiting
    /// for it to run out (its predecessor, if still alive, is fenced off). Give each live
    /// process its own id.
    #[must_use]
    pub fn with_instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = instance_id.into();
        self
    }

    /// Which events of the log the projection sees (default: every tenant's). Reading every
    /// tenant needs a role that bypasses row level security; with
    /// [`LogFilter::tenant`] the runner reads that tenant's log and scopes each read-model
    /// transaction to it, and works for a role subject to row level security.
    #[must_use]
    pub fn with_filter(mut self, filter: LogFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Events per batch.
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The lease's time to live.
    #[must_use]
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// This instance's id.
    #[must_use]
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}
