//! [`PgProjectionHandler`]: a [`PgProjection`] fed by at-least-once delivery.

use std::sync::atomic::{AtomicU64, Ordering};

use eventsource_core::{EventHandler, LogPosition, RecordedEvent};
use sqlx::PgPool;

use super::PgProjection;
use super::error::PgProjectionError;
use crate::pooler::Autocommit;
use crate::row::position_to_db;
use crate::sql;
use crate::tenant::begin_tenant;

/// A [`PgProjection`] as an [`EventHandler`], with exactly-once effects over at-least-once
/// delivery: a Redis consumer group (`eventsource-redis`'s `ConsumerRunner` takes any
/// [`EventHandler`]), or any other delivery that may repeat an event or reorder.
///
/// Each event runs in one read-model transaction, scoped to the event's tenant: its position
/// is inserted into `applied_positions` (migration 0008), the projection applies it, and the
/// transaction commits. A position already there means a redelivery: the transaction rolls back
/// untouched and the event counts as a [duplicate](Self::duplicates). A crash before the commit
/// changes nothing; after it, the redelivered event is skipped.
///
/// This is the runner's model (bookkeeping in the read model's own transaction, a conflict
/// rolls everything back) with a record per event instead of a checkpoint: a consumer group
/// delivers entries concurrently to several consumers and a reclaimed entry arrives after later
/// ones, so a "last position" would skip it (ADR 0016). The role needs `SELECT, INSERT` on
/// `applied_positions` (`DELETE` for [`prune_below`](Self::prune_below)) and what the
/// projection writes; row level security applies as for the event's tenant.
///
/// # Examples
///
/// ```no_run
/// # use eventsource_core::RecordedEvent;
/// # use sqlx::PgConnection;
/// use eventsource_postgres::{PgProjection, PgProjectionHandler};
/// # struct OrderTotals;
/// # impl PgProjection for OrderTotals {
/// #     type Error = sqlx::Error;
/// #     fn name(&self) -> &str { "order-totals" }
/// #     async fn apply(&self, _: &mut PgConnection, _: &RecordedEvent) -> Result<(), sqlx::Error> {
/// #         Ok(())
/// #     }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// let handler = PgProjectionHandler::new(pool, OrderTotals);
/// // ConsumerRunner::new(conn, client, [key], "order-totals", "projector-1", handler, options)
/// # let _ = handler;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgProjectionHandler<P> {
    pool: PgPool,
    projection: P,
    duplicates: AtomicU64,
}

impl<P: PgProjection> PgProjectionHandler<P> {
    /// `projection` with its read model (and `applied_positions`) in `pool`'s database.
    pub fn new(pool: PgPool, projection: P) -> Self {
        Self {
            pool,
            projection,
            duplicates: AtomicU64::new(0),
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Redeliveries skipped so far by this handler.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Forgets the positions applied below `floor` (for example the trim floor of the group:
    /// entries below it can no longer be delivered); returns how many it forgot.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn prune_below(&self, floor: LogPosition) -> Result<u64, sqlx::Error> {
        let (transaction, position) = position_to_db(floor);
        let mut conn = Autocommit::acquire(&self.pool).await?;
        let done = sqlx::query(sql::PRUNE_APPLIED)
            .bind(self.projection.name())
            .bind(transaction)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        conn.commit().await?;
        Ok(done.rows_affected())
    }
}

impl<P: PgProjection> EventHandler for PgProjectionHandler<P> {
    type Error = PgProjectionError<P::Error>;

    #[tracing::instrument(name = "eventsource.projection.handle", skip_all,
        fields(projection = self.projection.name(), position = %event.position))]
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        let name = self.projection.name();
        let (transaction, position) = position_to_db(event.position);
        let mut tx = begin_tenant(&self.pool, event.tenant()).await?;
        let recorded: Option<i32> = sqlx::query_scalar(sql::RECORD_APPLIED)
            .bind(name)
            .bind(transaction)
            .bind(position)
            .fetch_optional(&mut *tx)
            .await?;
        if recorded.is_none() {
            tx.rollback().await?;
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("skipping an event applied before");
            return Ok(());
        }
        if let Err(source) = self.projection.apply(&mut tx, event).await {
            let _ = tx.rollback().await;
            return Err(PgProjectionError::apply(name, event, source));
        }
        tx.commit().await?;
        self.projection.side_effect(event).await;
        Ok(())
    }

    fn is_permanent(&self, error: &Self::Error) -> bool {
        matches!(error, PgProjectionError::Apply { source, .. } if self.projection.is_permanent(source))
    }
}
