//! [`PgSagaRunner`]: a saga fed from the global log, from a checkpoint, under a lease.

use std::time::{Duration, Instant};

use eventsource_core::{
    CommandDecider, EventHandler, EventStore, LogPosition, Saga, SagaError, TenantId,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::handler::PgSagaHandler;
use crate::checkpoint::PgCheckpointStore;
use crate::pooler::Autocommit;
use crate::projection::tail::{self, LogReader};
use crate::projection::{PgLease, PgProjectionError, ProjectionOptions};
use crate::store::PgEventStore;
use crate::tenant::begin_tenant;

/// How often a failure the handler does not call permanent is retried before the runner halts.
const RETRIES: u32 = 3;

/// Runs a saga from the PostgreSQL log directly, without a broker: the reading of
/// [`PgProjectionRunner`](crate::PgProjectionRunner) feeding a [`PgSagaHandler`].
///
/// - **From a checkpoint.** The runner reads a batch of the gap-free log after its checkpoint
///   and gives each event, in log order, to the handler, which handles it in a transaction of
///   its own (state, command events and the event's record commit together). Then one more
///   transaction renews the lease and moves the checkpoint to the batch's last event by
///   compare-and-set. A crash between a handled event and the checkpoint makes a restarted
///   runner read the event again; the handler finds it recorded for the instance and skips
///   it, so each event's effects still happen once.
/// - **One live instance per saga**, under the [`PgLease`] named like the checkpoint: as for
///   the projection runner, [`run`](Self::run) stands by while another instance holds it,
///   [`catch_up`](Self::catch_up) fails with [`PgProjectionError::LeaseHeld`], and an
///   instance that lost the lease stops with [`PgProjectionError::LeaseLost`] at its next
///   checkpoint (events it handled meanwhile are deduplicated like redeliveries). The lease is
///   also renewed between events when a batch takes long.
/// - **A failing event halts the runner** with [`PgProjectionError::Apply`] naming it, after
///   three retries when the handler does not call the error permanent
///   ([`EventHandler::is_permanent`]); the checkpoint stands just before it.
///
/// The checkpoint and the lease are named `saga:{Saga::NAME}` (with the tenant appended,
/// `saga:{NAME}:{tenant}`, under [`LogFilter::tenant`](eventsource_core::LogFilter::tenant)),
/// in the saga's database; [`with_name`](Self::with_name) changes it. Options (batch size,
/// polling, lease time to live, instance id, tenant filter) are the projection runner's
/// [`ProjectionOptions`]. The same saga may run from a Redis consumer group with the same
/// handler instead; it should not run both ways at once on one database, though doing so
/// only costs work: the per-event records keep the effects once.
///
/// Over every tenant (the default filter) the runner reads the whole log and needs a role that
/// bypasses row level security, like the relay; with a tenant filter it works for the
/// application's role. Either needs `SELECT, INSERT, UPDATE` on `checkpoints` and `leases`, and
/// what [`PgSagaHandler`] needs.
///
/// See the crate documentation, *Durable sagas*, for an example.
#[derive(Debug)]
pub struct PgSagaRunner<G, D> {
    store: PgEventStore,
    handler: PgSagaHandler<G, D>,
    options: ProjectionOptions,
    name: String,
}

impl<G: Saga, D: CommandDecider<G::Command>> PgSagaRunner<G, D> {
    /// A runner feeding `handler` from the log of `store`; the checkpoint and the lease live
    /// in the handler's database.
    pub fn new(
        store: PgEventStore,
        handler: PgSagaHandler<G, D>,
        options: ProjectionOptions,
    ) -> Self {
        let name = default_name(G::NAME, options.filter.tenant.as_ref());
        Self {
            store,
            handler,
            options,
            name,
        }
    }

    /// Names the checkpoint and the lease `name` instead of `saga:{Saga::NAME}`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The name of the checkpoint and the lease.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handler.
    pub fn handler(&self) -> &PgSagaHandler<G, D> {
        &self.handler
    }

    /// Takes the lease (waiting while another instance holds it), then tails the log until
    /// `shutdown` is cancelled, and releases the lease.
    ///
    /// # Errors
    ///
    /// See [`PgProjectionError`]: the runner stops at the first error, with its checkpoint
    /// after the last event it handled.
    ///
    /// # Cancel safety
    ///
    /// Cancel through `shutdown`: it is checked between batches. Dropping the future instead
    /// leaves the lease to run out and the checkpoint behind the events handled since the
    /// last batch; a restarted runner reads them again and skips them.
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), PgProjectionError<SagaError<G::Error, D::Error>>> {
        tail::run(&self, &shutdown).await
    }

    /// Takes the lease, or fails at once with [`PgProjectionError::LeaseHeld`] when another
    /// instance holds it; handles everything up to the current end of the log; releases the
    /// lease. Returns how many events it read (those the saga ignores included).
    ///
    /// # Errors
    ///
    /// [`PgProjectionError::LeaseHeld`], or as [`run`](Self::run).
    pub async fn catch_up(&self) -> Result<u64, PgProjectionError<SagaError<G::Error, D::Error>>> {
        tail::catch_up(self).await
    }

    /// Handles `event`, retrying a failure the handler does not call permanent.
    async fn handle(
        &self,
        event: &eventsource_core::RecordedEvent,
    ) -> Result<(), SagaError<G::Error, D::Error>> {
        let mut retries = 0;
        loop {
            match self.handler.handle(event).await {
                Err(e) if retries < RETRIES && !self.handler.is_permanent(&e) => {
                    retries += 1;
                    tracing::debug!(saga = G::NAME, event = %event.event_id, retries, error = %e,
                        "saga event retried");
                    tokio::time::sleep(Duration::from_millis(50 << retries)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Moves the checkpoint from `expected` to `last`, renewing the lease in the transaction.
    async fn checkpoint(
        &self,
        lease: &PgLease,
        expected: Option<LogPosition>,
        last: LogPosition,
    ) -> Result<(), PgProjectionError<SagaError<G::Error, D::Error>>> {
        let pool = self.handler.pool();
        let mut tx = match &self.options.filter.tenant {
            Some(tenant) => begin_tenant(pool, tenant).await?,
            None => pool.begin().await?,
        };
        if let Err(e) = tail::seal(&mut tx, lease, &self.name, expected, last).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit().await?;
        Ok(())
    }
}

impl<G: Saga, D: CommandDecider<G::Command>> LogReader for PgSagaRunner<G, D> {
    type Error = SagaError<G::Error, D::Error>;
    type Cursor = Option<LogPosition>;

    fn name(&self) -> &str {
        &self.name
    }

    fn store(&self) -> &PgEventStore {
        &self.store
    }

    fn pool(&self) -> &PgPool {
        self.handler.pool()
    }

    fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    async fn load_cursor(&self) -> Result<Option<LogPosition>, PgProjectionError<Self::Error>> {
        let mut conn = Autocommit::acquire(self.handler.pool()).await?;
        let cursor = PgCheckpointStore::load_in_tx(&mut conn, &self.name)
            .await
            .map_err(PgProjectionError::Store)?;
        conn.commit().await?;
        Ok(cursor)
    }

    #[tracing::instrument(name = "eventsource.saga.batch", skip_all,
        fields(saga = G::NAME, events = tracing::field::Empty))]
    async fn step(
        &self,
        lease: &PgLease,
        cursor: &mut Option<LogPosition>,
    ) -> Result<usize, PgProjectionError<Self::Error>> {
        let after = cursor.unwrap_or(LogPosition::START);
        let batch = self
            .store
            .read_all(after, self.options.batch_size, &self.options.filter)
            .await
            .map_err(PgProjectionError::Store)?;
        tracing::Span::current().record("events", batch.len());
        let mut renewed = Instant::now();
        let mut handled = 0;
        let mut failure = None;
        for event in &batch {
            // A long batch keeps the lease: a standby taking over mid-batch would only
            // duplicate work the per-event records then skip.
            if renewed.elapsed() >= self.options.lease_ttl / 3 {
                lease.renew().await.map_err(PgProjectionError::from_lease)?;
                renewed = Instant::now();
            }
            if let Err(e) = self.handle(event).await {
                failure = Some(e);
                break;
            }
            handled += 1;
        }
        if handled > 0 {
            let last = batch[handled - 1].position;
            self.checkpoint(lease, *cursor, last).await?;
            *cursor = Some(last);
        }
        if let Some(source) = failure {
            let error = PgProjectionError::apply(&self.name, &batch[handled], source);
            tracing::error!(error = %error, "saga runner halted");
            return Err(error);
        }
        Ok(handled)
    }
}

/// `saga:{saga}`, or `saga:{saga}:{tenant}` for a runner reading one tenant's log.
fn default_name(saga: &str, tenant: Option<&TenantId>) -> String {
    match tenant {
        Some(tenant) => format!("saga:{saga}:{tenant}"),
        None => format!("saga:{saga}"),
    }
}
