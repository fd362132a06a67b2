//! Running scenarios and printing the table.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventsource_postgres::{MIGRATOR, PgEventStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::raw::RAW_SCHEMA;

pub(crate) struct Table(pub(crate) Vec<[String; 4]>);

impl Table {
    pub(crate) fn throughput(&mut self, name: &str, unit: &str, framework: f64, raw: f64) {
        self.row(
            name,
            format!("{framework:.0} {unit}"),
            format!("{raw:.0} {unit}"),
            framework / raw,
        );
    }
    pub(crate) fn latency(&mut self, name: &str, framework: Duration, raw: Duration) {
        self.row(
            name,
            format!("{:.3} ms", framework.as_secs_f64() * 1e3),
            format!("{:.3} ms", raw.as_secs_f64() * 1e3),
            raw.as_secs_f64() / framework.as_secs_f64(),
        );
    }
    pub(crate) fn row(&mut self, name: &str, framework: String, raw: String, ratio: f64) {
        println!("{name:<52} {framework:>16} {raw:>16} {ratio:>7.2}");
        self.0
            .push([name.to_owned(), framework, raw, format!("{ratio:.2}")]);
    }
}

/// Group commit as the benchmark configures it: `BENCH_LANES` lanes and `BENCH_GROUP_EVENTS`
/// events per group, by default the store's own defaults.
pub(crate) fn with_group(store: PgEventStore) -> PgEventStore {
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

pub(crate) fn bench_time() -> Duration {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    Duration::from_secs(seconds)
}

/// Runs `tasks` copies of `op`, `times` calls each (a warm-up over a known working set).
pub(crate) async fn run_times<F, Fut>(tasks: usize, times: u64, op: &F)
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
pub(crate) async fn run<F, Fut>(tasks: usize, time: Duration, op: &F) -> u64
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
pub(crate) async fn compare<F, Fut, R, RFut>(tasks: usize, framework: F, raw: R) -> (f64, f64)
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

/// Median latencies of `framework` and `raw`, run alternately `runs` times each after a
/// warm-up of each: on a shared machine a burst of other work then hits both sides alike, and
/// the median ignores the runs it hit hardest.
pub(crate) async fn median_latencies<F, Fut, R, RFut>(
    runs: u32,
    mut framework: F,
    mut raw: R,
) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
    R: FnMut() -> RFut,
    RFut: Future<Output = ()>,
{
    // Warm-up: prepared statements, caches.
    framework().await;
    raw().await;
    let (mut f, mut r) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        framework().await;
        f.push(started.elapsed());
        let started = Instant::now();
        raw().await;
        r.push(started.elapsed());
    }
    f.sort();
    r.sort();
    (f[f.len() / 2], r[r.len() / 2])
}

pub(crate) async fn setup() -> PgPool {
    let url = std::env::var("DATABASE_URL").expect("set DATABASE_URL to run the benchmark");
    let server = PgConnectOptions::from_str(&url)
        .expect("valid DATABASE_URL")
        .disable_statement_logging();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .expect("connect");
    // `BENCH_DATABASE` lets benchmarks of several worktrees share one server.
    let database =
        std::env::var("BENCH_DATABASE").unwrap_or_else(|_| "eventsource_bench".to_owned());
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&admin)
        .await
        .expect("create");
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .test_before_acquire(false)
        .connect_with(server.database(&database))
        .await
        .expect("connect to the bench database");
    MIGRATOR.run(&pool).await.expect("migrate");
    for ddl in RAW_SCHEMA.iter().copied() {
        sqlx::query(ddl).execute(&pool).await.expect("raw schema");
    }
    pool
}
