//! Why an append's guard let nothing through: an idempotent replay, a transaction older than
//! the stream's last writer (the stream-order guard, migration 0007, ADR 0015), a reused event
//! id or a version conflict. One read in a new transaction (or the caller's) tells them apart.

use std::collections::HashMap;

use eventsource_core::{Appended, ExpectedVersion, StoreError, StreamId, Version};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{EVENT_ID_KEY, is_unique_violation_of, store_error};
use crate::row::{StoredIdRow, position_from_db, version_from_db};
use crate::sql;

/// How many times in a row the store runs an append, each time in a new transaction, while the
/// stream-order guard refuses it as older than the stream's last writer. A new transaction is
/// younger than every writer it could have waited for, so a second refusal needs yet another
/// writer to overtake it: the bound only stops a livelock.
pub(crate) const ORDER_ATTEMPTS: u32 = 16;

/// Why the guard let nothing through, when it was not an error.
pub(crate) enum Rejection {
    /// Every id of the batch is stored in place: the original outcome.
    Replayed(Appended),
    /// The expectation still holds, so the guard refused the transaction as older than the
    /// stream's last writer (migration 0007): the append must run in a younger transaction.
    Older,
}

/// Explains why the guard let nothing through: an idempotent retry (the original outcome), a
/// transaction older than the stream's last writer, a reused event id, or a version conflict.
///
/// Versions only grow, so an `Exact` that admits the stream's version now admitted it when the
/// guard ran, and `Any` always does: the refusal was the order guard's. Had the version moved on
/// meanwhile, an append in a new transaction would conflict too: reporting the conflict is the
/// same outcome. `NoStream` (and `Exact(0)`) are refused only by a stream that exists, which
/// stays so: always a conflict. `StreamExists` is the one expectation a stream can come to admit
/// after it was refused (created meanwhile): this then says `Older`, and the append, run again,
/// finds the stream, as it would have had it come a moment later.
pub(crate) async fn resolve_rejection(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    ids: &[Uuid],
) -> Result<Rejection, StoreError> {
    if let Some(replayed) = replayed(conn, stream, ids).await? {
        return Ok(Rejection::Replayed(replayed));
    }
    let actual = stream_version_on(conn, stream).await?;
    if expected.admits(actual) {
        tracing::debug!(%stream, %expected, %actual, "append refused: older than the stream's last writer");
        return Ok(Rejection::Older);
    }
    tracing::debug!(%stream, %expected, %actual, "append conflict");
    Err(StoreError::Conflict {
        stream: stream.clone(),
        expected,
        actual,
    })
}

/// Settles an append run in a caller's transaction (`tried`, as [`try_append`](crate::store::try_append) answers):
/// written now (`true`), an idempotent replay of a stored batch (`false`), or the error
/// [`PgEventStore::append_in_tx`](crate::PgEventStore::append_in_tx) documents.
pub(crate) async fn settle_in_tx(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    ids: &[Uuid],
    tried: Result<Option<Appended>, sqlx::Error>,
) -> Result<(Appended, bool), StoreError> {
    match tried {
        Ok(Some(appended)) => Ok((appended, true)),
        Ok(None) => match resolve_rejection(conn, stream, expected, ids).await? {
            Rejection::Replayed(appended) => Ok((appended, false)),
            Rejection::Older => Err(StoreError::RetryTransaction {
                stream: stream.clone(),
            }),
        },
        Err(e) if is_unique_violation_of(&e, EVENT_ID_KEY) => {
            Err(StoreError::Unavailable(Box::new(e)))
        }
        Err(e) => Err(store_error(e)),
    }
}

/// If every id of the batch is stored consecutively, in order, in `stream`: the original
/// outcome. `Ok(None)` when none is stored; [`StoreError::DuplicateEventId`] otherwise.
pub(crate) async fn replayed(
    conn: &mut PgConnection,
    stream: &StreamId,
    ids: &[Uuid],
) -> Result<Option<Appended>, StoreError> {
    let rows: Vec<StoredIdRow> = sqlx::query_as(sql::STORED_IDS)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    if rows.is_empty() {
        return Ok(None);
    }
    let stored: HashMap<Uuid, &StoredIdRow> = rows.iter().map(|r| (r.event_id, r)).collect();
    let duplicate = || {
        let id = ids
            .iter()
            .find(|id| stored.contains_key(id))
            .copied()
            .unwrap_or(ids[0]);
        StoreError::DuplicateEventId {
            event_id: eventsource_core::EventId::from_uuid(id),
        }
    };
    let in_place: Option<Vec<&StoredIdRow>> =
        ids.iter().map(|id| stored.get(id).copied()).collect();
    let Some(in_place) = in_place else {
        return Err(duplicate());
    };
    let first = in_place[0];
    let consecutive = in_place
        .iter()
        .zip(0_i64..)
        .all(|(row, i)| row.is_in(stream) && first.version.checked_add(i) == Some(row.version));
    if !consecutive {
        return Err(duplicate());
    }
    let last = in_place[in_place.len() - 1];
    Ok(Some(Appended::new(
        version_from_db(last.version)?,
        position_from_db(&first.transaction_id, first.global_position)?,
        position_from_db(&last.transaction_id, last.global_position)?,
    )))
}

pub(crate) async fn stream_version_on(
    conn: &mut PgConnection,
    stream: &StreamId,
) -> Result<Version, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION)
        .bind(stream.tenant().as_str())
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    version.map_or(Ok(Version::ZERO), version_from_db)
}
