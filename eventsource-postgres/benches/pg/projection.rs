//! Projection rebuilds over the seeded log: the framework's `PgRebuild` (and a runner's
//! `catch_up` from the start) against hand-written sqlx doing the same durable work, page by
//! page: read 5,000 events in log order, then one transaction writing the read model and a
//! checkpoint.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use eventsource_core::RecordedEvent;
use eventsource_postgres::{
    PgEventStore, PgProjection, PgProjectionRunner, PgRebuild, PgRebuildable, ProjectionOptions,
    RebuildOptions,
};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _};
use tokio_util::sync::CancellationToken;

use crate::harness::{Table, median_latencies};
use crate::raw::RAW_LOG_PAGE;
use crate::seed;

/// Events per batch on both sides: `RebuildOptions`' default.
const BATCH: usize = 5_000;

/// A read model written once per batch: one upsert statement carrying one row per key the
/// batch touched.
pub(crate) struct Model {
    name: String,
    create: String,
    upsert: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// Events per event type (a handful of rows).
    Counts,
    /// Per stream: events, the sum of their `cents`, the last version.
    Balances,
}

/// One batch's effect, per key: (events, cents, last version).
type Tally = HashMap<String, (i64, i64, i64)>;

impl Model {
    pub(crate) fn new(kind: Kind, name: &str, table: &str) -> Self {
        let (create, upsert) = match kind {
            Kind::Counts => (
                format!("CREATE TABLE {table} (event_type text PRIMARY KEY, n bigint NOT NULL)"),
                format!(
                    "INSERT INTO {table} (event_type, n) \
                     SELECT k, n FROM UNNEST($1::text[], $2::int8[]) AS b(k, n) \
                     ON CONFLICT (event_type) DO UPDATE SET n = {table}.n + EXCLUDED.n"
                ),
            ),
            Kind::Balances => (
                format!(
                    "CREATE TABLE {table} (stream text PRIMARY KEY, events bigint NOT NULL, \
                     cents bigint NOT NULL, version bigint NOT NULL)"
                ),
                format!(
                    "INSERT INTO {table} (stream, events, cents, version) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[]) \
                     ON CONFLICT (stream) DO UPDATE SET events = {table}.events + EXCLUDED.events, \
                     cents = {table}.cents + EXCLUDED.cents, version = EXCLUDED.version"
                ),
            ),
        };
        Self {
            name: name.to_owned(),
            create,
            upsert,
            kind,
        }
    }

    /// Adds one event, given by its columns, to `tally`.
    fn add(
        &self,
        tally: &mut Tally,
        event_type: &str,
        stream: &str,
        payload: &serde_json::Value,
        version: i64,
    ) {
        let key = match self.kind {
            Kind::Counts => event_type,
            Kind::Balances => stream,
        };
        let entry = tally.entry(key.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += payload["cents"].as_i64().unwrap_or(0);
        entry.2 = version;
    }

    fn add_event(&self, tally: &mut Tally, event: &RecordedEvent) {
        let version = i64::try_from(event.version.get()).expect("version");
        self.add(
            tally,
            &event.event_type,
            event.stream.aggregate_id(),
            &event.payload,
            version,
        );
    }

    /// Writes `tally` in one statement.
    async fn write(&self, conn: &mut PgConnection, tally: Tally) -> Result<(), sqlx::Error> {
        let mut keys = Vec::with_capacity(tally.len());
        let (mut events, mut cents, mut versions) = (Vec::new(), Vec::new(), Vec::new());
        for (key, (n, c, v)) in tally {
            keys.push(key);
            events.push(n);
            cents.push(c);
            versions.push(v);
        }
        let query = sqlx::query(AssertSqlSafe(self.upsert.as_str()))
            .bind(keys)
            .bind(events);
        let query = match self.kind {
            Kind::Counts => query,
            Kind::Balances => query.bind(cents).bind(versions),
        };
        query.execute(conn).await?;
        Ok(())
    }
}

impl PgProjection for Model {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), sqlx::Error> {
        let mut tally = Tally::new();
        self.add_event(&mut tally, event);
        self.write(conn, tally).await
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), sqlx::Error> {
        let mut tally = Tally::new();
        for event in events {
            self.add_event(&mut tally, event);
        }
        self.write(conn, tally).await
    }
}

impl PgRebuildable for Model {
    fn tables(&self) -> &[&str] {
        match self.kind {
            Kind::Counts => &["event_counts"],
            Kind::Balances => &["balances"],
        }
    }

    async fn create_tables(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.create.as_str()))
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The raw engine's rebuild: pages of the log in log order, every column decoded, then per
/// page one transaction with the model's upsert and the checkpoint moved; returns the events.
async fn raw_rebuild(pool: &PgPool, model: &Model, table: &str, batch: usize) -> u64 {
    sqlx::query(AssertSqlSafe(format!("TRUNCATE {table}")))
        .execute(pool)
        .await
        .expect("truncate");
    let mut after = (String::from("0"), 0_i64);
    let mut read = 0_u64;
    loop {
        let rows = sqlx::query(RAW_LOG_PAGE)
            .bind(&after.0)
            .bind(after.1)
            .bind(i64::try_from(batch).expect("small"))
            .fetch_all(pool)
            .await
            .expect("raw page");
        let Some(last) = rows.last() else { break };
        after = (last.get(1), last.get(0));
        let mut tally = Tally::new();
        for row in &rows {
            let payload: serde_json::Value = row.get(11);
            let metadata: serde_json::Value = row.get(10);
            std::hint::black_box((
                row.get::<&str, _>(2),
                row.get::<&str, _>(3),
                row.get::<uuid::Uuid, _>(6),
                row.get::<i32, _>(8),
                row.get::<chrono::DateTime<chrono::Utc>, _>(9),
                metadata,
            ));
            model.add(&mut tally, row.get(7), row.get(4), &payload, row.get(5));
        }
        let mut tx = pool.begin().await.expect("begin");
        model.write(&mut tx, tally).await.expect("raw upsert");
        sqlx::query("UPDATE raw_checkpoints SET transaction_id = $1, position = $2")
            .bind(&after.0)
            .bind(after.1)
            .execute(&mut *tx)
            .await
            .expect("raw checkpoint");
        tx.commit().await.expect("commit");
        read += rows.len() as u64;
    }
    read
}

/// Runs `PgRebuild` of `kind` against `raw_rebuild`, alternately; adds a row.
async fn rebuild(pool: &PgPool, store: &PgEventStore, table: &mut Table, kind: Kind, events: u64) {
    let (name, view, raw_table) = match kind {
        Kind::Counts => ("bench-counts", "event_counts", "raw_event_counts"),
        Kind::Balances => ("bench-balances", "balances", "raw_balances"),
    };
    let raw_model = Model::new(kind, "raw", raw_table);
    sqlx::query(AssertSqlSafe(raw_model.create.clone()))
        .execute(pool)
        .await
        .expect("raw table");
    let raw_model = &raw_model;
    let (framework, raw) = median_latencies(
        runs(),
        || async move {
            let options = RebuildOptions::default()
                .with_batch_size(BATCH)
                .with_grace_period(Duration::ZERO);
            let rebuild = PgRebuild::new(store.clone(), Model::new(kind, name, view), options);
            let report = rebuild
                .run(CancellationToken::new())
                .await
                .expect("rebuild")
                .expect("not cancelled");
            assert_eq!(report.processed, events, "framework: every event applied");
        },
        || async move {
            assert_eq!(raw_rebuild(pool, raw_model, raw_table, BATCH).await, events);
        },
    )
    .await;
    check_same(pool, kind, view, raw_table).await;
    let shape = match kind {
        Kind::Counts => "count per event type",
        Kind::Balances => "1 upsert row per stream per batch",
    };
    table.throughput(
        &format!("rebuild {events} events, {shape}, events/s"),
        "",
        events as f64 / framework.as_secs_f64(),
        events as f64 / raw.as_secs_f64(),
    );
}

/// The framework's read model (through the readers' view) equals the raw engine's.
async fn check_same(pool: &PgPool, kind: Kind, view: &str, raw_table: &str) {
    let digest = |table: &str| match kind {
        Kind::Counts => format!("SELECT sum(n)::int8, count(*) FROM {table}"),
        Kind::Balances => {
            format!("SELECT sum(events + cents + version)::int8, count(*) FROM {table}")
        }
    };
    let framework: (i64, i64) = sqlx::query_as(AssertSqlSafe(digest(view)))
        .fetch_one(pool)
        .await
        .expect("framework digest");
    let raw: (i64, i64) = sqlx::query_as(AssertSqlSafe(digest(raw_table)))
        .fetch_one(pool)
        .await
        .expect("raw digest");
    assert_eq!(
        framework, raw,
        "{view}: framework and raw read models differ"
    );
}

/// A live runner's `catch_up` from an empty checkpoint (batches of `ProjectionOptions`'
/// default 500) into a plain table, against the raw rebuild.
async fn catch_up(pool: &PgPool, store: &PgEventStore, table: &mut Table, events: u64) {
    let plain = "runner_event_counts";
    let model = Model::new(Kind::Counts, "unused", plain);
    sqlx::query(AssertSqlSafe(model.create.clone()))
        .execute(pool)
        .await
        .expect("runner table");
    let raw_model = &Model::new(Kind::Counts, "raw", "raw_event_counts");
    let round = std::cell::Cell::new(0);
    let (framework, raw) = median_latencies(
        runs(),
        || {
            round.set(round.get() + 1);
            let name = format!("bench-catch-up-{}", round.get());
            async move {
                sqlx::query(AssertSqlSafe(format!("TRUNCATE {plain}")))
                    .execute(pool)
                    .await
                    .expect("truncate");
                let runner = PgProjectionRunner::new(
                    store.clone(),
                    Model::new(Kind::Counts, &name, plain),
                    ProjectionOptions::default(),
                );
                assert_eq!(runner.catch_up().await.expect("catch up"), events);
            }
        },
        || async move {
            assert_eq!(
                raw_rebuild(pool, raw_model, "raw_event_counts", 500).await,
                events
            );
        },
    )
    .await;
    table.row(
        "  runner catch_up from the start, batches of 500, events/s",
        format!("{:.0}", events as f64 / framework.as_secs_f64()),
        format!("{:.0}", events as f64 / raw.as_secs_f64()),
        raw.as_secs_f64() / framework.as_secs_f64(),
    );
}

/// Timed runs of each side after a warm-up run: `BENCH_REBUILD_RUNS`, default 2.
fn runs() -> u32 {
    std::env::var("BENCH_REBUILD_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

pub(crate) async fn rebuilds(pool: &PgPool, store: &PgEventStore, tenant: &str, table: &mut Table) {
    let events = seed::log(pool, tenant).await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS raw_checkpoints (transaction_id text, position bigint)",
    )
    .execute(pool)
    .await
    .expect("raw checkpoints");
    sqlx::query("INSERT INTO raw_checkpoints VALUES ('0', 0)")
        .execute(pool)
        .await
        .expect("raw checkpoint row");
    let started = Instant::now();
    rebuild(pool, store, table, Kind::Counts, events).await;
    rebuild(pool, store, table, Kind::Balances, events).await;
    if std::env::var("BENCH_CATCH_UP").is_ok_and(|v| v == "1") {
        catch_up(pool, store, table, events).await;
    }
    println!(
        "(rebuild scenarios took {:.0} s)",
        started.elapsed().as_secs_f64()
    );
}
