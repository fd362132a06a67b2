//! PostgreSQL benchmark: the framework against hand-written sqlx doing the same durable work.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:54329/postgres cargo bench -p eventsource-postgres --bench pg
//! ```
//!
//! Starts from an empty database (`eventsource_bench`, dropped and re-created), runs each
//! scenario for `BENCH_SECONDS` (default 6, in four alternating rounds of each side; 2 s runs
//! moved ratios by up to 0.1 from run to run) and prints one table: scenario, the framework's
//! figure, the raw engine's figure in the same run, and their ratio (framework / raw for
//! throughputs, raw / framework for latencies: above 1.0 means the framework is faster).
//! `BENCH_LOG_EVENTS` (default 1,000,000) sets the size of the log read; `BENCH_ONLY` (a comma
//! list of `appends`, `commands`, `loads`, `log`) runs a subset. The command scenarios measure
//! steady state: before their timed rounds, each task commands each of its aggregates once, on
//! both sides (with the cache, that loads them).
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    Aggregate, DomainEvent, EventStore, ExpectedVersion, Handle, LogFilter, LogPosition, NewEvent,
    Repository, RetryPolicy, Snapshot, SnapshotStore, StreamId, TenantId, Version, read_log,
};
use eventsource_postgres::{MIGRATOR, PgEventStore, PgSnapshotStore};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Row as _};
use uuid::Uuid;

const RAW_SCHEMA: &[&str] = &[
    "CREATE TABLE raw_events (
        global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream text NOT NULL,
        version bigint NOT NULL,
        event_id uuid NOT NULL UNIQUE,
        event_type text NOT NULL,
        payload jsonb NOT NULL,
        UNIQUE (stream, version))",
    "CREATE TABLE raw_snapshots (stream text PRIMARY KEY, version bigint NOT NULL, state jsonb NOT NULL)",
];
const RAW_INSERT: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
                          VALUES ($1, $2, $3, 'Incremented', $4)";
const RAW_INSERT_BATCH: &str = "INSERT INTO raw_events (stream, version, event_id, event_type, payload) \
     SELECT $1, v, id, 'Incremented', p FROM UNNEST($2::int8[], $3::uuid[], $4::jsonb[]) AS b(v, id, p)";
const RAW_LOAD: &str = "SELECT version, payload FROM raw_events WHERE stream = $1 ORDER BY version";
const RAW_LOAD_AFTER: &str =
    "SELECT version, payload FROM raw_events WHERE stream = $1 AND version > $2 ORDER BY version";
const RAW_SNAPSHOT: &str = "SELECT version, state FROM raw_snapshots WHERE stream = $1";
const RAW_LOG_PAGE: &str = "SELECT global_position, transaction_id::text, tenant_id, aggregate_type, \
     aggregate_id, version, event_id, event_type, schema_version, recorded_at, metadata, payload \
     FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
     ORDER BY events.transaction_id, events.global_position LIMIT $3";

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Incremented { by: u64 },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "counter", event = CounterEvent, snapshot = 1)]
struct Counter {
    value: u64,
}

impl CounterEventHandler for Counter {
    fn when_incremented(&mut self, e: counter_event::Incremented) {
        self.value += e.by;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Handle for Counter {
    type Command = u64;
    type Error = Never;
    fn handle(&self, by: u64) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented { by }])
    }
}

fn event() -> NewEvent {
    NewEvent::new("Incremented", 1, json!({ "by": 1 }))
}

struct Table(Vec<[String; 4]>);

impl Table {
    fn throughput(&mut self, name: &str, unit: &str, framework: f64, raw: f64) {
        self.row(
            name,
            format!("{framework:.0} {unit}"),
            format!("{raw:.0} {unit}"),
            framework / raw,
        );
    }
    fn latency(&mut self, name: &str, framework: Duration, raw: Duration) {
        self.row(
            name,
            format!("{:.3} ms", framework.as_secs_f64() * 1e3),
            format!("{:.3} ms", raw.as_secs_f64() * 1e3),
            raw.as_secs_f64() / framework.as_secs_f64(),
        );
    }
    fn row(&mut self, name: &str, framework: String, raw: String, ratio: f64) {
        println!("{name:<52} {framework:>16} {raw:>16} {ratio:>7.2}");
        self.0
            .push([name.to_owned(), framework, raw, format!("{ratio:.2}")]);
    }
}

/// Group commit as the benchmark configures it: `BENCH_LANES` lanes and `BENCH_GROUP_EVENTS`
/// events per group, by default the store's own defaults.
fn with_group(store: PgEventStore) -> PgEventStore {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    store.with_group_commit(
        var("BENCH_LANES", eventsource_postgres::DEFAULT_COMMIT_LANES),
        var(
            "BENCH_GROUP_EVENTS",
            eventsource_postgres::DEFAULT_GROUP_EVENTS,
        ),
    )
}

fn bench_time() -> Duration {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    Duration::from_secs(seconds)
}

/// Aggregates each task of the command scenarios works on, in turn.
const AGGREGATES_PER_TASK: u64 = 50;

/// Runs `tasks` copies of `op`, `times` calls each (a warm-up over a known working set).
async fn run_times<F, Fut>(tasks: usize, times: u64, op: &F)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = u64> + Send,
{
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in 0..times {
                    op(task, i).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
}

/// Runs `tasks` copies of `op` for `time`; returns the units they reported.
async fn run<F, Fut>(tasks: usize, time: Duration, op: &F) -> u64
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = u64> + Send,
{
    let deadline = Instant::now() + time;
    let total = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (op, total) = (op.clone(), total.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    total.fetch_add(op(task, i).await, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
    total.load(Ordering::Relaxed)
}

/// Runs the framework and the raw operation in alternating rounds (the machine is shared, so
/// both should see the same conditions); returns units per second of each.
async fn compare<F, Fut, R, RFut>(tasks: usize, framework: F, raw: R) -> (f64, f64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = u64> + Send,
    R: Fn(usize, u64) -> RFut + Send + Sync + Clone + 'static,
    RFut: Future<Output = u64> + Send,
{
    const ROUNDS: u32 = 4;
    let slice = bench_time() / ROUNDS;
    let (mut f, mut r) = (0, 0);
    // A short warm-up of each: connections, prepared statements.
    run(tasks, Duration::from_millis(100), &framework).await;
    run(tasks, Duration::from_millis(100), &raw).await;
    for _ in 0..ROUNDS {
        f += run(tasks, slice, &framework).await;
        r += run(tasks, slice, &raw).await;
    }
    let time = (slice * ROUNDS).as_secs_f64();
    (f as f64 / time, r as f64 / time)
}

async fn mean_latency<F, Fut>(runs: u32, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    op().await; // warm-up: prepared statements, caches
    let started = Instant::now();
    for _ in 0..runs {
        op().await;
    }
    started.elapsed() / runs
}

async fn setup() -> PgPool {
    let url = std::env::var("DATABASE_URL").expect("set DATABASE_URL to run the benchmark");
    let server = PgConnectOptions::from_str(&url)
        .expect("valid DATABASE_URL")
        .disable_statement_logging();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .expect("connect");
    sqlx::query("DROP DATABASE IF EXISTS eventsource_bench WITH (FORCE)")
        .execute(&admin)
        .await
        .expect("drop");
    sqlx::query("CREATE DATABASE eventsource_bench")
        .execute(&admin)
        .await
        .expect("create");
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .test_before_acquire(false)
        .connect_with(server.database("eventsource_bench"))
        .await
        .expect("connect to the bench database");
    MIGRATOR.run(&pool).await.expect("migrate");
    for ddl in RAW_SCHEMA.iter().copied() {
        sqlx::query(ddl).execute(&pool).await.expect("raw schema");
    }
    pool
}

/// The raw command loop: load the stream, fold it, insert the next version; retry on a
/// unique violation (someone appended first).
async fn raw_command(
    pool: &PgPool,
    prefix: &str,
    hot: bool,
    task: usize,
    i: u64,
    conflicts: &AtomicU64,
) -> u64 {
    let stream = if hot {
        format!("r{prefix}-hot")
    } else {
        format!("r{prefix}-{task}-{}", i % AGGREGATES_PER_TASK)
    };
    loop {
        let rows = sqlx::query(RAW_LOAD)
            .bind(&stream)
            .fetch_all(pool)
            .await
            .expect("raw load");
        let mut value = 0u64;
        for row in &rows {
            let payload: serde_json::Value = row.get(1);
            value += payload["by"].as_u64().unwrap_or(0);
        }
        std::hint::black_box(value);
        let next = i64::try_from(rows.len()).unwrap_or(i64::MAX) + 1;
        match sqlx::query(RAW_INSERT)
            .bind(&stream)
            .bind(next)
            .bind(Uuid::now_v7())
            .bind(json!({ "by": 1 }))
            .execute(pool)
            .await
        {
            Ok(_) => return 1,
            Err(e)
                if e.as_database_error()
                    .is_some_and(sqlx::error::DatabaseError::is_unique_violation) =>
            {
                conflicts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("raw append: {e}"),
        }
    }
}

async fn appends(
    pool: &PgPool,
    store: &PgEventStore,
    tenant: &TenantId,
    table: &mut Table,
    label: &str,
) {
    // Appends: one event per command, distinct streams.
    for tasks in [1, 8, 32] {
        let prefix = Uuid::now_v7().simple().to_string();
        let (s, t) = (store.clone(), tenant.clone());
        let p = prefix.clone();
        let fw = move |task, i| {
            let (s, t, p) = (s.clone(), t.clone(), p.clone());
            async move {
                let stream =
                    StreamId::new(t, "append", format!("{p}-{task}-{i}-{}", Uuid::now_v7()));
                s.append(&stream, ExpectedVersion::NoStream, vec![event()])
                    .await
                    .expect("append");
                1
            }
        };
        let pool2 = pool.clone();
        let raw = move |task, i| {
            let (pool, p) = (pool2.clone(), prefix.clone());
            async move {
                sqlx::query(RAW_INSERT)
                    .bind(format!("{p}-{task}-{i}-{}", Uuid::now_v7()))
                    .bind(1_i64)
                    .bind(Uuid::now_v7())
                    .bind(json!({ "by": 1 }))
                    .execute(&pool)
                    .await
                    .expect("raw insert");
                1
            }
        };
        let (framework, raw) = compare(tasks, fw, raw).await;
        table.throughput(
            &format!("append 1 event, {tasks} task(s){label}, events/s"),
            "",
            framework,
            raw,
        );
    }

    // Appends: 10-event batches, distinct streams.
    for tasks in [8, 32] {
        let prefix = Uuid::now_v7().simple().to_string();
        let (s, t, p) = (store.clone(), tenant.clone(), prefix.clone());
        let fw = move |task, i| {
            let (s, t, p) = (s.clone(), t.clone(), p.clone());
            async move {
                let stream =
                    StreamId::new(t, "batch", format!("{p}-{task}-{i}-{}", Uuid::now_v7()));
                s.append(
                    &stream,
                    ExpectedVersion::NoStream,
                    (0..10).map(|_| event()).collect(),
                )
                .await
                .expect("append");
                10
            }
        };
        let pool2 = pool.clone();
        let raw = move |task, i| {
            let (pool, p) = (pool2.clone(), prefix.clone());
            async move {
                sqlx::query(RAW_INSERT_BATCH)
                    .bind(format!("b{p}-{task}-{i}-{}", Uuid::now_v7()))
                    .bind((1..=10_i64).collect::<Vec<_>>())
                    .bind((0..10).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
                    .bind((0..10).map(|_| json!({ "by": 1 })).collect::<Vec<_>>())
                    .execute(&pool)
                    .await
                    .expect("raw batch");
                10
            }
        };
        let (framework, raw) = compare(tasks, fw, raw).await;
        table.throughput(
            &format!("append 10-event batches, {tasks} tasks{label}, events/s"),
            "",
            framework,
            raw,
        );
    }
}

async fn commands(pool: &PgPool, store: &PgEventStore, tenant: &TenantId, table: &mut Table) {
    // Commands through the Repository: load + handle + append, `AGGREGATES_PER_TASK` aggregates
    // per task.
    let retry = RetryPolicy::default()
        .with_max_attempts(1000)
        .with_base_delay(Duration::from_micros(100));
    for (tasks, hot) in [(1, false), (16, false), (16, true)] {
        let label = if hot {
            "one hot stream".to_owned()
        } else {
            "distinct aggregates".to_owned()
        };
        // The recommended set-up (cache + group commit) first, then each turned off.
        for (cached, grouped) in [(true, true), (true, false), (false, false)] {
            let prefix = Uuid::now_v7().simple().to_string();
            let store = if grouped {
                with_group(store.clone())
            } else {
                store.clone().without_group_commit()
            };
            let mut repo = Repository::<Counter, _>::new(store)
                .with_tenant(tenant.clone())
                .with_retry(retry);
            if cached {
                repo = repo.with_cache(10_000);
            }
            let conflicts = Arc::new(AtomicU64::new(0));
            let (p, c) = (prefix.clone(), conflicts.clone());
            let fw = move |task, i| {
                let (repo, p, c) = (repo.clone(), p.clone(), c.clone());
                async move {
                    let id = if hot {
                        format!("{p}-hot")
                    } else {
                        format!("{p}-{task}-{}", i % AGGREGATES_PER_TASK)
                    };
                    let done = repo.execute(&id, 1).await.expect("command");
                    c.fetch_add(u64::from(done.attempts - 1), Ordering::Relaxed);
                    1
                }
            };
            let raw_conflicts = Arc::new(AtomicU64::new(0));
            let (pool2, c) = (pool.clone(), raw_conflicts.clone());
            let raw = move |task, i| {
                let (pool, p, c) = (pool2.clone(), prefix.clone(), c.clone());
                async move { raw_command(&pool, &p, hot, task, i, &c).await }
            };
            // Steady state: every aggregate has been commanded once (with the cache, loaded
            // once) before the timed rounds, so the first round does not carry the one-off
            // loads of the whole working set. Both sides get the same warm-up.
            run_times(tasks, AGGREGATES_PER_TASK, &fw).await;
            run_times(tasks, AGGREGATES_PER_TASK, &raw).await;
            conflicts.store(0, Ordering::Relaxed);
            raw_conflicts.store(0, Ordering::Relaxed);
            let (framework, raw) = compare(tasks, fw, raw).await;
            let setup = match (cached, grouped) {
                (true, true) => {
                    format!("commands, {tasks} task(s), {label}, cache + group commit, cmds/s")
                }
                (true, false) => "  same, cache, no group commit".to_owned(),
                _ => "  same, no cache, no group commit".to_owned(),
            };
            let name = format!(
                "{setup} [conflicts {}/raw {}]",
                conflicts.load(Ordering::Relaxed),
                raw_conflicts.load(Ordering::Relaxed)
            );
            table.throughput(&name, "", framework, raw);
        }
    }
}

async fn loads(pool: &PgPool, store: &PgEventStore, tenant: &TenantId, table: &mut Table) {
    // Aggregate load latency, with and without a snapshot.
    let snapshots = PgSnapshotStore::new(pool.clone());
    for n in [100_u64, 1_000, 10_000] {
        let id = format!("load-{n}");
        let stream = StreamId::new(tenant.clone(), Counter::TYPE, &id);
        let raw_stream = format!("load-{n}");
        for chunk in 0..n / 100 {
            let batch = (0..100)
                .map(|_| {
                    NewEvent::from_event(&CounterEvent::Incremented { by: 1 }).expect("encode")
                })
                .collect();
            store
                .append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("fill");
            let from = i64::try_from(chunk * 100).expect("small");
            sqlx::query(RAW_INSERT_BATCH)
                .bind(&raw_stream)
                .bind((from + 1..=from + 100).collect::<Vec<_>>())
                .bind((0..100).map(|_| Uuid::now_v7()).collect::<Vec<_>>())
                .bind((0..100).map(|_| json!({ "by": 1 })).collect::<Vec<_>>())
                .execute(pool)
                .await
                .expect("raw fill");
        }
        let plain = Repository::<Counter, _>::new(store.clone()).with_tenant(tenant.clone());
        let runs = if n >= 10_000 { 20 } else { 100 };
        let framework = mean_latency(runs, || async {
            assert_eq!(
                plain.load(&id).await.expect("load").version(),
                Version::new(n)
            );
        })
        .await;
        let raw = mean_latency(runs, || async {
            let rows = sqlx::query(RAW_LOAD)
                .bind(&raw_stream)
                .fetch_all(pool)
                .await
                .expect("raw load");
            let mut state = Counter::default();
            for row in &rows {
                let payload: serde_json::Value = row.get(1);
                state.value += payload["by"].as_u64().unwrap_or(0);
            }
            assert_eq!(std::hint::black_box(state).value, n);
            assert_eq!(rows.len() as u64, n);
        })
        .await;
        table.latency(&format!("load {n} events, no snapshot"), framework, raw);

        snapshots
            .save(Snapshot::new(
                stream.clone(),
                Version::new(n),
                1,
                json!({ "value": n }),
            ))
            .await
            .expect("snapshot");
        sqlx::query("INSERT INTO raw_snapshots VALUES ($1, $2, $3)")
            .bind(&raw_stream)
            .bind(i64::try_from(n).expect("small"))
            .bind(json!({ "value": n }))
            .execute(pool)
            .await
            .expect("raw snapshot");
        let snapped = Repository::<Counter, _>::new(store.clone())
            .with_tenant(tenant.clone())
            .with_snapshots(snapshots.clone(), eventsource_core::SnapshotPolicy::Never);
        let framework = mean_latency(runs, || async {
            assert_eq!(snapped.load(&id).await.expect("load").state().value, n);
        })
        .await;
        let raw = mean_latency(runs, || async {
            let snap = sqlx::query(RAW_SNAPSHOT)
                .bind(&raw_stream)
                .fetch_one(pool)
                .await
                .expect("raw snapshot");
            let version: i64 = snap.get(0);
            let state: Counter = serde_json::from_value(snap.get(1)).expect("state");
            let tail = sqlx::query(RAW_LOAD_AFTER)
                .bind(&raw_stream)
                .bind(version)
                .fetch_all(pool)
                .await
                .expect("tail");
            assert!(tail.is_empty() && state.value == n);
        })
        .await;
        table.latency(&format!("load {n} events, from snapshot"), framework, raw);
    }
}

async fn log_read(pool: &PgPool, store: &PgEventStore, tenant: &TenantId, table: &mut Table) {
    // Global log read rate.
    let target: u64 = std::env::var("BENCH_LOG_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    let mut have = u64::try_from(stored).expect("count");
    let fill_started = Instant::now();
    let fill = Arc::new(AtomicU64::new(have));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, t, fill) = (store.clone(), tenant.clone(), fill.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while fill.fetch_add(1000, Ordering::Relaxed) < target {
                    let stream = StreamId::new(t.clone(), "log", format!("fill-{w}-{i}"));
                    s.append(
                        &stream,
                        ExpectedVersion::NoStream,
                        (0..1000).map(|_| event()).collect(),
                    )
                    .await
                    .expect("fill");
                    i += 1;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("fill task");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count");
    have = u64::try_from(stored).expect("count");
    println!(
        "(log filled to {have} events in {:.1} s)",
        fill_started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE events")
        .execute(pool)
        .await
        .expect("vacuum");

    let started = Instant::now();
    let read: u64 = read_log(store, LogPosition::START, 5000, LogFilter::all())
        .try_fold(0_u64, |n, e| async move {
            std::hint::black_box(&e);
            Ok(n + 1)
        })
        .await
        .expect("read log");
    let framework = read as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut after = (String::from("0"), 0_i64);
    let mut raw_read = 0_u64;
    loop {
        let rows = sqlx::query(RAW_LOG_PAGE)
            .bind(&after.0)
            .bind(after.1)
            .bind(5000_i64)
            .fetch_all(pool)
            .await
            .expect("raw page");
        let Some(last) = rows.last() else { break };
        after = (last.get(1), last.get(0));
        for row in &rows {
            let payload: serde_json::Value = row.get(11);
            let metadata: serde_json::Value = row.get(10);
            std::hint::black_box((payload, metadata, row.get::<String, _>(1)));
        }
        raw_read += rows.len() as u64;
    }
    let raw = raw_read as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read, raw_read);
    table.throughput(
        &format!("read the global log ({read} events), events/s"),
        "",
        framework,
        raw,
    );
}

#[tokio::main]
async fn main() {
    let pool = setup().await;
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new("bench");
    let mut table = Table(Vec::new());
    println!(
        "{:<52} {:>16} {:>16} {:>7}",
        "scenario", "framework", "raw sqlx", "ratio"
    );

    // `BENCH_ONLY=appends,loads` runs a subset: appends, commands, loads, log.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    if wanted("appends") {
        // The store as it comes (group commit on), then without group commit.
        appends(&pool, &with_group(store.clone()), &tenant, &mut table, "").await;
        let alone = store.clone().without_group_commit();
        appends(&pool, &alone, &tenant, &mut table, ", no group commit").await;
    }
    if wanted("commands") {
        commands(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("loads") {
        loads(&pool, &store, &tenant, &mut table).await;
    }
    if wanted("log") {
        log_read(&pool, &store, &tenant, &mut table).await;
    }
}
