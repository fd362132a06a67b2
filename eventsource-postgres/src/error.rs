//! Errors of the PostgreSQL backend and their mapping onto [`StoreError`] by meaning.

use eventsource_core::StoreError;

/// SQLSTATE codes this crate maps by meaning. sqlx's [`sqlx::error::ErrorKind`] names only the
/// constraint violations, so the rest are spelled out here, once, by name.
mod sqlstate {
    /// `serialization_failure`: retry the transaction.
    pub(super) const SERIALIZATION_FAILURE: &str = "40001";
    /// `deadlock_detected`: retry the transaction.
    pub(super) const DEADLOCK_DETECTED: &str = "40P01";
    /// `insufficient_privilege`: raised by row level security and by
    /// `eventsource_current_tenant()` when no tenant is set.
    pub(super) const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// `query_canceled` (statement timeout or cancel request).
    pub(super) const QUERY_CANCELED: &str = "57014";
    /// Class 57P: the server is shutting down or restarting.
    pub(super) const OPERATOR_INTERVENTION_PREFIX: &str = "57P";
    /// Class 08: connection exception.
    pub(super) const CONNECTION_EXCEPTION_PREFIX: &str = "08";
    /// `lock_not_available`: `lock_timeout` ran out.
    pub(super) const LOCK_NOT_AVAILABLE: &str = "55P03";
}

/// Unique constraint on `events (event_id)`.
pub(crate) const EVENT_ID_KEY: &str = "events_event_id_key";
/// Unique constraint on `events (stream_key, version)` (migration 0006).
pub(crate) const STREAM_VERSION_KEY: &str = "events_stream_key_version_key";

/// Why a PostgreSQL-specific operation (diagnostics, start-up checks) failed.
///
/// Operations of the core traits return [`StoreError`]; this error converts into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// The database refused or failed a statement, or could not be reached.
    #[error("database operation failed")]
    Database(#[from] sqlx::Error),
    /// The log holds a transaction id the cluster has not reached yet: the database was restored
    /// into another cluster, whose transaction counter restarted. Readers would wait forever (or
    /// order new events before old ones), so they must not start.
    #[error(
        "stored transaction id {stored} is ahead of the cluster's next transaction id {cluster}"
    )]
    TransactionIdsAhead {
        /// The newest transaction id in the `events` table.
        stored: u64,
        /// The cluster's next transaction id.
        cluster: u64,
    },
    /// The store reported an error through the core contract.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PgStoreError {
    /// Whether retrying the operation later may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => is_transient(e),
            Self::TransactionIdsAhead { .. } => false,
            Self::Store(e) => e.is_retryable(),
        }
    }
}

impl From<PgStoreError> for StoreError {
    fn from(err: PgStoreError) -> Self {
        match err {
            PgStoreError::Database(e) => store_error(e),
            PgStoreError::Store(e) => e,
            e @ PgStoreError::TransactionIdsAhead { .. } => StoreError::Backend(Box::new(e)),
        }
    }
}

/// Whether the error is transient: connection loss, pool exhaustion, serialization failure,
/// deadlock, cancellation or server shutdown.
pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code == sqlstate::SERIALIZATION_FAILURE
                || code == sqlstate::DEADLOCK_DETECTED
                || code == sqlstate::QUERY_CANCELED
                || code.starts_with(sqlstate::OPERATOR_INTERVENTION_PREFIX)
                || code.starts_with(sqlstate::CONNECTION_EXCEPTION_PREFIX)
        }),
        _ => false,
    }
}

/// Whether a lock was not granted within `lock_timeout`.
pub(crate) fn is_lock_timeout(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == sqlstate::LOCK_NOT_AVAILABLE))
}

/// Whether the error is a tenant-isolation refusal (row level security, or no tenant set).
pub(crate) fn is_tenant_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == sqlstate::INSUFFICIENT_PRIVILEGE))
}

/// Whether the error is a unique violation of the named constraint.
pub(crate) fn is_unique_violation_of(err: &sqlx::Error, constraint: &str) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some(constraint))
}

/// Maps a driver error onto the core error by meaning.
pub(crate) fn store_error(err: sqlx::Error) -> StoreError {
    if let sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) = err {
        // A stored value that does not decode (metadata JSON, for one).
        return StoreError::Corrupt(err.to_string());
    }
    if is_transient(&err) {
        StoreError::Unavailable(Box::new(err))
    } else if is_tenant_violation(&err) {
        StoreError::TenantViolation(Box::new(err))
    } else {
        StoreError::Backend(Box::new(err))
    }
}

/// A value the schema cannot hold.
pub(crate) fn out_of_range(what: &str) -> StoreError {
    StoreError::Backend(format!("{what} does not fit its column").into())
}
