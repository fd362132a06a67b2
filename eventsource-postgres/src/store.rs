//! [`PgEventStore`]: the core [`EventStore`] contract on PostgreSQL.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventsource_core::{
    Appended, EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent,
    StoreError, StreamEvent, StreamId, TenantId, Version, VersionRange,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::{
    EVENT_ID_KEY, STREAM_VERSION_KEY, is_unique_violation_of, out_of_range, store_error,
};
use crate::group::GroupCommit;
use crate::kept::{Kept, Lent};
use crate::pooler::{Autocommit, again_if_unprepared};
use crate::read;
use crate::rejection::{
    ORDER_ATTEMPTS, Rejection, replayed, resolve_rejection, settle_in_tx, stream_version_on,
};
use crate::row::{AppendRow, EventRow, load_row, position_from_db, version_from_db, version_to_db};
use crate::sql;
use crate::tenant::{begin_tenant, begin_tenant_on};

/// An [`EventStore`] on PostgreSQL.
///
/// One `events` table holds every stream of every tenant; a `streams` row per stream holds its
/// version and guards appends. See the crate documentation for the schema, the gap-free log and
/// the tenancy set-up. Cloning is cheap: clones share the pool and the append notifier.
///
/// Every tenant-scoped operation sets `eventsource.tenant` for its own transaction, in the same
/// round trip as its work (appends are single autocommit statements that set it first, the
/// reads of an aggregate load single calls of the schema's functions; other reads send `BEGIN`
/// and the setting together), so the store works for a role subject to row level security.
/// [`EventStore::read_all`] with [`LogFilter::all()`] reads every tenant and needs a role that
/// bypasses row level security (the relay or rebuild role).
#[derive(Debug, Clone)]
pub struct PgEventStore {
    pool: PgPool,
    notify: Arc<Notify>,
    group: Option<Arc<GroupCommit>>,
    /// Connections kept out of the pool between statements (`kept.rs`), shared with the lanes.
    kept: Arc<Kept>,
}

/// A batch as parallel arrays, the shape `UNNEST` takes.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) payloads: Vec<serde_json::Value>,
    pub(crate) metadata: Vec<serde_json::Value>,
    pub(crate) correlation_ids: Vec<Option<Uuid>>,
    pub(crate) causation_ids: Vec<Option<Uuid>>,
}

impl Columns {
    /// Appends copies of `other`'s events (building a group commit's arrays).
    pub(crate) fn extend_from(&mut self, other: &Columns) {
        self.ids.extend_from_slice(&other.ids);
        self.types.extend_from_slice(&other.types);
        self.schema_versions
            .extend_from_slice(&other.schema_versions);
        self.payloads.extend_from_slice(&other.payloads);
        self.metadata.extend_from_slice(&other.metadata);
        self.correlation_ids
            .extend_from_slice(&other.correlation_ids);
        self.causation_ids.extend_from_slice(&other.causation_ids);
    }

    /// The columns of a batch to append, checked first (see [`check_batch`]).
    pub(crate) fn for_batch(events: Vec<NewEvent>) -> Result<Self, StoreError> {
        check_batch(&events)?;
        Self::new(events)
    }

    pub(crate) fn new(events: Vec<NewEvent>) -> Result<Self, StoreError> {
        let n = events.len();
        let mut columns = Self {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            causation_ids: Vec::with_capacity(n),
        };
        for event in events {
            columns.ids.push(*event.event_id.as_uuid());
            columns.schema_versions.push(
                i32::try_from(event.schema_version).map_err(|_| out_of_range("schema version"))?,
            );
            columns.correlation_ids.push(event.metadata.correlation_id);
            columns.causation_ids.push(event.metadata.causation_id);
            columns.metadata.push(
                serde_json::to_value(&event.metadata)
                    .map_err(|e| StoreError::Backend(Box::new(e)))?,
            );
            columns.types.push(event.event_type);
            columns.payloads.push(event.payload);
        }
        Ok(columns)
    }
}

/// The expectation as the append statement's `$4`/`$5`.
pub(crate) fn expectation(expected: ExpectedVersion) -> (&'static str, i64) {
    match expected {
        ExpectedVersion::Any => ("any", 0),
        ExpectedVersion::NoStream | ExpectedVersion::Exact(Version::ZERO) => ("none", 0),
        ExpectedVersion::StreamExists => ("exists", 0),
        ExpectedVersion::Exact(v) => ("exact", version_to_db(v)),
    }
}

/// Runs the append statement: `Some` when written, `None` when the guard let nothing through.
///
/// `pooled`: the statement runs in its own autocommit transaction on a pooled connection and
/// scopes it to the stream's tenant; a stored id then fails it with a unique violation (see
/// [`sql::APPEND_BATCH`], and [`sql::APPEND_ONE`] for one event). Otherwise it runs in the
/// caller's transaction, under the caller's tenant, and stored ids come back as `None` without
/// an error.
pub(crate) async fn try_append<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    stream: &StreamId,
    expected: ExpectedVersion,
    columns: &Columns,
    pooled: bool,
) -> Result<Option<Appended>, sqlx::Error> {
    // One event in the store's own transaction: its columns as scalars.
    let single = pooled && columns.ids.len() == 1;
    let statement = match (pooled, single) {
        (false, _) => sql::APPEND,
        (true, true) => sql::APPEND_ONE,
        (true, false) => sql::APPEND_BATCH,
    };
    let query = sqlx::query_as(statement).bind(stream.tenant().as_str());
    let query = bind_append(query, stream, expected, columns, single);
    // In a caller's transaction: `$13` false, the caller's tenant applies.
    let query = if pooled { query } else { query.bind(false) };
    let row: AppendRow = query.fetch_one(executor).await?;
    appended_from(&row)
}

/// [`try_append`] of a pooled append, as a lone statement on `conn` (in a transaction of its
/// own behind a transaction pooler: see `pooler.rs`).
pub(crate) async fn try_append_lone(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    columns: &Columns,
) -> Result<Option<Appended>, sqlx::Error> {
    let mut conn = Autocommit::on(conn).await?;
    let appended = try_append(&mut *conn, stream, expected, columns, true).await?;
    conn.commit().await?;
    Ok(appended)
}

/// Binds an append's parameters after its tenant: the stream's type and id, the expectation,
/// and the events' columns (as scalars when `single`, else as arrays).
pub(crate) fn bind_append<'q, O>(
    query: QueryAs<'q, Postgres, O, PgArguments>,
    stream: &'q StreamId,
    expected: ExpectedVersion,
    columns: &'q Columns,
    single: bool,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    let (kind, version) = expectation(expected);
    let query = query
        .bind(stream.aggregate_type())
        .bind(stream.aggregate_id())
        .bind(kind)
        .bind(version);
    if single {
        query
            .bind(columns.ids[0])
            .bind(&columns.types[0])
            .bind(columns.schema_versions[0])
            .bind(&columns.payloads[0])
            .bind(&columns.metadata[0])
            .bind(columns.correlation_ids[0])
            .bind(columns.causation_ids[0])
    } else {
        query
            .bind(&columns.ids)
            .bind(&columns.types)
            .bind(&columns.schema_versions)
            .bind(&columns.payloads)
            .bind(&columns.metadata)
            .bind(&columns.correlation_ids)
            .bind(&columns.causation_ids)
    }
}

/// The append statement's outcome row: `Some` when written, `None` when all `NULL`.
pub(crate) fn appended_from(row: &AppendRow) -> Result<Option<Appended>, sqlx::Error> {
    let (Some(version), Some(transaction), Some(first), Some(last)) = (
        row.version,
        row.transaction_id.as_deref(),
        row.first_position,
        row.last_position,
    ) else {
        return Ok(None);
    };
    let corrupt = |e: StoreError| sqlx::Error::Decode(Box::new(e));
    Ok(Some(Appended::new(
        version_from_db(version).map_err(corrupt)?,
        position_from_db(transaction, first).map_err(corrupt)?,
        position_from_db(transaction, last).map_err(corrupt)?,
    )))
}

/// Rejects what never reaches the database: an empty batch, ids repeated within the batch.
fn check_batch(events: &[NewEvent]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    let mut seen = HashSet::with_capacity(events.len());
    if let Some(e) = events.iter().find(|e| !seen.insert(e.event_id)) {
        return Err(StoreError::DuplicateEventId {
            event_id: e.event_id,
        });
    }
    Ok(())
}

fn to_events(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.into_iter().map(RecordedEvent::try_from).collect()
}

/// Commit lanes of a new store's group commit: connections that may run a group at once.
pub const DEFAULT_COMMIT_LANES: usize = 2;

/// Events a new store's group commit puts in one transaction at most.
pub const DEFAULT_GROUP_EVENTS: usize = 128;

impl PgEventStore {
    /// A store on `pool`, with group commit on ([`DEFAULT_COMMIT_LANES`] lanes,
    /// [`DEFAULT_GROUP_EVENTS`] events per group; see
    /// [`with_group_commit`](Self::with_group_commit)). The schema must exist: run
    /// [`MIGRATOR`](crate::MIGRATOR) first.
    ///
    /// Configure the pool with `test_before_acquire(false)`: the default pings the server on
    /// every acquire, one more round trip per operation.
    ///
    /// The store keeps the connections it used out of the pool between its statements, up to
    /// one per commit lane (2 by default): sqlx tests every connection given back to its pool
    /// with one more round trip. A kept connection goes back to the pool after a failed
    /// statement, after 100 ms unused (a small task looks; so an idle store holds no connection
    /// and [`PgPool::close`] is not kept waiting) and after 60 s out of the pool. Nothing is
    /// kept unless the pool has at least twice as many connections.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        let kept = Arc::new(Kept::new(DEFAULT_COMMIT_LANES));
        Self {
            pool,
            notify: Arc::new(Notify::new()),
            group: Some(Arc::new(GroupCommit::new(
                DEFAULT_COMMIT_LANES,
                DEFAULT_GROUP_EVENTS,
                kept.clone(),
            ))),
            kept,
        }
    }

    /// Sets group commit: concurrent [`EventStore::append`] calls to different streams share
    /// one transaction and one round trip, up to `max_events` events together, through at
    /// most `lanes` connections at a time. Under load this raises the throughput of small
    /// appends (the usual one or two events of a command) and of batches alike: one commit,
    /// one WAL flush, one statement for many appends. Alone, an append runs at once
    /// through the single-append statement, so an idle store adds no latency. Appends of more
    /// than a quarter of `max_events` events are not grouped: they amortise their commit
    /// already.
    ///
    /// The store keeps up to `lanes` connections between its statements (see
    /// [`new`](Self::new)).
    ///
    /// Every guarantee holds: a caller is answered only after the shared transaction
    /// committed, a conflicting append writes nothing and leaves the others alone, and the
    /// appends of one group share the transaction part of their [`LogPosition`]s. When the
    /// shared transaction fails as a whole (an event id already stored, a lost connection),
    /// each append is retried alone (a retry of a stored batch is an idempotent no-op).
    /// Appends inside a caller's transaction ([`append_in_tx`](Self::append_in_tx)) are not
    /// grouped.
    #[must_use]
    pub fn with_group_commit(mut self, lanes: usize, max_events: usize) -> Self {
        self.kept = Arc::new(Kept::new(lanes.max(1)));
        self.group = Some(Arc::new(GroupCommit::new(
            lanes,
            max_events,
            self.kept.clone(),
        )));
        self
    }

    /// Turns group commit off: every append runs in a transaction of its own.
    #[must_use]
    pub fn without_group_commit(mut self) -> Self {
        self.group = None;
        self
    }

    /// The pool the store uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection for the store's next statement: a kept one or one from the pool. Hand it to
    /// [`keep`](Self::keep) after a success; dropped after a failure, it returns to the pool,
    /// whose test closes it if the failure broke it.
    async fn lend(&self) -> Result<Lent, StoreError> {
        self.kept.take(&self.pool).await.map_err(store_error)
    }

    /// Keeps a connection after a successful statement (or gives it back to the pool).
    fn keep(&self, lent: Lent) {
        self.kept.keep(&self.pool, lent);
    }

    /// Appends inside the caller's transaction, so the append commits or rolls back with the
    /// caller's other work (a saga's state, a projection's read model).
    ///
    /// Same contract as [`EventStore::append`]. A [`StoreError::Conflict`] raises no database
    /// error: the transaction stays usable and the caller decides whether to commit the rest.
    ///
    /// The global log is ordered by transaction, and a transaction gets its id at its first
    /// write. When a younger transaction appended to the stream before this one, committing
    /// this append would put it before the stream's previous events in the log: it is refused
    /// with [`StoreError::RetryTransaction`] (nothing written, no database error), and no later
    /// append to that stream in this transaction can succeed. Roll back and run the whole
    /// transaction again.
    /// Under row level security the transaction must be scoped to the stream's tenant (open it
    /// with [`begin_tenant`]). In-process readers are not woken: the store
    /// cannot see the caller's commit.
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`]; [`StoreError::RetryTransaction`] as above (retryable); and
    /// when a concurrent transaction stores the same event id first, the unique index fails the caller's transaction and this returns
    /// [`StoreError::Unavailable`]: retrying the whole transaction resolves it (as an
    /// idempotent replay if the other transaction committed the same batch).
    #[tracing::instrument(name = "eventsource.append", skip_all, fields(stream = %stream, events = events.len()))]
    pub async fn append_in_tx(
        conn: &mut PgConnection,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        let columns = Columns::for_batch(events)?;
        let tried = try_append(&mut *conn, stream, expected, &columns, false).await;
        settle_in_tx(conn, stream, expected, &columns.ids, tried)
            .await
            .map(|(appended, _)| appended)
    }

    /// Reads a tenant's log from an instant on, in log order; the events of a tenant "replayed
    /// from a date". A shorthand for [`EventStore::read_all`] with a tenant and `since` filter.
    pub async fn read_tenant_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
        after: LogPosition,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all(
            after,
            limit,
            &LogFilter::tenant(tenant.clone()).with_since(since),
        )
        .await
    }

    async fn append_pooled(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        check_batch(&events)?;
        let columns = Columns::new(events)?;
        if let Some(group) = self.group.as_ref().filter(|g| g.takes(columns.ids.len())) {
            let columns = Arc::new(columns);
            match group.append(&self.pool, stream, expected, &columns).await {
                Ok(Some(appended)) => {
                    self.notify.notify_waiters();
                    return Ok(appended);
                }
                Ok(None) => {
                    let mut tx = begin_tenant(&self.pool, stream.tenant())
                        .await
                        .map_err(store_error)?;
                    match resolve_rejection(&mut tx, stream, expected, &columns.ids).await? {
                        Rejection::Replayed(appended) => return Ok(appended),
                        // The group moved another stream first, so it had its transaction id
                        // when it waited for this one; alone, the append runs in a new one.
                        Rejection::Older => {}
                    }
                }
                // Unanswered: the group failed as a whole.
                Err(()) => {}
            }
            let columns = Arc::try_unwrap(columns).unwrap_or_else(|shared| {
                let mut copy = Columns::default();
                copy.extend_from(&shared);
                copy
            });
            return self.append_alone(stream, expected, columns).await;
        }
        self.append_alone(stream, expected, columns).await
    }

    /// Appends in a transaction of its own; again, in a new one, each time the stream-order
    /// guard refuses it as older than the stream's last writer.
    async fn append_alone(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: Columns,
    ) -> Result<Appended, StoreError> {
        for _ in 0..ORDER_ATTEMPTS {
            if let Some(appended) = self.append_once(stream, expected, &columns).await? {
                return Ok(appended);
            }
        }
        Err(StoreError::Unavailable(
            format!(
                "stream {stream}: {ORDER_ATTEMPTS} attempts in a row were overtaken by younger \
                 transactions"
            )
            .into(),
        ))
    }

    /// One attempt of [`Self::append_alone`]: `None` when the stream-order guard refused it.
    async fn append_once(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        columns: &Columns,
    ) -> Result<Option<Appended>, StoreError> {
        // One round trip: autocommit, the statement scopes itself to the tenant.
        let mut lent = self.lend().await?;
        let outcome = try_append_lone(&mut lent.conn, stream, expected, columns).await;
        if outcome.is_ok() {
            self.keep(lent);
        } else {
            drop(lent); // Back to the pool, which closes it if the failure broke it.
        }
        match outcome {
            Ok(Some(appended)) => {
                self.notify.notify_waiters();
                Ok(Some(appended))
            }
            Ok(None) => {
                let mut tx = begin_tenant(&self.pool, stream.tenant())
                    .await
                    .map_err(store_error)?;
                match resolve_rejection(&mut tx, stream, expected, &columns.ids).await? {
                    Rejection::Replayed(appended) => Ok(Some(appended)),
                    Rejection::Older => Ok(None),
                }
            }
            // An id of the batch is stored (a retry after a lost acknowledgement, a reused id, or
            // the same batch committed concurrently): the statement rolled back, streams row
            // included. Look in a new transaction.
            Err(e) if is_unique_violation_of(&e, EVENT_ID_KEY) => {
                let mut tx = begin_tenant(&self.pool, stream.tenant())
                    .await
                    .map_err(store_error)?;
                match replayed(&mut tx, stream, &columns.ids).await? {
                    Some(appended) => Ok(Some(appended)),
                    // Stored, yet invisible here: another tenant's row, hidden by row level
                    // security. Which id of the batch collided cannot be seen either.
                    None => Err(StoreError::DuplicateEventId {
                        event_id: eventsource_core::EventId::from_uuid(columns.ids[0]),
                    }),
                }
            }
            // The streams guard serialises appends to a stream, so this backstop only fires if
            // something wrote events around it: report the stream's actual version.
            Err(e) if is_unique_violation_of(&e, STREAM_VERSION_KEY) => {
                let mut tx = begin_tenant(&self.pool, stream.tenant())
                    .await
                    .map_err(store_error)?;
                Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: stream_version_on(&mut tx, stream).await?,
                })
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

impl EventStore for PgEventStore {
    #[tracing::instrument(name = "eventsource.append", skip_all, fields(stream = %stream, events = events.len()))]
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended, StoreError> {
        self.append_pooled(stream, expected, events).await
    }

    #[tracing::instrument(name = "eventsource.read_stream", skip_all, fields(stream = %stream, from = %range.start()))]
    async fn read_stream(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // One round trip: autocommit, the function scopes itself to the tenant.
        let mut lent = self.lend().await?;
        let rows = again_if_unprepared!(read::stream_rows(&mut lent.conn, stream, range).await)
            .map_err(store_error)?;
        self.keep(lent);
        tracing::trace!(events = rows.len(), "stream read");
        rows.into_iter().map(|row| row.into_event(stream)).collect()
    }

    /// Reads five columns (id, version, type, schema version, payload) with a plain statement
    /// that streams its rows (`READ_STREAM_EVENTS` in `sql.rs`), decoding each as it arrives.
    #[tracing::instrument(name = "eventsource.read_stream_events", skip_all, fields(stream = %stream, from = %range.start()))]
    async fn read_stream_events(
        &self,
        stream: &StreamId,
        range: VersionRange,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        // One round trip: autocommit, the statement scopes itself to the tenant.
        let mut lent = self.lend().await?;
        let mut conn = Autocommit::on(&mut lent.conn).await.map_err(store_error)?;
        let events = sqlx::query(sql::READ_STREAM_EVENTS)
            .bind(stream.tenant().as_str())
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .bind(version_to_db(range.start()))
            .bind(version_to_db(range.end()))
            .try_map({
                let mut last_type = None;
                move |row: PgRow| load_row(&row, &mut last_type)
            })
            .fetch_all(&mut *conn)
            .await
            .map_err(store_error)?;
        conn.commit().await.map_err(store_error)?;
        self.keep(lent);
        tracing::trace!(events = events.len(), "stream read for a load");
        Ok(events)
    }

    #[tracing::instrument(name = "eventsource.stream_version", skip_all, fields(stream = %stream))]
    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let mut lent = self.lend().await?;
        let mut conn = Autocommit::on(&mut lent.conn).await.map_err(store_error)?;
        let version: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION_SCOPED)
            .bind(stream.tenant().as_str())
            .bind(stream.aggregate_type())
            .bind(stream.aggregate_id())
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        conn.commit().await.map_err(store_error)?;
        self.keep(lent);
        version.map_or(Ok(Version::ZERO), version_from_db)
    }

    #[tracing::instrument(name = "eventsource.read_all", skip_all, fields(after = %after, limit, tenant = ?filter.tenant, shard = ?filter.shard))]
    async fn read_all(
        &self,
        after: LogPosition,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut lent = self.lend().await?;
        let rows = again_if_unprepared!(
            read::log_rows(
                &mut lent.conn,
                crate::row::position_to_db(after),
                filter.since,
                limit,
                filter.tenant.as_ref(),
                filter.shard,
            )
            .await
        )
        .map_err(store_error)?;
        self.keep(lent);
        tracing::trace!(events = rows.len(), "log batch read");
        to_events(rows)
    }

    #[tracing::instrument(name = "eventsource.read_by_correlation", skip_all, fields(tenant = %tenant, %correlation_id))]
    async fn read_by_correlation(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut lent = self.lend().await?;
        let rows = again_if_unprepared!(
            read::correlation_rows(&mut lent.conn, tenant, correlation_id).await
        )
        .map_err(store_error)?;
        self.keep(lent);
        to_events(rows)
    }

    fn append_notify(&self) -> Option<Arc<Notify>> {
        Some(self.notify.clone())
    }

    /// A backward scan of the log's primary key, below the same horizon as `read_all`.
    #[tracing::instrument(name = "eventsource.log_head", skip_all)]
    async fn log_head(&self) -> Result<Option<LogPosition>, StoreError> {
        let mut lent = self.lend().await?;
        let head =
            again_if_unprepared!(read::log_head(&mut lent.conn).await).map_err(store_error)?;
        self.keep(lent);
        head.map(|(transaction, position)| crate::row::position_from_db(&transaction, position))
            .transpose()
    }

    /// One `count(*)` over the log index instead of reading the events through.
    #[tracing::instrument(name = "eventsource.count_after", skip_all, fields(after = %after, tenant = ?filter.tenant))]
    async fn count_after(&self, after: LogPosition, filter: &LogFilter) -> Result<u64, StoreError> {
        let (transaction, position) = crate::row::position_to_db(after);
        let mut lent = self.lend().await?;
        let shard = filter.shard.filter(|s| s.count() > 1);
        if let (Some(tenant), Some(shard)) = (&filter.tenant, shard)
            && !shard.contains(tenant)
        {
            self.keep(lent);
            return Ok(0);
        }
        let count: i64 = if let Some(tenant) = &filter.tenant {
            let mut tx = begin_tenant_on(&mut lent.conn, tenant)
                .await
                .map_err(store_error)?;
            let count = sqlx::query_scalar(sql::COUNT_AFTER_TENANT)
                .bind(transaction)
                .bind(position)
                .bind(filter.since)
                .bind(tenant.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            count
        } else if let Some(shard) = shard {
            let mut conn = Autocommit::on(&mut lent.conn).await.map_err(store_error)?;
            let count = sqlx::query_scalar(sql::COUNT_AFTER_SHARD)
                .bind(transaction)
                .bind(position)
                .bind(filter.since)
                .bind(i64::from(shard.index()))
                .bind(i64::from(shard.count()))
                .fetch_one(&mut *conn)
                .await
                .map_err(store_error)?;
            conn.commit().await.map_err(store_error)?;
            count
        } else {
            let mut conn = Autocommit::on(&mut lent.conn).await.map_err(store_error)?;
            let count = sqlx::query_scalar(sql::COUNT_AFTER)
                .bind(transaction)
                .bind(position)
                .bind(filter.since)
                .fetch_one(&mut *conn)
                .await
                .map_err(store_error)?;
            conn.commit().await.map_err(store_error)?;
            count
        };
        self.keep(lent);
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("negative count {count}")))
    }
}
