//! [`PgSagaStore`]: saga instances, their records of handled events and their deadlines.

use chrono::{DateTime, Utc};
use eventsource_core::{
    Decided, DueDeadline, HandledEvent, Loaded, LogPosition, SagaKey, SagaState, SagaStore,
    StoreError, TenantId,
};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::{out_of_range, store_error};
use crate::pooler::Autocommit;
use crate::rejection::settle_in_tx;
use crate::row::{AppendRow, DeadlineRow, SagaRow, position_to_db};
use crate::sql;
use crate::store::{Columns, appended_from, bind_append};
use crate::tenant::{begin_saga, begin_tenant};

/// A [`SagaStore`] on PostgreSQL (tables `saga_instances` and `saga_handled`, migration 0009).
///
/// Per instance, keyed by tenant, saga and instance: the state (JSONB) with its schema version,
/// an optimistic version, the pending deadline and whether it fired, and in `saga_handled` one
/// row per event handled. An event counts as handled exactly when its id is recorded for that
/// instance (or it lies at or below the floor the record was pruned to, see
/// [`SagaStore::prune_handled`]); saving the state and recording the event are one statement.
/// Both tables have forced row level security, like `events`: every operation runs in a
/// transaction scoped to the key's tenant, except [`SagaStore::due`], which lists every
/// tenant's deadlines and needs a role that bypasses row level security (as the relay does).
///
/// Where the saga's commands append to a [`PgEventStore`](crate::PgEventStore) in the same
/// database, run the saga with [`PgSagaHandler`](crate::PgSagaHandler) and fire deadlines with
/// [`PgDeadlineRunner`](crate::PgDeadlineRunner): state, events and deadline marks then commit
/// together. Cloning is cheap.
///
/// ```no_run
/// use eventsource_core::{SagaKey, SagaStore, TenantId};
/// use eventsource_postgres::{MIGRATOR, PgSagaStore};
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// MIGRATOR.run(&pool).await?;
/// let sagas = PgSagaStore::new(pool);
/// let key = SagaKey::new(TenantId::new("acme"), "checkout", "order-1");
/// if let Some(state) = sagas.load(&key).await? {
///     println!("{key} handled {} events", state.version);
/// }
/// # Ok(()) }
/// # fn main() { let _ = run; }
/// ```
#[derive(Debug, Clone)]
pub struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    /// A saga store on `pool` (the schema comes with [`MIGRATOR`](crate::MIGRATOR)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool the store uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Loads the instance and whether it handled `event`, inside the caller's transaction
    /// (scoped to the key's tenant), **locking the instance's row** until the transaction ends:
    /// a concurrent delivery to the same instance waits, then sees what this one saved. An
    /// instance not created yet has no row to lock: concurrent first deliveries both load no
    /// state, and the save of the later one finds the instance created and conflicts.
    ///
    /// Run it in a transaction with sequential scans off (`SET LOCAL enable_seqscan = off`), as
    /// the crate's own saga transactions are: a connection caches its plan of this statement
    /// with the settings of the transaction that planned it, and planned with scans on while
    /// `saga_instances` looked small, it reads the whole table on every call (ADR 0037).
    ///
    /// # Errors
    ///
    /// A database failure, or a stored row that violates the schema's invariants.
    pub async fn load_in_tx(
        conn: &mut PgConnection,
        key: &SagaKey,
        event: &HandledEvent,
    ) -> Result<Loaded, StoreError> {
        load(conn, sql::LOAD_SAGA_LOCKED, key, event).await
    }

    /// Saves the instance's state at `expected` and records `handled`, inside the caller's
    /// transaction (scoped to the key's tenant), in one statement.
    ///
    /// Run it in a transaction with sequential scans off (`SET LOCAL enable_seqscan = off`), as
    /// the crate's own saga transactions are: a connection caches its plan of this statement
    /// with the settings of the transaction that planned it, and planned with scans on while
    /// `saga_instances` looked small, it reads the whole table on every call (ADR 0037).
    ///
    /// # Errors
    ///
    /// [`StoreError::CheckpointConflict`] named after the key when the version moved or the
    /// event counts as handled already; nothing is written and no database error is raised,
    /// so the transaction stays usable (the caller normally rolls it back).
    #[tracing::instrument(name = "eventsource.saga.save", skip_all, fields(saga = key.saga(), instance = key.instance(), expected))]
    pub async fn save_in_tx(
        conn: &mut PgConnection,
        key: &SagaKey,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> Result<(), StoreError> {
        let query = save_query::<(i64,)>(
            (sql::CREATE_SAGA, sql::MOVE_SAGA),
            key,
            expected,
            &state,
            handled,
        )?;
        let (recorded,) = query.fetch_one(conn).await.map_err(store_error)?;
        saved(key, expected, recorded)
    }

    /// As [`PgEventStore::append_in_tx`](crate::PgEventStore::append_in_tx) of `decided` (in
    /// the key's tenant), then [`save_in_tx`](Self::save_in_tx), in one statement: the save
    /// runs only if the append wrote. When the append's guard let nothing through, the
    /// outcome is resolved as `append_in_tx` does, and an idempotent replay of the batch is
    /// followed by the save on its own.
    ///
    /// # Errors
    ///
    /// As `append_in_tx`, then as `save_in_tx`.
    #[tracing::instrument(name = "eventsource.saga.append_save", skip_all, fields(saga = key.saga(), instance = key.instance(), stream = %decided.stream, expected))]
    pub(crate) async fn append_and_save_in_tx(
        conn: &mut PgConnection,
        key: &SagaKey,
        decided: Decided,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> Result<(), StoreError> {
        let columns = Columns::for_batch(decided.events)?;
        // One event, the usual command's: its columns as scalars.
        let single = columns.ids.len() == 1;
        let statements = if single {
            (
                &sql::APPEND_ONE_AND_CREATE_SAGA,
                &sql::APPEND_ONE_AND_MOVE_SAGA,
            )
        } else {
            (&sql::APPEND_AND_CREATE_SAGA, &sql::APPEND_AND_MOVE_SAGA)
        };
        let query = save_query::<AppendSaveRow>(
            (statements.0.as_str(), statements.1.as_str()),
            key,
            expected,
            &state,
            handled,
        )?;
        let query = bind_append(query, &decided.stream, decided.expected, &columns, single);
        let answer = query.fetch_one(&mut *conn).await;
        let recorded = answer.as_ref().map_or(0, |row| row.recorded.unwrap_or(0));
        let tried = answer.and_then(|row| appended_from(&row.append));
        let (_, written) =
            settle_in_tx(conn, &decided.stream, decided.expected, &columns.ids, tried).await?;
        if written {
            saved(key, expected, recorded)
        } else {
            Self::save_in_tx(conn, key, expected, state, handled).await
        }
    }

    /// Up to `limit` due deadlines of `tenant` (every tenant when `None`), locked in the
    /// caller's transaction; deadlines another transaction holds are skipped.
    pub(crate) async fn claim_due_in_tx(
        conn: &mut PgConnection,
        tenant: Option<&TenantId>,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DueDeadline>, StoreError> {
        due(conn, sql::CLAIM_DEADLINES, tenant, now, limit).await
    }

    /// Marks `deadline` fired inside the caller's transaction.
    pub(crate) async fn mark_fired_in_tx(
        conn: &mut PgConnection,
        deadline: &DueDeadline,
    ) -> Result<bool, StoreError> {
        let key = &deadline.key;
        let marked: Option<i32> = sqlx::query_scalar(sql::MARK_FIRED)
            .bind(key.tenant().as_str())
            .bind(key.saga())
            .bind(key.instance())
            .bind(deadline.due_at)
            .fetch_optional(conn)
            .await
            .map_err(store_error)?;
        Ok(marked.is_some())
    }
}

/// What the append-and-save statements answer: the append's row and the count of records.
#[derive(sqlx::FromRow)]
struct AppendSaveRow {
    #[sqlx(flatten)]
    append: AppendRow,
    recorded: Option<i64>,
}

/// The save statement of `statements` (create, move) for `expected`, its parameters bound: the
/// key, the state and the handled event, then (moving) the expected version.
fn save_query<'q, O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>>(
    statements: (&'static str, &'static str),
    key: &'q SagaKey,
    expected: u64,
    state: &'q SagaState,
    handled: HandledEvent,
) -> Result<QueryAs<'q, Postgres, O, PgArguments>, StoreError> {
    let (last_transaction, last_position) = position_to_db(state.last_position);
    let (transaction, position) = position_to_db(handled.position());
    let version = i64::try_from(state.version).map_err(|_| out_of_range("saga version"))?;
    let schema_version =
        i32::try_from(state.schema_version).map_err(|_| out_of_range("saga state version"))?;
    let (create, moving) = statements;
    let query = sqlx::query_as(if expected == 0 { create } else { moving })
        .bind(key.tenant().as_str())
        .bind(key.saga())
        .bind(key.instance())
        .bind(&state.state)
        .bind(schema_version)
        .bind(version)
        .bind(last_transaction)
        .bind(last_position)
        .bind(state.deadline)
        .bind(*handled.event_id().as_uuid())
        .bind(transaction)
        .bind(position);
    Ok(if expected == 0 {
        query
    } else {
        query.bind(i64::try_from(expected).map_err(|_| out_of_range("saga version"))?)
    })
}

/// The save's outcome from its count of records: one, or a conflict named after the key.
fn saved(key: &SagaKey, expected: u64, recorded: i64) -> Result<(), StoreError> {
    if recorded == 1 {
        return Ok(());
    }
    tracing::debug!(%key, expected, "saga state conflict");
    Err(StoreError::CheckpointConflict {
        name: key.to_string(),
        expected: None,
        actual: None,
    })
}

async fn load(
    conn: &mut PgConnection,
    statement: &'static str,
    key: &SagaKey,
    event: &HandledEvent,
) -> Result<Loaded, StoreError> {
    let (transaction, position) = position_to_db(event.position());
    let row: Option<SagaRow> = sqlx::query_as(statement)
        .bind(key.tenant().as_str())
        .bind(key.saga())
        .bind(key.instance())
        .bind(*event.event_id().as_uuid())
        .bind(transaction)
        .bind(position)
        .fetch_optional(conn)
        .await
        .map_err(store_error)?;
    match row {
        None => Ok(Loaded::new(None, false)),
        Some(row) => {
            let (state, handled) = row.into_state()?;
            Ok(Loaded::new(Some(state), handled))
        }
    }
}

async fn due(
    conn: &mut PgConnection,
    statement: &'static str,
    tenant: Option<&TenantId>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<DueDeadline>, StoreError> {
    let rows: Vec<DeadlineRow> = sqlx::query_as(statement)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(tenant.map(TenantId::as_str))
        .fetch_all(conn)
        .await
        .map_err(store_error)?;
    Ok(rows.into_iter().map(DueDeadline::from).collect())
}

impl SagaStore for PgSagaStore {
    async fn load(&self, key: &SagaKey) -> Result<Option<SagaState>, StoreError> {
        let nothing = HandledEvent::new(
            eventsource_core::EventId::from_uuid(uuid::Uuid::nil()),
            LogPosition::START,
        );
        self.load_for(key, &nothing)
            .await
            .map(|loaded| loaded.state)
    }

    #[tracing::instrument(name = "eventsource.saga.load", skip_all, fields(saga = key.saga(), instance = key.instance()))]
    async fn load_for(&self, key: &SagaKey, event: &HandledEvent) -> Result<Loaded, StoreError> {
        let mut tx = begin_saga(&self.pool, Some(key.tenant()))
            .await
            .map_err(store_error)?;
        let loaded = load(&mut tx, sql::LOAD_SAGA, key, event).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(loaded)
    }

    async fn save(
        &self,
        key: &SagaKey,
        expected: u64,
        state: SagaState,
        handled: HandledEvent,
    ) -> Result<(), StoreError> {
        let mut tx = begin_saga(&self.pool, Some(key.tenant()))
            .await
            .map_err(store_error)?;
        Self::save_in_tx(&mut tx, key, expected, state, handled).await?;
        tx.commit().await.map_err(store_error)
    }

    /// Lists every tenant's deadlines: needs a role that bypasses row level security.
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueDeadline>, StoreError> {
        let mut conn = Autocommit::acquire(&self.pool).await.map_err(store_error)?;
        let due = due(&mut conn, sql::DUE_DEADLINES, None, now, limit).await?;
        conn.commit().await.map_err(store_error)?;
        Ok(due)
    }

    async fn mark_fired(&self, deadline: &DueDeadline) -> Result<bool, StoreError> {
        let mut tx = begin_saga(&self.pool, Some(deadline.key.tenant()))
            .await
            .map_err(store_error)?;
        let marked = Self::mark_fired_in_tx(&mut tx, deadline).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(marked)
    }

    #[tracing::instrument(name = "eventsource.saga.prune", skip_all, fields(tenant = %tenant, saga, %floor))]
    async fn prune_handled(
        &self,
        tenant: &TenantId,
        saga: &str,
        floor: LogPosition,
    ) -> Result<u64, StoreError> {
        let (transaction, position) = position_to_db(floor);
        // Not `begin_saga`: raising the floors updates every instance of the saga, which a
        // sequential scan reads best.
        let mut tx = begin_tenant(&self.pool, tenant)
            .await
            .map_err(store_error)?;
        let removed: i64 = sqlx::query_scalar(sql::PRUNE_HANDLED)
            .bind(tenant.as_str())
            .bind(saga)
            .bind(transaction)
            .bind(position)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        u64::try_from(removed).map_err(|_| StoreError::Corrupt(format!("negative count {removed}")))
    }
}
