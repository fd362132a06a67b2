//! [`PgCheckpointStore`]: reader checkpoints with compare-and-set.

use eventsource_core::{CheckpointStore, LogPosition, StoreError};
use sqlx::{PgConnection, PgPool};

use crate::error::store_error;
use crate::pooler::Autocommit;
use crate::row::{CheckpointRow, position_to_db};
use crate::sql;

/// A [`CheckpointStore`] on PostgreSQL.
///
/// A checkpoint moves only from the position the caller expects (compare-and-set); a second
/// instance of the same reader gets [`StoreError::CheckpointConflict`]. A projection writing its
/// read model in the same database calls [`PgCheckpointStore::save_in_tx`] in the transaction
/// of its read-model writes, which makes its effects exactly-once. Checkpoints are not
/// tenant-scoped. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct PgCheckpointStore {
    pool: PgPool,
}

impl PgCheckpointStore {
    /// A checkpoint store on `pool` (the schema comes with [`MIGRATOR`](crate::MIGRATOR)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Loads a checkpoint inside the caller's transaction.
    pub async fn load_in_tx(
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<Option<LogPosition>, StoreError> {
        let row: Option<CheckpointRow> = sqlx::query_as(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(conn)
            .await
            .map_err(store_error)?;
        row.map(LogPosition::try_from).transpose()
    }

    /// Moves a checkpoint from `expected` to `position` inside the caller's transaction.
    ///
    /// A lost compare-and-set raises no database error: the transaction stays usable (the
    /// caller normally rolls it back, with the read-model writes it made).
    ///
    /// # Errors
    ///
    /// [`StoreError::CheckpointConflict`] when the stored position is not `expected`.
    #[tracing::instrument(name = "eventsource.checkpoint.save", skip_all, fields(name, %position))]
    pub async fn save_in_tx(
        conn: &mut PgConnection,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        let (transaction, global_position) = position_to_db(position);
        let moved: Option<i32> = match expected {
            None => sqlx::query_scalar(sql::CREATE_CHECKPOINT)
                .bind(name)
                .bind(transaction)
                .bind(global_position)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_error)?,
            Some(expected_position) => {
                let (expected_transaction, expected_global) = position_to_db(expected_position);
                sqlx::query_scalar(sql::MOVE_CHECKPOINT)
                    .bind(name)
                    .bind(transaction)
                    .bind(global_position)
                    .bind(expected_transaction)
                    .bind(expected_global)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(store_error)?
            }
        };
        if moved.is_some() {
            return Ok(());
        }
        let actual = Self::load_in_tx(conn, name).await?;
        tracing::debug!(name, ?expected, ?actual, "checkpoint conflict");
        Err(StoreError::CheckpointConflict {
            name: name.to_owned(),
            expected,
            actual,
        })
    }
}

impl CheckpointStore for PgCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<LogPosition>, StoreError> {
        let mut conn = Autocommit::acquire(&self.pool).await.map_err(store_error)?;
        let loaded = Self::load_in_tx(&mut conn, name).await?;
        conn.commit().await.map_err(store_error)?;
        Ok(loaded)
    }

    async fn save(
        &self,
        name: &str,
        expected: Option<LogPosition>,
        position: LogPosition,
    ) -> Result<(), StoreError> {
        // Behind a transaction pooler the compare-and-set and the reread after a conflict
        // share one transaction; they need not, but each needs one of its own (`pooler.rs`).
        let mut conn = Autocommit::acquire(&self.pool).await.map_err(store_error)?;
        Self::save_in_tx(&mut conn, name, expected, position).await?;
        conn.commit().await.map_err(store_error)
    }
}
