//! [`PgRebuild`]: a blue/green rebuild of a projection while its live generation serves.
//!
//! - [`PgRebuild`] (here): the rebuild (ADR 0018); [`PgRebuildable`] (`rebuildable.rs`): the
//!   projection's side.
//! - [`PgTenantRebuildable`] and [`PgRebuild::rebuild_tenant`] (`tenant.rs`): one tenant's
//!   rows of a read model of all tenants (ADR 0020).
//! - the cutover (`cutover.rs`), one transaction.
//! - the parallel fill of [`RebuildOptions::with_workers`] (`parallel.rs`).
//! - [`RebuildOptions`] (`options.rs`); [`RebuildProgress`], [`RebuildPhase`] and
//!   [`RebuildReport`] (`progress.rs`).

mod cutover;
mod naming;
mod options;
mod parallel;
mod progress;
mod rebuildable;
mod tenant;

use std::time::{Duration, Instant};

use eventsource_core::{EventStore, LogPosition, RecordedEvent, StoreError};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use options::RebuildOptions;
pub use progress::{RebuildPhase, RebuildProgress, RebuildReport};
pub use rebuildable::PgRebuildable;
pub use tenant::PgTenantRebuildable;

use super::error::PgProjectionError;
use super::lease::PgLease;
use crate::checkpoint::PgCheckpointStore;
use crate::error::is_lock_timeout;
use crate::pooler::Autocommit;
use crate::row::position_to_db;
use crate::sql;
use crate::store::PgEventStore;
use crate::tenant::begin_tenant;

/// A blue/green rebuild of a [`PgRebuildable`] projection while its live generation serves.
///
/// `run` takes the rebuild lease (`<projection>/rebuild`, a [`PgLease`]: two rebuilds of a
/// projection never run at once, the second is refused), creates generation N+1 in a schema of
/// its own (or resumes the one an earlier run left half-built), fills it from the log in large
/// batches (each one transaction, its checkpoint moved by compare-and-set and the lease renewed
/// in it), and once a read returns at most [`cutover_lag`](RebuildOptions::with_cutover_lag)
/// events it cuts over in one transaction:
///
/// 1. it locks the projection's generation rows: a [`PgProjectionRunner`](crate::PgProjectionRunner)
///    batch in flight finishes first, and the next waits;
/// 2. it applies the rest of the log to N+1, at least up to the live checkpoint (so readers
///    never see the read model go back);
/// 3. it moves the live checkpoint there, marks N+1 serving and N retired, and points the
///    reader views at N+1; commits.
///
/// The live runner's next batch finds the generation changed, reloads its checkpoint and
/// continues on N+1. Readers see N until the commit, then N+1, complete up to the cutover
/// position. N's schema is dropped after the grace period, by the next rebuild's start or end
/// or by [`drop_retired`](Self::drop_retired).
///
/// The views are replaced in place (`CREATE OR REPLACE VIEW`), so what was granted on them
/// survives; when N+1 changed a table's columns the view is dropped and created with the same
/// grants. A view reads its generation with its owner's rights: readers need `SELECT` on the
/// views (and `USAGE` on their schema) only. The cutover refuses to move the live checkpoint
/// backwards ([`PgProjectionError::CutoverBehind`]).
///
/// # Readers' transactions across a cutover
///
/// A transaction that has read a view holds it until it ends: the cutover waits for it (up to
/// [`with_cutover_lock_timeout`](RebuildOptions::with_cutover_lock_timeout), then retries),
/// so within that transaction every read sees N. Under `READ COMMITTED` (PostgreSQL's
/// default) each statement sees the generation serving when it starts, complete. The caveat
/// is `REPEATABLE READ` and `SERIALIZABLE`: a transaction whose snapshot was taken before the
/// cutover (by any statement) and which reads a view for the first time after it gets the
/// new view, pointing at N+1, but reads N+1's tables as of its old snapshot: partly built. In
/// such transactions read the views first, or read them in a transaction of their own.
///
/// [`PgProjection::side_effect`](crate::PgProjection::side_effect) is never called by a rebuild.
///
/// A rebuild stopped at any point (cancelled, killed, failed) leaves N+1 building and N
/// serving; the next `run` resumes N+1 from its checkpoint. A failing event stops it with
/// [`PgProjectionError::Apply`] naming the event, the checkpoint just before it.
///
/// # Examples
///
/// ```no_run
/// # use eventsource_core::RecordedEvent;
/// # use eventsource_postgres::{PgEventStore, PgProjection, PgRebuild, PgRebuildable, RebuildOptions};
/// # use sqlx::PgConnection;
/// # use tokio_util::sync::CancellationToken;
/// # struct EventCounts;
/// # impl PgProjection for EventCounts {
/// #     type Error = sqlx::Error;
/// #     fn name(&self) -> &str { "event-counts" }
/// #     async fn apply(&self, _: &mut PgConnection, _: &RecordedEvent) -> Result<(), sqlx::Error> {
/// #         Ok(())
/// #     }
/// # }
/// # impl PgRebuildable for EventCounts {
/// #     fn tables(&self) -> &[&str] { &["event_counts"] }
/// #     async fn create_tables(&self, _: &mut PgConnection) -> Result<(), sqlx::Error> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let store = PgEventStore::new(sqlx::PgPool::connect("postgres://localhost/app").await?);
/// let rebuild = PgRebuild::new(store, EventCounts, RebuildOptions::default());
/// let mut progress = rebuild.progress();
/// tokio::spawn(async move {
///     while progress.changed().await.is_ok() {
///         let p = progress.borrow().clone();
///         println!("{}/{} events, {:.0}/s, eta {:?}", p.processed, p.total, p.events_per_second, p.eta);
///     }
/// });
/// if let Some(report) = rebuild.run(CancellationToken::new()).await? {
///     println!("generation {} serves", report.generation);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgRebuild<P> {
    store: PgEventStore,
    pool: PgPool,
    projection: P,
    options: RebuildOptions,
    progress: watch::Sender<RebuildProgress>,
}

/// The generation being built.
struct Building {
    generation: i64,
    schema: String,
    checkpoint_name: String,
    checkpoint: Option<LogPosition>,
}

/// Counters of this run.
#[derive(Clone, Copy)]
struct Meter {
    started: Instant,
    processed: u64,
    remaining_at_count: u64,
    processed_at_count: u64,
}

impl<P: PgRebuildable> PgRebuild<P> {
    /// A rebuild of `projection` from the log of `store`, its generations (with the checkpoints
    /// and the leases) in the store's database.
    pub fn new(store: PgEventStore, projection: P, options: RebuildOptions) -> Self {
        Self {
            pool: store.pool().clone(),
            store,
            projection,
            options,
            progress: watch::Sender::new(RebuildProgress::starting()),
        }
    }

    /// Writes the generations, the checkpoints and the leases through `pool` instead of the
    /// store's pool (as [`PgProjectionRunner::with_read_model`](crate::PgProjectionRunner::with_read_model)).
    #[must_use]
    pub fn with_read_model(mut self, pool: PgPool) -> Self {
        self.pool = pool;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Progress reports, updated after every batch and at each phase (and, with the `metrics`
    /// feature, the gauges of [`metrics`](crate::metrics)).
    #[must_use]
    pub fn progress(&self) -> watch::Receiver<RebuildProgress> {
        self.progress.subscribe()
    }

    /// Builds the next generation and cuts over to it; `None` when `shutdown` was cancelled
    /// first (the generation stays building, and the next `run` resumes it).
    ///
    /// # Errors
    ///
    /// [`PgProjectionError::LeaseHeld`] when another rebuild of the projection runs (its
    /// `projection` is the lease's name, `<projection>/rebuild`); [`PgProjectionError::Apply`]
    /// when the projection fails on an event (the generation stays building, its checkpoint
    /// just before the event; N keeps serving); [`PgProjectionError::LeaseLost`] when another
    /// rebuild took the lease over; [`PgProjectionError::SchemaPrefixTaken`] when another
    /// projection's generations use its schema prefix; otherwise a database or log error. N
    /// keeps serving in every case.
    ///
    /// # Cancel safety
    ///
    /// Cancel through `shutdown` (checked between batches). Dropping the future rolls back
    /// the transaction in flight and leaves the lease to run out: nothing half-done is
    /// committed, and the next `run` under the same instance id resumes at once.
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<Option<RebuildReport>, PgProjectionError<P::Error>> {
        let lease = self.take_lease().await?;
        let outcome = self.build(&lease, &shutdown).await;
        self.let_go(lease, &outcome).await;
        outcome
    }

    /// Takes the rebuild lease, `<projection>/rebuild`, or fails with
    /// [`PgProjectionError::LeaseHeld`].
    async fn take_lease(&self) -> Result<PgLease, PgProjectionError<P::Error>> {
        PgLease::try_acquire(
            &self.pool,
            format!("{}/rebuild", self.projection.name()),
            self.options.instance_id.clone(),
            self.options.lease_ttl,
        )
        .await
        .map_err(PgProjectionError::from_lease)
    }

    /// Releases the rebuild lease unless it was lost.
    async fn let_go<T>(&self, lease: PgLease, outcome: &Result<T, PgProjectionError<P::Error>>) {
        if !matches!(outcome, Err(PgProjectionError::LeaseLost { .. }))
            && let Err(e) = lease.release().await
        {
            tracing::warn!(projection = self.projection.name(), error = %e,
                "rebuild lease not released; it will run out");
        }
    }

    async fn build(
        &self,
        lease: &PgLease,
        shutdown: &CancellationToken,
    ) -> Result<Option<RebuildReport>, PgProjectionError<P::Error>> {
        self.drop_retired().await?;
        let mut building = self.prepare().await?;
        let generation = u64::try_from(building.generation).unwrap_or(0);
        tracing::info!(projection = self.projection.name(), generation,
            schema = %building.schema, checkpoint = ?building.checkpoint, "rebuilding");
        let mut meter = Meter {
            started: Instant::now(),
            processed: 0,
            remaining_at_count: self.count_after(building.checkpoint).await?,
            processed_at_count: 0,
        };
        self.report(generation, RebuildPhase::Filling, &meter);
        let Some(n) = self
            .fill_parallel(lease, &mut building, &meter, shutdown)
            .await?
        else {
            return Ok(None);
        };
        meter.processed += n;
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            let n = self.step(lease, &mut building).await?;
            meter.processed += n as u64;
            if n < self.options.batch_size {
                // At the head: count again what is left, writers appended meanwhile.
                meter.remaining_at_count = self.count_after(building.checkpoint).await?;
                meter.processed_at_count = meter.processed;
            }
            self.report(generation, RebuildPhase::Filling, &meter);
            if n < self.options.batch_size && n <= self.options.cutover_lag {
                break;
            }
        }
        self.report(generation, RebuildPhase::CuttingOver, &meter);
        let mut attempt = 1;
        let applied = loop {
            match self.cut_over(lease, &mut building, false).await {
                Err(PgProjectionError::Database(e)) if is_lock_timeout(&e) && attempt < 10 => {
                    tracing::warn!(
                        projection = self.projection.name(),
                        attempt,
                        "readers held the views past the cutover's lock timeout; trying again"
                    );
                    tokio::time::sleep(self.options.cutover_lock_timeout).await;
                    attempt += 1;
                }
                outcome => break outcome?,
            }
        };
        meter.processed += applied;
        meter.remaining_at_count = 0;
        meter.processed_at_count = meter.processed;
        self.report(generation, RebuildPhase::Done, &meter);
        tracing::info!(projection = self.projection.name(), generation,
            position = ?building.checkpoint, "rebuild cut over");
        self.drop_retired().await?;
        Ok(Some(RebuildReport {
            generation,
            cutover_position: building.checkpoint,
            processed: meter.processed,
            elapsed: meter.started.elapsed(),
        }))
    }

    fn report(&self, generation: u64, phase: RebuildPhase, meter: &Meter) {
        let total = meter.processed_at_count + meter.remaining_at_count;
        let total = total.max(meter.processed);
        let seconds = meter.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
        let events_per_second = if seconds > 0.0 {
            meter.processed as f64 / seconds
        } else {
            0.0
        };
        #[allow(clippy::cast_precision_loss, reason = "an estimate for display")]
        let eta = (events_per_second > 0.0)
            .then(|| Duration::from_secs_f64((total - meter.processed) as f64 / events_per_second));
        let progress = RebuildProgress {
            phase,
            generation,
            processed: meter.processed,
            total,
            events_per_second,
            eta,
        };
        crate::metrics::rebuild_progress(self.projection.name(), &progress);
        self.progress.send_replace(progress);
    }

    /// Finds the generation being built, or creates the next one with its schema and tables
    /// (in one transaction: a crash leaves either nothing or a generation ready to fill).
    async fn prepare(&self) -> Result<Building, PgProjectionError<P::Error>> {
        let name = self.projection.name();
        let mut tx = self.pool.begin().await?;
        let found: Option<(i64, String)> = sqlx::query_as(sql::BUILDING_GENERATION)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let (generation, schema) = if let Some(found) = found {
            found
        } else {
            let prefix = naming::prefix_of(name, self.options.schema_prefix.as_deref());
            let (generation, schema): (i64, String) = sqlx::query_as(sql::CREATE_GENERATION)
                .bind(name)
                .bind(&prefix)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| prefix_taken(e, name, &prefix))?;
            sqlx::query(sql::CREATE_GENERATION_SCHEMA)
                .bind(&schema)
                .execute(&mut *tx)
                .await?;
            let outer_path = enter_path(&mut tx, &schema).await?;
            self.projection.create_tables(&mut tx).await?;
            restore_path(&mut tx, &outer_path).await?;
            (generation, schema)
        };
        let checkpoint_name = format!("{name}/g{generation}");
        let checkpoint = PgCheckpointStore::load_in_tx(&mut tx, &checkpoint_name)
            .await
            .map_err(PgProjectionError::Store)?;
        tx.commit().await?;
        Ok(Building {
            generation,
            schema,
            checkpoint_name,
            checkpoint,
        })
    }

    /// Events of the log (through the filter) after `checkpoint`.
    async fn count_after(
        &self,
        checkpoint: Option<LogPosition>,
    ) -> Result<u64, PgProjectionError<P::Error>> {
        let (transaction, position) = position_to_db(checkpoint.unwrap_or(self.options.start));
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let n: i64 = sqlx::query_scalar(sql::COUNT_LOG_AFTER)
            .bind(transaction)
            .bind(position)
            .bind(
                self.options
                    .filter
                    .tenant
                    .as_ref()
                    .map(eventsource_core::TenantId::as_str),
            )
            .bind(self.options.filter.since)
            .fetch_one(&mut *conn)
            .await?;
        conn.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn read_after(
        &self,
        checkpoint: Option<LogPosition>,
    ) -> Result<Vec<RecordedEvent>, PgProjectionError<P::Error>> {
        self.store
            .read_all(
                checkpoint.unwrap_or(self.options.start),
                self.options.batch_size,
                &self.options.filter,
            )
            .await
            .map_err(PgProjectionError::Store)
    }

    /// Begins a transaction, scoped to the filter's tenant.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        match &self.options.filter.tenant {
            Some(tenant) => begin_tenant(&self.pool, tenant).await,
            None => self.pool.begin().await,
        }
    }

    /// Reads and commits one batch; returns its size.
    async fn step(
        &self,
        lease: &PgLease,
        building: &mut Building,
    ) -> Result<usize, PgProjectionError<P::Error>> {
        let batch = self.read_after(building.checkpoint).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        self.commit(lease, building, &batch, false).await?;
        Ok(batch.len())
    }

    /// Applies `events` to the generation in one transaction with its checkpoint moved and the
    /// lease renewed: as a batch ([`PgProjection::apply_batch`](crate::PgProjection::apply_batch)), or `one_by_one` when the
    /// batch failed, then commits those before a failing event and names it.
    async fn commit(
        &self,
        lease: &PgLease,
        building: &mut Building,
        events: &[RecordedEvent],
        one_by_one: bool,
    ) -> Result<(), PgProjectionError<P::Error>> {
        let mut tx = self.begin().await?;
        let outer_path = enter_path(&mut tx, &building.schema).await?;
        if !one_by_one && let Err(e) = self.projection.apply_batch(&mut tx, events).await {
            let _ = tx.rollback().await;
            tracing::debug!(projection = self.projection.name(), error = %e,
                "rebuild batch failed; applying it again event by event");
            return Box::pin(self.commit(lease, building, events, true)).await;
        }
        for (i, event) in events.iter().enumerate().filter(|_| one_by_one) {
            if let Err(source) = self.projection.apply(&mut tx, event).await {
                let _ = tx.rollback().await;
                if i > 0 {
                    Box::pin(self.commit(lease, building, &events[..i], true)).await?;
                }
                let error = PgProjectionError::apply(self.projection.name(), event, source);
                tracing::error!(error = %error, "rebuild halted");
                return Err(error);
            }
        }
        let last = events.last().map_or(LogPosition::START, |e| e.position);
        restore_path(&mut tx, &outer_path).await?;
        self.fence(lease, &mut tx, building, last).await?;
        tx.commit().await?;
        building.checkpoint = Some(last);
        Ok(())
    }

    /// Renews the lease and moves the generation's checkpoint to `to`, in `tx`.
    async fn fence(
        &self,
        lease: &PgLease,
        tx: &mut PgConnection,
        building: &Building,
        to: LogPosition,
    ) -> Result<(), PgProjectionError<P::Error>> {
        lease
            .renew_in_tx(tx)
            .await
            .map_err(PgProjectionError::from_lease)?;
        save_checkpoint(tx, &building.checkpoint_name, building.checkpoint, to).await
    }

    /// Drops the schemas of the projection's retired generations whose grace period is over;
    /// returns their generation numbers. [`run`](Self::run) does it at its start and after its
    /// cutover; call it to drop a generation once its grace period is over without waiting
    /// for the next rebuild.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn drop_retired(&self) -> Result<Vec<u64>, sqlx::Error> {
        let name = self.projection.name();
        let mut tx = self.pool.begin().await?;
        let due: Vec<(i64, String)> = sqlx::query_as(sql::DUE_GENERATIONS)
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
        for (generation, schema) in &due {
            sqlx::query(sql::DROP_GENERATION_SCHEMA)
                .bind(schema)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::MARK_GENERATION_DROPPED)
                .bind(name)
                .bind(generation)
                .execute(&mut *tx)
                .await?;
            tracing::info!(projection = name, generation, %schema, "retired generation dropped");
        }
        tx.commit().await?;
        Ok(due
            .into_iter()
            .map(|(g, _)| u64::try_from(g).unwrap_or(0))
            .collect())
    }
}

/// Sets the transaction's `search_path` to the generation's `schema` alone (a table the
/// projection forgot to create there is an error, never one of `public`); returns the path to
/// put back with [`restore_path`] before the bookkeeping.
pub(super) async fn enter_path(tx: &mut PgConnection, schema: &str) -> Result<String, sqlx::Error> {
    let (outer_path,): (String,) = sqlx::query_as(sql::SET_GENERATION_PATH)
        .bind(schema)
        .fetch_one(tx)
        .await?;
    Ok(outer_path)
}

/// Puts the transaction's `search_path` back to `path` (from [`enter_path`]).
pub(super) async fn restore_path(tx: &mut PgConnection, path: &str) -> Result<(), sqlx::Error> {
    sqlx::query(sql::RESTORE_PATH)
        .bind(path)
        .execute(tx)
        .await
        .map(drop)
}

/// Moves the checkpoint `name` from `expected` to `to` by compare-and-set.
async fn save_checkpoint<E: std::error::Error + 'static>(
    tx: &mut PgConnection,
    name: &str,
    expected: Option<LogPosition>,
    to: LogPosition,
) -> Result<(), PgProjectionError<E>> {
    match PgCheckpointStore::save_in_tx(tx, name, expected, to).await {
        Ok(()) => Ok(()),
        Err(StoreError::CheckpointConflict {
            expected, actual, ..
        }) => Err(PgProjectionError::CheckpointMoved {
            projection: name.to_owned(),
            expected,
            actual,
        }),
        Err(e) => Err(PgProjectionError::Store(e)),
    }
}

/// A generation's schema already belongs to another projection (`schema_name` is unique):
/// the two share a schema prefix. Their generations would otherwise be one schema.
fn prefix_taken<E: std::error::Error + 'static>(
    err: sqlx::Error,
    name: &str,
    prefix: &str,
) -> PgProjectionError<E> {
    let taken = err
        .as_database_error()
        .and_then(|e| e.constraint())
        .is_some_and(|c| c == "projection_generations_schema_key");
    if taken {
        PgProjectionError::SchemaPrefixTaken {
            projection: name.to_owned(),
            prefix: prefix.to_owned(),
        }
    } else {
        PgProjectionError::Database(err)
    }
}
