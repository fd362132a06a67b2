//! The statements of the store's reads that return `xid8` columns, each one attempt on a
//! connection; [`PgEventStore`](crate::PgEventStore) runs them through
//! [`again_if_unprepared!`](crate::pooler) (see `pooler.rs`).

use chrono::{DateTime, Utc};
use eventsource_core::{Shard, StreamId, TenantId, VersionRange};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::pooler::Autocommit;
use crate::row::{EventRow, StreamEventRow, version_to_db};
use crate::sql;
use crate::tenant::begin_tenant_on;

/// The rows of `stream` in `range`: one statement, autocommit (the function scopes itself to
/// the tenant).
pub(crate) async fn stream_rows(
    conn: &mut PgConnection,
    stream: &StreamId,
    range: VersionRange,
) -> Result<Vec<StreamEventRow>, sqlx::Error> {
    let mut conn = Autocommit::on(conn).await?;
    let rows = sqlx::query_as(sql::READ_STREAM)
        .bind(stream.tenant().as_str())
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .bind(version_to_db(range.start()))
        .bind(version_to_db(range.end()))
        .fetch_all(&mut *conn)
        .await?;
    conn.commit().await?;
    Ok(rows)
}

/// A page of the log after `(transaction, position)`: every tenant's in one autocommit
/// statement (only `shard`'s tenants, filtered by the server, if given), or one tenant's in a
/// transaction scoped to it (nothing, without a round trip, if the tenant is not in `shard`).
pub(crate) async fn log_rows(
    conn: &mut PgConnection,
    (transaction, position): (String, i64),
    since: Option<DateTime<Utc>>,
    limit: i64,
    tenant: Option<&TenantId>,
    shard: Option<Shard>,
) -> Result<Vec<EventRow>, sqlx::Error> {
    if let Some(tenant) = tenant {
        if shard.is_some_and(|s| !s.contains(tenant)) {
            return Ok(Vec::new());
        }
        let mut tx = begin_tenant_on(conn, tenant).await?;
        let rows = sqlx::query_as(sql::READ_ALL_TENANT)
            .bind(transaction)
            .bind(position)
            .bind(since)
            .bind(limit)
            .bind(tenant.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    } else {
        let mut conn = Autocommit::on(conn).await?;
        let rows = match shard.filter(|s| s.count() > 1) {
            None => {
                sqlx::query_as(sql::READ_ALL)
                    .bind(transaction)
                    .bind(position)
                    .bind(since)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(shard) => {
                sqlx::query_as(sql::READ_ALL_SHARD)
                    .bind(transaction)
                    .bind(position)
                    .bind(since)
                    .bind(limit)
                    .bind(i64::from(shard.index()))
                    .bind(i64::from(shard.count()))
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        conn.commit().await?;
        Ok(rows)
    }
}

/// The last log position readers can see, as `(transaction, position)`; `None` for an empty
/// log. One autocommit statement.
pub(crate) async fn log_head(
    conn: &mut PgConnection,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    let mut conn = Autocommit::on(conn).await?;
    let head = sqlx::query_as(sql::LOG_HEAD)
        .fetch_optional(&mut *conn)
        .await?;
    conn.commit().await?;
    Ok(head)
}

/// A tenant's events of one correlation id, in a transaction scoped to the tenant.
pub(crate) async fn correlation_rows(
    conn: &mut PgConnection,
    tenant: &TenantId,
    correlation_id: Uuid,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let mut tx = begin_tenant_on(conn, tenant).await?;
    let rows = sqlx::query_as(sql::READ_BY_CORRELATION)
        .bind(tenant.as_str())
        .bind(correlation_id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rows)
}
