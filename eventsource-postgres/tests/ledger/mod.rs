//! The projection and set-up shared by the rebuild tests: `Ledger` writes one row per
//! application of an event (a double shows as two rows), `Setup` gives a test its projection,
//! tenant and reader schema, and readers check that they only ever see a complete prefix.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent, RecordedEvent, StreamId,
    TenantId,
};
use eventsource_postgres::{
    PgEventStore, PgProjection, PgRebuildable, ProjectionOptions, RebuildOptions,
};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("event {0} is poison")]
    Poison(String),
    #[error("read model statement failed")]
    Sql(#[from] sqlx::Error),
}

/// One row per application of an event (a double shows as two rows), in table `ledger`.
pub struct Ledger {
    pub name: String,
    /// Stops `apply` for good after this many applications (a rebuild stuck mid-way).
    pub stall_after: Option<u64>,
    pub applied: AtomicU64,
    pub stalled: Arc<Notify>,
    /// Events whose side effect ran.
    pub side_effects: Arc<Mutex<Vec<Uuid>>>,
    /// On applying the event numbered `.0`, appends a poison event and a normal one to `.2`.
    pub poison_on: Option<(i64, PgEventStore, StreamId)>,
    /// Creates `ledger` with this statement instead (another generation's columns).
    pub create_sql: Option<&'static str>,
    /// Holds the first `apply` (its transaction open) until let go.
    pub hold: Option<Arc<Hold>>,
}

/// Where a [`Ledger`] holds its first `apply`: `entered` when it got there, `open` lets it go.
pub struct Hold {
    pub entered: Notify,
    pub open: tokio::sync::Semaphore,
    taken: std::sync::atomic::AtomicBool,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            entered: Notify::new(),
            open: tokio::sync::Semaphore::new(0),
            taken: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Ledger {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            stall_after: None,
            applied: AtomicU64::new(0),
            stalled: Arc::new(Notify::new()),
            side_effects: Arc::default(),
            poison_on: None,
            create_sql: None,
            hold: None,
        }
    }

    pub fn stalling_after(mut self, n: u64) -> Self {
        self.stall_after = Some(n);
        self
    }
}

impl PgProjection for Ledger {
    type Error = LedgerError;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), LedgerError> {
        if event.event_type == "Poison" {
            return Err(LedgerError::Poison(event.event_id.to_string()));
        }
        if self
            .stall_after
            .is_some_and(|n| self.applied.fetch_add(1, Ordering::SeqCst) >= n)
        {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        if let Some(hold) = &self.hold
            && !hold.taken.swap(true, Ordering::SeqCst)
        {
            hold.entered.notify_one();
            hold.open.acquire().await.unwrap().forget();
        }
        if let Some((n, store, stream)) = &self.poison_on
            && event.payload["n"].as_i64() == Some(*n)
        {
            for (event_type, n) in [("Poison", -1), ("Numbered", 999_999)] {
                store
                    .append(
                        stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new(event_type, 1, json!({ "n": n }))],
                    )
                    .await
                    .unwrap();
            }
        }
        sqlx::query(
            "INSERT INTO ledger (event_id, transaction_id, global_position, n) \
             VALUES ($1, $2::text::xid8, $3, $4)",
        )
        .bind(event.event_id.as_uuid())
        .bind(event.position.transaction().to_string())
        .bind(i64::try_from(event.position.position()).unwrap())
        .bind(event.payload["n"].as_i64().unwrap_or(-1))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn side_effect(&self, event: &RecordedEvent) {
        self.side_effects
            .lock()
            .await
            .push(*event.event_id.as_uuid());
    }
}

impl PgRebuildable for Ledger {
    fn tables(&self) -> &[&str] {
        &["ledger"]
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(self.create_sql.unwrap_or(
            "CREATE TABLE ledger (event_id uuid NOT NULL, transaction_id xid8 NOT NULL, \
             global_position bigint NOT NULL, n bigint NOT NULL)",
        ))
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A test's projection, tenant and reader schema of its own.
pub struct Setup {
    pub pool: PgPool,
    pub store: PgEventStore,
    pub tenant: TenantId,
    pub name: String,
    pub readers: String,
    /// Events appended to the tenant.
    pub appended: AtomicUsize,
}

pub async fn setup() -> Option<Setup> {
    let pool = support::pool_with(24).await?;
    let store = PgEventStore::new(pool.clone());
    let id = Uuid::now_v7().simple().to_string();
    let readers = format!("readers_{id}");
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&readers)
        .execute(&pool)
        .await
        .unwrap();
    Some(Setup {
        pool,
        store,
        tenant: support::tenant("rebuild"),
        name: format!("rebuild-{id}"),
        readers,
        appended: AtomicUsize::new(0),
    })
}

impl Setup {
    pub fn rebuild_options(&self, holder: &str) -> RebuildOptions {
        RebuildOptions::default()
            .with_filter(LogFilter::tenant(self.tenant.clone()))
            .with_reader_schema(&self.readers)
            .with_instance_id(holder)
            .with_grace_period(Duration::from_hours(1))
    }

    pub fn live_options(&self) -> ProjectionOptions {
        ProjectionOptions::default()
            .with_filter(LogFilter::tenant(self.tenant.clone()))
            .with_instance_id("live")
            .with_batch_size(100)
            .with_max_idle_poll(Duration::from_millis(20))
    }

    /// Appends `n` events (numbered from `from`), `per` per append, to a few streams, and
    /// waits until every event appended so far is visible in the log.
    pub async fn append(&self, from: i64, n: i64, per: i64) {
        self.append_unsettled(from, n, per).await;
        self.settled(self.appended.load(Ordering::SeqCst)).await;
    }

    /// As [`append`], without waiting.
    pub async fn append_unsettled(&self, from: i64, n: i64, per: i64) {
        let mut i = from;
        while i < from + n {
            let events = (i..(i + per).min(from + n))
                .map(|k| NewEvent::new("Numbered", 1, json!({ "n": k })))
                .collect();
            let stream = StreamId::new(self.tenant.clone(), "counter", format!("c-{}", i % 7));
            self.store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .unwrap();
            self.appended.fetch_add(
                usize::try_from((i + per).min(from + n) - i).unwrap(),
                Ordering::SeqCst,
            );
            i += per;
        }
    }

    /// Waits until the tenant's `n` events are visible in the log (transactions of other
    /// tests still open hold back what `read_all` shows), and returns them.
    pub async fn settled(&self, n: usize) -> Vec<RecordedEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log().await;
            if log.len() >= n || Instant::now() > deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn log(&self) -> Vec<RecordedEvent> {
        self.store
            .read_all(
                LogPosition::START,
                1_000_000,
                &LogFilter::tenant(self.tenant.clone()),
            )
            .await
            .unwrap()
    }

    /// What readers see: the rows of the view `ledger` in the reader schema, as
    /// `(event id, n)` sorted by event id.
    pub async fn view(&self) -> Vec<(Uuid, i64)> {
        self.rows_in(&self.readers).await
    }

    /// The rows of `ledger` in `schema`.
    pub async fn rows_in(&self, schema: &str) -> Vec<(Uuid, i64)> {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('search_path', quote_ident($1), true)")
            .bind(schema)
            .execute(&mut *tx)
            .await
            .unwrap();
        let rows = sqlx::query_as("SELECT event_id, n FROM ledger ORDER BY event_id")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        rows
    }

    /// The generations: `(generation, state, schema)`.
    pub async fn generations(&self) -> Vec<(i64, String, String)> {
        sqlx::query_as(
            "SELECT generation, state, schema_name FROM projection_generations \
             WHERE projection = $1 ORDER BY generation",
        )
        .bind(&self.name)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

/// What a clean build of `log` holds: `(event id, n)` sorted by event id.
pub fn clean_build(log: &[RecordedEvent]) -> Vec<(Uuid, i64)> {
    let mut rows: Vec<(Uuid, i64)> = log
        .iter()
        .filter(|e| e.event_type != "Poison")
        .map(|e| (*e.event_id.as_uuid(), e.payload["n"].as_i64().unwrap()))
        .collect();
    rows.sort_unstable();
    rows
}

/// A reader's check, in one transaction on the views: the rows are exactly the events of the
/// tenant's log up to the latest row (a complete prefix, nothing doubled); returns how many.
pub const PREFIX_CHECK: &str = "
WITH seen AS (SELECT * FROM ledger),
     upto AS (SELECT transaction_id, global_position FROM seen
              ORDER BY transaction_id DESC, global_position DESC LIMIT 1)
SELECT (SELECT count(*) FROM seen) AS seen,
       (SELECT count(DISTINCT event_id) FROM seen) AS distinct_seen,
       (SELECT count(*) FROM events e, upto
        WHERE e.tenant_id = $1
          AND (e.transaction_id, e.global_position) <= (upto.transaction_id, upto.global_position)) AS prefix
";

/// Polls the views until `reading` is cancelled, checking each time that they show a complete
/// prefix of the log, nothing twice, never fewer rows than before; returns how many polls.
pub async fn read_until(t: Arc<Setup>, reading: CancellationToken) -> u64 {
    let (mut polls, mut last) = (0_u64, 0_i64);
    while !reading.is_cancelled() {
        let mut tx = t.pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('search_path', quote_ident($1) || ', public', true)")
            .bind(&t.readers)
            .execute(&mut *tx)
            .await
            .unwrap();
        let (seen, distinct, prefix): (i64, i64, i64) = sqlx::query_as(PREFIX_CHECK)
            .bind(t.tenant.as_str())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(seen, distinct, "a reader saw an event twice");
        assert_eq!(seen, prefix, "a reader saw a hole: not a complete prefix");
        assert!(
            seen >= last,
            "a reader saw the read model go back: {last} -> {seen}"
        );
        last = seen;
        polls += 1;
    }
    polls
}

pub async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT to_regnamespace(quote_ident($1)) IS NOT NULL")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}
