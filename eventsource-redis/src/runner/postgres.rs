//! A [`TransactionalProjection`] whose read model lives in PostgreSQL (feature `postgres`).

use std::fmt;

use eventsource_core::RecordedEvent;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use super::projection::{Applied, TransactionalProjection};

/// Creates the table of applied positions if missing. Run it with the application's other
/// migrations, or call [`PgProjection::create_table`].
pub const CREATE_APPLIED_TABLE: &str = "\
CREATE TABLE IF NOT EXISTS eventsource_redis_applied (
    projection     text        NOT NULL,
    transaction_id bigint      NOT NULL,
    position       bigint      NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, transaction_id, position)
)";

/// Records a position; no row back means it was already applied.
const RECORD_APPLIED: &str = "\
INSERT INTO eventsource_redis_applied (projection, transaction_id, position)
VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING";

/// Forgets positions below a floor (everything the group has acknowledged).
const PRUNE_APPLIED: &str = "\
DELETE FROM eventsource_redis_applied
WHERE projection = $1 AND (transaction_id, position) < ($2, $3)";

/// Why a PostgreSQL projection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgProjectionError {
    /// A statement failed; the transaction was rolled back.
    #[error("projection statement failed")]
    Sql(#[from] sqlx::Error),
    /// The log position does not fit PostgreSQL's `bigint`.
    #[error("log position {0} does not fit a bigint")]
    PositionOutOfRange(eventsource_core::LogPosition),
}

/// The user's read-model change, run inside the projection's transaction.
pub type ApplyFn = dyn for<'c> Fn(&'c mut PgConnection, &'c RecordedEvent) -> BoxFuture<'c, Result<(), sqlx::Error>>
    + Send
    + Sync;

/// A read model in PostgreSQL with exactly-once effects over an at-least-once group.
///
/// Each event runs in one transaction: the event's position is inserted into
/// `eventsource_redis_applied` (a duplicate inserts nothing and the transaction is rolled back
/// untouched), then `apply` changes the read model, then the transaction commits. A crash
/// before the commit changes nothing; after it, the redelivered event is skipped.
///
/// ```no_run
/// # use eventsource_redis::{ConsumerRunner, PgProjection, ProjectionHandler, RunnerOptions};
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
/// # let client = redis::Client::open("redis://127.0.0.1/")?;
/// # let conn = client.get_connection_manager().await?;
/// PgProjection::create_table(&pool).await?;
/// let projection = PgProjection::new(pool.clone(), "order-totals", |conn, event| {
///     Box::pin(async move {
///         sqlx::query("UPDATE totals SET n = n + 1 WHERE tenant = $1")
///             .bind(event.tenant().as_str())
///             .execute(conn)
///             .await?;
///         Ok(())
///     })
/// });
/// let runner = ConsumerRunner::new(
///     conn,
///     client,
///     ["es:{acme}:events"],
///     "order-totals",
///     "projector-1",
///     ProjectionHandler::new(projection),
///     RunnerOptions::default(),
/// );
/// runner.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
pub struct PgProjection {
    pool: PgPool,
    name: String,
    apply: Box<ApplyFn>,
}

impl fmt::Debug for PgProjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProjection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PgProjection {
    /// A projection called `name` applying events with `apply`.
    pub fn new<F>(pool: PgPool, name: impl Into<String>, apply: F) -> Self
    where
        F: for<'c> Fn(
                &'c mut PgConnection,
                &'c RecordedEvent,
            ) -> BoxFuture<'c, Result<(), sqlx::Error>>
            + Send
            + Sync
            + 'static,
    {
        Self {
            pool,
            name: name.into(),
            apply: Box::new(apply),
        }
    }

    /// Runs [`CREATE_APPLIED_TABLE`].
    pub async fn create_table(pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(CREATE_APPLIED_TABLE).execute(pool).await?;
        Ok(())
    }

    /// Forgets applied positions below `floor` (for example the trim floor of the group):
    /// entries below it can no longer be delivered.
    pub async fn prune_below(
        &self,
        floor: eventsource_core::LogPosition,
    ) -> Result<u64, PgProjectionError> {
        let (tx, pos) = to_bigints(floor)?;
        let done = sqlx::query(PRUNE_APPLIED)
            .bind(&self.name)
            .bind(tx)
            .bind(pos)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

fn to_bigints(position: eventsource_core::LogPosition) -> Result<(i64, i64), PgProjectionError> {
    match (
        i64::try_from(position.transaction()),
        i64::try_from(position.position()),
    ) {
        (Ok(tx), Ok(pos)) => Ok((tx, pos)),
        _ => Err(PgProjectionError::PositionOutOfRange(position)),
    }
}

impl TransactionalProjection for PgProjection {
    type Error = PgProjectionError;

    async fn apply_once(&self, event: &RecordedEvent) -> Result<Applied, Self::Error> {
        let (tx_id, pos) = to_bigints(event.position)?;
        let mut tx = self.pool.begin().await?;
        let recorded = sqlx::query(RECORD_APPLIED)
            .bind(&self.name)
            .bind(tx_id)
            .bind(pos)
            .execute(&mut *tx)
            .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Applied::Duplicate);
        }
        (self.apply)(&mut tx, event).await?;
        tx.commit().await?;
        Ok(Applied::Applied)
    }
}
