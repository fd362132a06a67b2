//! The read model of the PostgreSQL projection crash tests (`tests/pg_projection_crash.rs`),
//! shared by the test and the projector process it kills (`src/bin/projection_child.rs`).
//!
//! Each application of an event adds a row to `pg_projection_crash_rows` (no unique key, so an
//! event applied twice shows as two rows; `seq` gives the order of application; `holder` the
//! instance and process) and counts it into `pg_projection_crash_totals`, a table a clean build
//! must reproduce.

use eventsource_core::RecordedEvent;
use eventsource_postgres::{PgProjection, PgRebuildable};
use sqlx::{PgConnection, PgPool};

/// Creates the model's tables, one caller at a time.
///
/// # Errors
///
/// When a statement fails.
pub async fn create_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Concurrent CREATE TABLE IF NOT EXISTS can collide on the type's name.
    sqlx::query("SELECT pg_advisory_xact_lock(7245116)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS pg_projection_crash_rows (
             seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             projection text NOT NULL, event_id uuid NOT NULL, holder text NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS pg_projection_crash_totals (
             projection text NOT NULL, stream text NOT NULL, events bigint NOT NULL,
             labels numeric NOT NULL, PRIMARY KEY (projection, stream))",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Rows and totals, as described in the module's documentation.
#[derive(Debug)]
pub struct CrashModel {
    name: String,
    holder: String,
}

impl CrashModel {
    /// The projection `name`, its rows marked with `holder`.
    #[must_use]
    pub fn new(name: &str, holder: &str) -> Self {
        Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
        }
    }
}

impl PgProjection for CrashModel {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pg_projection_crash_rows (projection, event_id, holder) VALUES ($1, $2, $3)",
        )
        .bind(&self.name)
        .bind(event.event_id.as_uuid())
        .bind(&self.holder)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO pg_projection_crash_totals AS t (projection, stream, events, labels)
             VALUES ($1, $2, 1, $3::numeric)
             ON CONFLICT (projection, stream)
             DO UPDATE SET events = t.events + 1, labels = t.labels + EXCLUDED.labels",
        )
        .bind(&self.name)
        .bind(event.stream.to_string())
        .bind(event.payload["label"].as_u64().unwrap_or(0).to_string())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The read model of the rebuild crash test: one row per application of an event in the
/// generation's table `crash_ledger` (no unique key: a double shows as two rows).
#[derive(Debug)]
pub struct LedgerModel {
    name: String,
}

impl LedgerModel {
    /// The projection `name`.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }
}

impl PgProjection for LedgerModel {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO crash_ledger (event_id) VALUES ($1)")
            .bind(event.event_id.as_uuid())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

impl PgRebuildable for LedgerModel {
    fn tables(&self) -> &[&str] {
        &["crash_ledger"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE crash_ledger (event_id uuid NOT NULL)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
