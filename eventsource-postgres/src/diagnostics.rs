//! What holds the log back, the start-up guard and the health check.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::error::PgStoreError;
use crate::row::xid_from_db;
use crate::sql;

/// The session whose open write transaction holds back every reader of the global log.
///
/// Readers only see events of transactions older than the oldest running one, so one
/// long-running write transaction anywhere in the cluster stalls them until it ends.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[non_exhaustive]
pub struct LogBlocker {
    /// Server process id (for `pg_terminate_backend`).
    pub pid: i32,
    /// The transaction id it holds (32-bit form, as `pg_stat_activity` shows it).
    pub transaction_id: String,
    /// How many transactions the cluster started since this one.
    pub age: i32,
    /// When the transaction started.
    pub xact_start: Option<DateTime<Utc>>,
    /// `active`, `idle in transaction`, ... (`None` without the `pg_read_all_stats` role).
    pub state: Option<String>,
    /// The client's `application_name`.
    pub application_name: Option<String>,
    /// The database the session is connected to.
    pub database: Option<String>,
}

/// The oldest open write transaction in the cluster, if any: what holds the log back.
///
/// Other roles' sessions are visible only to superusers and members of `pg_read_all_stats`.
pub async fn log_blocker<'c>(
    executor: impl PgExecutor<'c>,
) -> Result<Option<LogBlocker>, PgStoreError> {
    Ok(sqlx::query_as(sql::LOG_BLOCKER)
        .fetch_optional(executor)
        .await?)
}

/// Refuses to go on when the log holds transaction ids the cluster has not reached.
///
/// A dump restored into another cluster keeps its `transaction_id`s while the cluster's
/// counter restarts lower: readers would wait for a horizon that new events sort before. Call
/// it before starting log readers, with a role that bypasses row level security.
///
/// # Errors
///
/// [`PgStoreError::TransactionIdsAhead`] in that case.
pub async fn check_transaction_ids<'c>(executor: impl PgExecutor<'c>) -> Result<(), PgStoreError> {
    let (stored, next): (Option<String>, String) = sqlx::query_as(sql::TRANSACTION_IDS)
        .fetch_one(executor)
        .await?;
    let cluster = xid_from_db(&next)?;
    if let Some(stored) = stored {
        let stored = xid_from_db(&stored)?;
        if stored >= cluster {
            tracing::error!(stored, cluster, "log transaction ids ahead of the cluster");
            return Err(PgStoreError::TransactionIdsAhead { stored, cluster });
        }
    }
    Ok(())
}

/// One round trip to the database.
pub async fn health_check<'c>(executor: impl PgExecutor<'c>) -> Result<(), PgStoreError> {
    sqlx::query(sql::HEALTH_CHECK).execute(executor).await?;
    Ok(())
}
