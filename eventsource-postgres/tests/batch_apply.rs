//! `PgProjection::apply_batch`: the runner and the rebuild apply each batch with one call, and
//! when that call fails they apply the batch again event by event, so a failing event is still
//! named and the events before it still commit.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    CheckpointStore, EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent,
    StreamId, TenantId,
};
use eventsource_postgres::{
    PgCheckpointStore, PgEventStore, PgProjection, PgProjectionError, PgProjectionRunner,
    PgRebuild, PgRebuildable, ProjectionOptions, RebuildOptions,
};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CREATE_ROWS: &str = "CREATE TABLE IF NOT EXISTS batch_apply_rows (
    projection text NOT NULL, n bigint NOT NULL, via text NOT NULL)";

#[derive(Debug, thiserror::Error)]
enum RowsError {
    #[error("event {0} is poison")]
    Poison(String),
    #[error("read model statement failed")]
    Sql(#[from] sqlx::Error),
}

/// One row per event, marked with the call that wrote it; fails on `Poison` events, in a batch
/// as one by one.
struct Rows {
    name: String,
    batches: AtomicU64,
}

impl Rows {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            batches: AtomicU64::new(0),
        }
    }

    async fn insert(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
        via: &str,
    ) -> Result<(), RowsError> {
        if let Some(poison) = events.iter().find(|e| e.event_type == "Poison") {
            return Err(RowsError::Poison(poison.event_id.to_string()));
        }
        let n: Vec<i64> = events
            .iter()
            .map(|e| e.payload["n"].as_i64().unwrap_or(-1))
            .collect();
        sqlx::query(
            "INSERT INTO batch_apply_rows (projection, n, via) SELECT $1, n, $3 FROM UNNEST($2::int8[]) n",
        )
        .bind(&self.name)
        .bind(n)
        .bind(via)
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl PgProjection for Rows {
    type Error = RowsError;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), RowsError> {
        self.insert(conn, std::slice::from_ref(event), "event")
            .await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), RowsError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.insert(conn, events, "batch").await
    }
}

impl PgRebuildable for Rows {
    fn tables(&self) -> &[&str] {
        &["batch_apply_rows"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(CREATE_ROWS).execute(conn).await?;
        Ok(())
    }
}

struct Setup {
    pool: PgPool,
    store: PgEventStore,
    tenant: TenantId,
    name: String,
}

async fn setup() -> Option<Setup> {
    let pool = support::pool().await?;
    let mut tx = pool.begin().await.unwrap();
    // Concurrent CREATE TABLE IF NOT EXISTS can collide: one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(7245017)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(CREATE_ROWS).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    Some(Setup {
        store: PgEventStore::new(pool.clone()),
        pool,
        tenant: support::tenant("batch"),
        name: format!("batch-{}", Uuid::now_v7().simple()),
    })
}

impl Setup {
    /// Appends one event per append: `Numbered` with each `n`, or `Poison` for `-1`; waits
    /// until the log shows them.
    async fn append(&self, numbers: &[i64]) -> Vec<RecordedEvent> {
        let before = self.log().await.len();
        let stream = StreamId::new(self.tenant.clone(), "counter", "c");
        for &n in numbers {
            let event_type = if n < 0 { "Poison" } else { "Numbered" };
            self.store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![NewEvent::new(event_type, 1, json!({ "n": n }))],
                )
                .await
                .unwrap();
        }
        // The log shows an event once every older transaction on the server has ended.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log().await;
            if log.len() >= before + numbers.len() || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn log(&self) -> Vec<RecordedEvent> {
        self.store
            .read_all(
                LogPosition::START,
                1_000,
                &LogFilter::tenant(self.tenant.clone()),
            )
            .await
            .unwrap()
    }

    /// `(n, via)` of the rows in `schema`'s `batch_apply_rows`, sorted by `n`.
    async fn rows_in(&self, schema: &str) -> Vec<(i64, String)> {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('search_path', quote_ident($1), true)")
            .bind(schema)
            .execute(&mut *tx)
            .await
            .unwrap();
        let rows =
            sqlx::query_as("SELECT n, via FROM batch_apply_rows WHERE projection = $1 ORDER BY n")
                .bind(&self.name)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        rows
    }
}

fn via(rows: &[(i64, String)]) -> Vec<(i64, &str)> {
    rows.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_applies_a_batch_per_call_and_a_failing_batch_event_by_event() {
    let Some(t) = setup().await else {
        return;
    };
    t.append(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).await;
    let options = ProjectionOptions::default()
        .with_filter(LogFilter::tenant(t.tenant.clone()))
        .with_batch_size(4);
    let runner = PgProjectionRunner::new(t.store.clone(), Rows::new(&t.name), options);
    assert_eq!(runner.catch_up().await.unwrap(), 10);
    assert_eq!(runner.projection().batches.load(Ordering::SeqCst), 3);
    let rows = t.rows_in("public").await;
    assert_eq!(
        via(&rows),
        (0..10).map(|n| (n, "batch")).collect::<Vec<_>>()
    );

    // Batch [10, 11, poison, 12] fails as a batch; one by one, 10 and 11 commit.
    let log = t.append(&[10, 11, -1, 12]).await;
    let err = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::Apply { event_id, source: RowsError::Poison(_), .. }
            if *event_id == log[12].event_id),
        "{err:?}"
    );
    let rows = t.rows_in("public").await;
    assert_eq!(&via(&rows)[10..], [(10, "event"), (11, "event")]);
    let saved = PgCheckpointStore::new(t.pool.clone())
        .load(&t.name)
        .await
        .unwrap();
    assert_eq!(
        saved,
        Some(log[11].position),
        "the checkpoint stands before the event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_applies_a_batch_per_call_and_a_failing_batch_event_by_event() {
    let Some(t) = setup().await else {
        return;
    };
    let readers = format!("readers_{}", Uuid::now_v7().simple());
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&readers)
        .execute(&t.pool)
        .await
        .unwrap();
    let options = || {
        RebuildOptions::default()
            .with_filter(LogFilter::tenant(t.tenant.clone()))
            .with_reader_schema(&readers)
            .with_batch_size(4)
            .with_grace_period(Duration::from_hours(1))
    };
    t.append(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).await;
    PgRebuild::new(t.store.clone(), Rows::new(&t.name), options())
        .run(CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        via(&t.rows_in(&readers).await),
        (0..10).map(|n| (n, "batch")).collect::<Vec<_>>(),
        "filled and cut over in batches"
    );

    // Generation 2 reads [0..3], [4..7], then [8, 9, poison, 10]: one by one, 8 and 9 commit.
    let log = t.append(&[-1, 10, 11]).await;
    let err = PgRebuild::new(t.store.clone(), Rows::new(&t.name), options())
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::Apply { event_id, source: RowsError::Poison(_), .. }
            if *event_id == log[10].event_id),
        "{err:?}"
    );
    let building: String = sqlx::query_scalar(
        "SELECT schema_name FROM projection_generations WHERE projection = $1 AND state = 'building'",
    )
    .bind(&t.name)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let mut want: Vec<(i64, &str)> = (0..8).map(|n| (n, "batch")).collect();
    want.extend([(8, "event"), (9, "event")]);
    assert_eq!(via(&t.rows_in(&building).await), want);
    assert_eq!(
        t.rows_in(&readers).await.len(),
        10,
        "generation 1 keeps serving"
    );
}
