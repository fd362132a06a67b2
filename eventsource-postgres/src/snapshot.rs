//! [`PgSnapshotStore`]: aggregate snapshots in PostgreSQL.

use eventsource_core::{Snapshot, SnapshotStore, StoreError, StreamId};
use sqlx::PgPool;

use crate::error::{out_of_range, store_error};
use crate::pooler::Autocommit;
use crate::row::{SnapshotRow, version_from_db, version_to_db};
use crate::sql;
use crate::tenant::begin_tenant;

/// A [`SnapshotStore`] on PostgreSQL: one row per stream and snapshot schema version.
///
/// Saving is a monotonic upsert (`WHERE stored.version < new.version`), so a slow writer with
/// an older snapshot never replaces a newer one. Loading asks for one schema version, so a
/// snapshot written by an older build of the aggregate is simply not found; a snapshot that no
/// longer decodes is the repository's to ignore. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct PgSnapshotStore {
    pool: PgPool,
}

impl PgSnapshotStore {
    /// A snapshot store on `pool` (the schema comes with [`MIGRATOR`](crate::MIGRATOR)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl SnapshotStore for PgSnapshotStore {
    #[tracing::instrument(name = "eventsource.snapshot.load", skip_all, fields(stream = %stream, schema_version))]
    async fn load(
        &self,
        stream: &StreamId,
        schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        let schema = i32::try_from(schema_version).map_err(|_| out_of_range("schema version"))?;
        // One round trip (three behind a transaction pooler): autocommit, the function scopes
        // itself to the tenant.
        let mut conn = Autocommit::acquire(&self.pool).await.map_err(store_error)?;
        let row: Option<SnapshotRow> = sqlx::query_as(sql::LOAD_SNAPSHOT)
            .bind(stream.tenant().as_str())
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .bind(schema)
            .fetch_optional(&mut *conn)
            .await
            .map_err(store_error)?;
        conn.commit().await.map_err(store_error)?;
        row.map(|row| {
            let mut snapshot = Snapshot::new(
                stream.clone(),
                version_from_db(row.version)?,
                schema_version,
                row.state,
            );
            snapshot.taken_at = row.taken_at;
            Ok(snapshot)
        })
        .transpose()
    }

    #[tracing::instrument(name = "eventsource.snapshot.save", skip_all, fields(stream = %snapshot.stream, version = %snapshot.version))]
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let schema =
            i32::try_from(snapshot.schema_version).map_err(|_| out_of_range("schema version"))?;
        let stream = &snapshot.stream;
        let mut tx = begin_tenant(&self.pool, stream.tenant())
            .await
            .map_err(store_error)?;
        sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(stream.tenant().as_str())
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .bind(schema)
            .bind(version_to_db(snapshot.version))
            .bind(&snapshot.state)
            .bind(snapshot.taken_at)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }
}
