//! [`PgProjectionRunner`]: the live projection, exactly once, under a lease.

use eventsource_core::{EventStore, LogPosition, RecordedEvent};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::PgProjection;
use super::error::PgProjectionError;
use super::lease::PgLease;
use super::options::ProjectionOptions;
use super::tail::{self, LogReader};
use crate::checkpoint::PgCheckpointStore;
use crate::pooler::Autocommit;
use crate::sql;
use crate::store::PgEventStore;
use crate::tenant::begin_tenant;

/// Feeds a [`PgProjection`] from the global log with exactly-once effects, one live instance
/// per projection.
///
/// - **One transaction per batch.** The runner reads a batch of the gap-free log after its
///   checkpoint, then in one read-model transaction applies every event of it, renews the
///   projection's [`PgLease`] (checking it was not taken over) and moves the checkpoint by
///   compare-and-set from where it left it ([`PgCheckpointStore::save_in_tx`]), and commits.
///   A crash anywhere before the commit changes nothing; after it, the checkpoint says
///   exactly which events the read model holds. Each event's effects are applied exactly
///   once, in log order.
/// - **One live instance.** Before it applies anything the runner takes the lease named after
///   the projection ([`run`](Self::run) stands by while another instance holds it). An
///   instance that lost its lease (it did not renew it in time and another took it) is fenced:
///   its next batch finds the lease's token changed, rolls back and the runner stops with
///   [`PgProjectionError::LeaseLost`]. A second instance racing on the checkpoint alone gets
///   zero rows from the compare-and-set and stops with
///   [`PgProjectionError::CheckpointMoved`].
/// - **A failing event halts the runner** with [`PgProjectionError::Apply`], which names the
///   event: the events of its batch before it are committed with the checkpoint just before
///   it, nothing after it is applied, and a runner started again begins with it.
/// - **Polling** is adaptive: at once after a non-empty batch, otherwise after a wait that
///   doubles from 1 ms to [`ProjectionOptions::with_max_idle_poll`]; an append through a
///   clone of the store in this process wakes the runner at once.
///
/// The checkpoint and the lease are named after [`PgProjection::name`], in the `checkpoints`
/// and `leases` tables of the read model's database (by default the store's; see
/// [`with_read_model`](Self::with_read_model)), which must have the crate's migrations.
///
/// # Roles
///
/// Over every tenant ([`LogFilter::all`](eventsource_core::LogFilter::all), the default) the
/// runner reads the whole log and needs a role that bypasses row level security, like the
/// relay; with [`LogFilter::tenant`](eventsource_core::LogFilter::tenant) it reads that
/// tenant's log, scopes each read-model transaction to the tenant and works for the
/// application's role. Either needs `SELECT, INSERT, UPDATE` on `checkpoints` and `leases`,
/// and what the projection writes.
///
/// # Examples
///
/// ```no_run
/// use eventsource_core::RecordedEvent;
/// use eventsource_postgres::{PgEventStore, PgProjection, PgProjectionRunner, ProjectionOptions};
/// use sqlx::PgConnection;
/// use tokio_util::sync::CancellationToken;
///
/// /// Counts events per stream.
/// struct EventCounts;
///
/// impl PgProjection for EventCounts {
///     type Error = sqlx::Error;
///
///     fn name(&self) -> &str {
///         "event-counts"
///     }
///
///     async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), sqlx::Error> {
///         sqlx::query(
///             "INSERT INTO event_counts (stream, n) VALUES ($1, 1) \
///              ON CONFLICT (stream) DO UPDATE SET n = event_counts.n + 1",
///         )
///         .bind(event.stream.to_string())
///         .execute(conn)
///         .await?;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// # let store = PgEventStore::new(pool);
/// let shutdown = CancellationToken::new();
/// let runner = PgProjectionRunner::new(store, EventCounts, ProjectionOptions::default());
/// let task = tokio::spawn(runner.run(shutdown.clone()));
/// // ... later:
/// shutdown.cancel();
/// task.await??;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgProjectionRunner<P> {
    store: PgEventStore,
    pool: PgPool,
    projection: P,
    options: ProjectionOptions,
}

/// Why a batch was not committed.
enum Failure<E: std::error::Error + 'static> {
    /// The projection failed on the event at this index of the batch.
    Apply(usize, E),
    /// [`PgProjection::apply_batch`] failed: apply the batch again event by event.
    Batch,
    /// A rebuild cut over to another generation since the cursor was loaded.
    Generation,
    Other(PgProjectionError<E>),
}

/// Where the runner stands: its checkpoint, and the generation it writes to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    checkpoint: Option<LogPosition>,
    generation: Option<i64>,
}

impl<E: std::error::Error + 'static> From<sqlx::Error> for Failure<E> {
    fn from(err: sqlx::Error) -> Self {
        Self::Other(PgProjectionError::Database(err))
    }
}

impl<P: PgProjection> PgProjectionRunner<P> {
    /// A runner applying `projection` to the log of `store`, its read model (with the
    /// checkpoint and the lease) in the store's database.
    pub fn new(store: PgEventStore, projection: P, options: ProjectionOptions) -> Self {
        Self {
            pool: store.pool().clone(),
            store,
            projection,
            options,
        }
    }

    /// Writes the read model, the checkpoint and the lease through `pool` (another database,
    /// or a pool of another role) instead of the store's pool.
    #[must_use]
    pub fn with_read_model(mut self, pool: PgPool) -> Self {
        self.pool = pool;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Takes the lease (waiting while another instance holds it), then tails the log until
    /// `shutdown` is cancelled, and releases the lease.
    ///
    /// # Errors
    ///
    /// See [`PgProjectionError`]: the runner stops at the first error, with its checkpoint
    /// on the last committed batch. [`PgProjectionError::is_retryable`] tells whether running
    /// it again may get past the error.
    ///
    /// # Cancel safety
    ///
    /// Cancel through `shutdown`: it is checked between batches, so the batch in flight is
    /// committed first. Dropping the future instead rolls back the batch in flight (nothing
    /// is lost) but leaves the lease to run out, so a standby waits up to its time to live.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PgProjectionError<P::Error>> {
        tail::run(&self, &shutdown).await
    }

    /// Takes the lease, or fails at once with [`PgProjectionError::LeaseHeld`] when another
    /// instance holds it; applies everything up to the current end of the log; releases the
    /// lease. Returns how many events it applied.
    ///
    /// # Errors
    ///
    /// [`PgProjectionError::LeaseHeld`], or as [`run`](Self::run).
    pub async fn catch_up(&self) -> Result<u64, PgProjectionError<P::Error>> {
        tail::catch_up(self).await
    }
}

impl<P: PgProjection> LogReader for PgProjectionRunner<P> {
    type Error = P::Error;
    type Cursor = Cursor;

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn store(&self) -> &PgEventStore {
        &self.store
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    /// Loads the checkpoint and the serving generation (a cutover moves both at once).
    async fn load_cursor(&self) -> Result<Cursor, PgProjectionError<P::Error>> {
        let mut tx = self.pool.begin().await?;
        let generation = sqlx::query_scalar(sql::SERVING_GENERATION)
            .bind(self.projection.name())
            .fetch_optional(&mut *tx)
            .await?;
        let checkpoint = PgCheckpointStore::load_in_tx(&mut tx, self.projection.name())
            .await
            .map_err(PgProjectionError::Store)?;
        tx.commit().await?;
        Ok(Cursor {
            checkpoint,
            generation,
        })
    }

    /// Reads and commits one batch after `checkpoint`, moving it; returns the batch's size.
    async fn step(
        &self,
        lease: &PgLease,
        cursor: &mut Cursor,
    ) -> Result<usize, PgProjectionError<P::Error>> {
        let mut one_by_one = false;
        loop {
            let after = cursor.checkpoint.unwrap_or(LogPosition::START);
            let batch = self
                .store
                .read_all(after, self.options.batch_size, &self.options.filter)
                .await
                .map_err(PgProjectionError::Store)?;
            let Some(last) = batch.last() else {
                return Ok(0);
            };
            match self.commit(lease, *cursor, &batch, one_by_one).await {
                Ok(()) => {
                    cursor.checkpoint = Some(last.position);
                    return Ok(batch.len());
                }
                Err(Failure::Generation) => {
                    // A rebuild cut over: it moved the checkpoint to where the new generation
                    // is complete. Continue on the new generation from there.
                    *cursor = self.load_cursor().await?;
                    tracing::info!(projection = self.projection.name(),
                        generation = ?cursor.generation, checkpoint = ?cursor.checkpoint,
                        "projection cut over to a new generation; continuing on it");
                }
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Batch) => one_by_one = true,
                Err(Failure::Apply(failed, source)) => {
                    // Commit what came before the failing event, so the checkpoint stands
                    // just before it. The first attempt's transaction rolled back: nothing is
                    // applied twice.
                    if failed > 0 {
                        match self.commit(lease, *cursor, &batch[..failed], true).await {
                            Ok(()) => cursor.checkpoint = Some(batch[failed - 1].position),
                            Err(Failure::Generation) => {
                                *cursor = self.load_cursor().await?;
                                continue;
                            }
                            Err(Failure::Other(e)) => return Err(e),
                            // Not raised one by one; reading the batch again is harmless.
                            Err(Failure::Batch) => continue,
                            Err(Failure::Apply(earlier, source)) => {
                                return Err(self.failed(&batch[earlier], source));
                            }
                        }
                    }
                    return Err(self.failed(&batch[failed], source));
                }
            }
        }
    }
}

impl<P: PgProjection> PgProjectionRunner<P> {
    /// The generation the read model serves, as a lone statement (`pooler.rs`).
    async fn serving_generation(&self) -> Result<Option<i64>, sqlx::Error> {
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let generation = sqlx::query_scalar(sql::SERVING_GENERATION)
            .bind(self.projection.name())
            .fetch_optional(&mut *conn)
            .await?;
        conn.commit().await?;
        Ok(generation)
    }

    /// Tells a cutover from a zombie when the checkpoint moved under a batch. The first
    /// rebuild's cutover has no serving generation to lock, so a batch that started before it
    /// finds the checkpoint moved: if the serving generation changed since the cursor was
    /// loaded, switch to it; otherwise another instance moved the checkpoint, and this one
    /// must stop.
    async fn moved_by_cutover(
        &self,
        cursor: Cursor,
        error: PgProjectionError<P::Error>,
    ) -> Failure<P::Error> {
        if !matches!(error, PgProjectionError::CheckpointMoved { .. }) {
            return Failure::Other(error);
        }
        let serving = self.serving_generation().await;
        match serving {
            Ok(generation) if generation != cursor.generation => Failure::Generation,
            Ok(_) => Failure::Other(error),
            Err(e) => Failure::Other(PgProjectionError::Database(e)),
        }
    }

    fn failed(&self, event: &RecordedEvent, source: P::Error) -> PgProjectionError<P::Error> {
        let error = PgProjectionError::apply(self.projection.name(), event, source);
        tracing::error!(error = %error, "projection halted");
        error
    }

    /// Applies `events` after `expected` in one transaction, with the lease renewed and the
    /// checkpoint moved to the last event: as a batch, or `one_by_one` to find a failing event.
    #[tracing::instrument(name = "eventsource.projection.batch", skip_all,
        fields(projection = self.projection.name(), events = events.len()))]
    async fn commit(
        &self,
        lease: &PgLease,
        cursor: Cursor,
        events: &[RecordedEvent],
        one_by_one: bool,
    ) -> Result<(), Failure<P::Error>> {
        let name = self.projection.name();
        let expected = cursor.checkpoint;
        let mut tx = match &self.options.filter.tenant {
            Some(tenant) => begin_tenant(&self.pool, tenant).await?,
            None => self.pool.begin().await?,
        };
        // The serving generation, locked FOR SHARE until the commit (a cutover waits for this
        // batch, and this batch for a cutover), with the search path set to its schema.
        let generation: Option<(i64, String, String)> =
            sqlx::query_as(sql::ENTER_SERVING_GENERATION)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if generation.as_ref().map(|(g, ..)| *g) != cursor.generation {
            let _ = tx.rollback().await;
            return Err(Failure::Generation);
        }
        if one_by_one {
            for (i, event) in events.iter().enumerate() {
                if let Err(source) = self.projection.apply(&mut tx, event).await {
                    // Dropping the transaction would roll it back too, later.
                    let _ = tx.rollback().await;
                    return Err(Failure::Apply(i, source));
                }
            }
        } else if let Err(e) = self.projection.apply_batch(&mut tx, events).await {
            let _ = tx.rollback().await;
            tracing::debug!(projection = name, error = %e,
                "batch failed; applying it again event by event");
            return Err(Failure::Batch);
        }
        // The generation's path held the projection's writes; the bookkeeping is elsewhere.
        if let Some((_, outer_path, _)) = &generation {
            sqlx::query(sql::RESTORE_PATH)
                .bind(outer_path)
                .execute(&mut *tx)
                .await?;
        }
        let last = events.last().map_or(LogPosition::START, |e| e.position);
        if let Err(e) = tail::seal(&mut tx, lease, name, expected, last).await {
            let _ = tx.rollback().await;
            return Err(self.moved_by_cutover(cursor, e).await);
        }
        tx.commit().await?;
        for event in events {
            self.projection.side_effect(event).await;
        }
        Ok(())
    }
}
