//! [`PgDeadlineRunner`]: saga deadlines fired by several processes, each once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventsource_core::saga::deadline_event;
use eventsource_core::{DueDeadline, ExpectedVersion, StoreError, TenantId};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::store::PgSagaStore;
use crate::error::store_error;
use crate::store::PgEventStore;
use crate::tenant::begin_saga;

/// Fires due saga deadlines where the saga store ([`PgSagaStore`]) and the event store
/// ([`PgEventStore`]) share a database: appending each
/// [`DEADLINE_REACHED`](eventsource_core::DEADLINE_REACHED) event and marking its deadline
/// fired commit in **one transaction**.
///
/// Each round claims up to a batch of due deadlines with `FOR UPDATE SKIP LOCKED`, so any
/// number of runners, in any number of processes, share them without waiting on each other and
/// without two firing the same one; a runner that dies mid-batch (its transaction rolled back
/// by the server) leaves its deadlines pending for the next round of any runner. A deadline is
/// therefore fired once across crashes and restarts; its event also has a deterministic id
/// ([`deadline_event`]), so even a runner of another kind firing it too stores it once.
///
/// Without [`for_tenant`](Self::for_tenant) the runner reads every tenant's deadlines and needs
/// a role that bypasses row level security (as the relay does); scoped to a tenant, it runs
/// as the application role.
///
/// ```no_run
/// use eventsource_postgres::PgDeadlineRunner;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let shutdown = CancellationToken::new();
/// let runner = PgDeadlineRunner::new(pool).with_batch_size(64);
/// tokio::spawn(runner.run(shutdown.clone()));
/// // ... on shutdown:
/// shutdown.cancel();
/// # Ok(()) }
/// # fn main() { let _ = run; }
/// ```
#[derive(Debug, Clone)]
pub struct PgDeadlineRunner {
    pool: PgPool,
    tenant: Option<TenantId>,
    batch: usize,
    poll: Duration,
}

impl PgDeadlineRunner {
    /// A runner over every tenant on `pool`, firing up to 64 deadlines per transaction and
    /// looking for due ones every 100 ms when idle.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            tenant: None,
            batch: 64,
            poll: Duration::from_millis(100),
        }
    }

    /// Fires only `tenant`'s deadlines, in transactions scoped to it.
    #[must_use]
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// How many deadlines one transaction fires (at least 1).
    #[must_use]
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long to wait when nothing is due.
    #[must_use]
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Fires one batch of the deadlines due at `now` in one transaction; returns the
    /// deadlines it fired (empty when none was due or all were claimed by other runners).
    ///
    /// # Errors
    ///
    /// A storage failure; the transaction is rolled back, its deadlines stay pending. A
    /// retryable one ([`StoreError::is_retryable`]: the stream-order guard, a conflict, a lost
    /// connection) is worth another call.
    #[tracing::instrument(name = "eventsource.saga.fire_deadlines", skip_all, fields(tenant = ?self.tenant, fired = tracing::field::Empty))]
    pub async fn fire_batch(&self, now: DateTime<Utc>) -> Result<Vec<DueDeadline>, StoreError> {
        let mut tx = begin_saga(&self.pool, self.tenant.as_ref())
            .await
            .map_err(store_error)?;
        let claimed =
            PgSagaStore::claim_due_in_tx(&mut tx, self.tenant.as_ref(), now, self.batch).await?;
        if claimed.is_empty() {
            return Ok(claimed);
        }
        for deadline in &claimed {
            let (stream, event) = deadline_event(deadline)?;
            PgEventStore::append_in_tx(&mut tx, &stream, ExpectedVersion::Any, vec![event]).await?;
            PgSagaStore::mark_fired_in_tx(&mut tx, deadline).await?;
        }
        tx.commit().await.map_err(store_error)?;
        tracing::Span::current().record("fired", claimed.len());
        Ok(claimed)
    }

    /// Fires every deadline due at `now`, batch after batch, retrying retryable failures a
    /// few times; returns how many it fired.
    ///
    /// # Errors
    ///
    /// A storage failure that persisted.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut fired = 0;
        let mut failures = 0;
        loop {
            match self.fire_batch(now).await {
                Ok(batch) if batch.is_empty() => return Ok(fired),
                Ok(batch) => {
                    fired += batch.len();
                    failures = 0;
                }
                Err(e) if e.is_retryable() && failures < 8 => {
                    tracing::debug!(error = %e, "deadline batch retried");
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(5 << failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fires due deadlines until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// A storage failure that persisted through [`fire_due`](Self::fire_due)'s retries.
    ///
    /// # Cancel safety
    ///
    /// Cancellation is checked between rounds; a batch cut short by dropping the future rolls
    /// back and its deadlines stay pending.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        while !shutdown.is_cancelled() {
            self.fire_due(Utc::now()).await?;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.poll) => {}
            }
        }
        Ok(())
    }
}
