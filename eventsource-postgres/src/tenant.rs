//! Per-transaction tenant scoping.

use std::fmt::Write as _;

use eventsource_core::TenantId;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};

/// Sets the tenant for the rest of the current transaction.
pub(crate) const SET_TENANT: &str = "SELECT set_config('eventsource.tenant', $1, true)";

/// Begins a transaction scoped to `tenant`, in one round trip.
///
/// `BEGIN` and `set_config('eventsource.tenant', …, true)` go to the server as one simple-query
/// message. A simple query cannot bind parameters, so the tenant travels hex-encoded and is
/// decoded by the server: whatever the tenant id holds, it cannot change the statement. The
/// setting is transaction-local (`is_local = true`), so a pooled connection never carries it
/// into the next transaction.
///
/// Use the returned transaction for your own tenant-scoped statements, with
/// [`PgEventStore::append_in_tx`](crate::PgEventStore::append_in_tx) and
/// [`PgCheckpointStore::save_in_tx`](crate::PgCheckpointStore::save_in_tx), then commit it.
///
/// # Errors
///
/// Fails when no connection can be acquired or the server refuses the statement.
pub async fn begin_tenant(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(AssertSqlSafe(begin_statement(tenant)))
        .await
}

/// Begins a saga transaction: scoped to `tenant` as [`begin_tenant`] does (unscoped when
/// `None`), with sequential scans off until it ends (`enable_seqscan`, transaction-local), in
/// one round trip.
///
/// Every saga statement reads its rows by key (an instance by its primary key, a deadline by
/// the due index); a plan that scans `saga_instances` instead reads every instance on every
/// step. The planner makes that plan whenever the statistics say the table is small: on a new
/// database, and on a hot table of warm instances, which their updates bloat between two
/// vacuums while the cached plan stays. Turning sequential scans off keeps each statement on
/// its index whatever the statistics (as `enable_seqscan = off` does for the store's
/// functions, migration 0001). ADR 0037.
pub(crate) async fn begin_saga(
    pool: &PgPool,
    tenant: Option<&TenantId>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let statement = match tenant {
        Some(tenant) => {
            let mut statement = begin_statement(tenant);
            statement.push_str(", set_config('enable_seqscan', 'off', true)");
            statement
        }
        None => "BEGIN ISOLATION LEVEL READ COMMITTED; \
                 SELECT set_config('enable_seqscan', 'off', true)"
            .to_owned(),
    };
    pool.begin_with(AssertSqlSafe(statement)).await
}

/// As [`begin_tenant`], on a connection the caller holds.
pub(crate) async fn begin_tenant_on<'c>(
    conn: &'c mut PgConnection,
    tenant: &TenantId,
) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
    sqlx::Connection::begin_with(conn, AssertSqlSafe(begin_statement(tenant))).await
}

/// Sets the tenant of the transaction already open on `conn` (one round trip).
///
/// # Errors
///
/// Fails when the server refuses the statement.
pub async fn set_tenant(conn: &mut PgConnection, tenant: &TenantId) -> Result<(), sqlx::Error> {
    sqlx::query(SET_TENANT)
        .bind(tenant.as_str())
        .execute(conn)
        .await
        .map(drop)
}

fn begin_statement(tenant: &TenantId) -> String {
    let bytes = tenant.as_str().as_bytes();
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; \
         SELECT set_config('eventsource.tenant', convert_from(decode('{hex}', 'hex'), 'UTF8'), true)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_travels_hex_encoded() {
        let sql = begin_statement(&TenantId::new("a'; DROP TABLE events; --"));
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains("decode('61273b"), "{sql}");
    }
}
