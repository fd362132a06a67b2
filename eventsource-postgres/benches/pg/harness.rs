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
    /// CPU per unit of each side, client + server, in microseconds; the ratio is raw's total
    /// over the framework's (as for throughput, above 1 means the framework costs less).
    pub(crate) fn cpu(&mut self, name: &str, compared: &Compared) {
        let total = |side: &Side| side.client_us + side.server_us;
        let show = |side: &Side| format!("{:.0} + {:.0} µs", side.client_us, side.server_us);
        self.row(
            name,
            show(&compared.framework),
            show(&compared.raw),
            total(&compared.raw) / total(&compared.framework),
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
    let compared = compare_cpu(None, tasks, framework, raw).await;
    (compared.framework.rate, compared.raw.rate)
}

/// One side of a [`compare_cpu`]: units per second, and CPU per unit in microseconds of this
/// process (the client) and of the database's backends (the server).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Side {
    pub(crate) rate: f64,
    pub(crate) client_us: f64,
    pub(crate) server_us: f64,
}

/// Both sides of a [`compare_cpu`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Compared {
    pub(crate) framework: Side,
    pub(crate) raw: Side,
}

/// As [`compare`], also measuring the CPU each side costs per unit: this process's, and that of
/// `pool`'s database backends on this machine (from `/proc`; 0 without a pool or `/proc`).
/// On two cores under many tasks CPU is what bounds the rate, so this says which side of the
/// wire a gap is on.
pub(crate) async fn compare_cpu<F, Fut, R, RFut>(
    pool: Option<&PgPool>,
    tasks: usize,
    framework: F,
    raw: R,
) -> Compared
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = u64> + Send,
    R: Fn(usize, u64) -> RFut + Send + Sync + Clone + 'static,
    RFut: Future<Output = u64> + Send,
{
    const ROUNDS: u32 = 4;
    let slice = bench_time() / ROUNDS;
    let (mut f, mut r) = (0, 0);
    let (mut f_cpu, mut r_cpu) = ((0.0, 0.0), (0.0, 0.0));
    // A short warm-up of each: connections, prepared statements.
    run(tasks, Duration::from_millis(100), &framework).await;
    run(tasks, Duration::from_millis(100), &raw).await;
    for _ in 0..ROUNDS {
        let before = cpu(pool).await;
        f += run(tasks, slice, &framework).await;
        let middle = cpu(pool).await;
        r += run(tasks, slice, &raw).await;
        let after = cpu(pool).await;
        f_cpu.0 += middle.0 - before.0;
        f_cpu.1 += middle.1 - before.1;
        r_cpu.0 += after.0 - middle.0;
        r_cpu.1 += after.1 - middle.1;
    }
    let time = (slice * ROUNDS).as_secs_f64();
    let side = |units: u64, (client, server): (f64, f64)| {
        let per = |seconds: f64| seconds * 1e6 / units.max(1) as f64;
        Side {
            rate: units as f64 / time,
            client_us: per(client),
            server_us: per(server),
        }
    };
    Compared {
        framework: side(f, f_cpu),
        raw: side(r, r_cpu),
    }
}

/// CPU seconds used so far by this process and by the backends serving `pool`'s database.
async fn cpu(pool: Option<&PgPool>) -> (f64, f64) {
    let Some(pool) = pool else {
        return (process_cpu("self"), 0.0);
    };
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND backend_type = 'client backend'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let server = pids.iter().map(|pid| process_cpu(&pid.to_string())).sum();
    (process_cpu("self"), server)
}

/// CPU seconds process `pid` (or `self`) has used, user and system, from `/proc/<pid>/stat`
/// (ticks of 1/100 s, Linux's `USER_HZ`); 0 where that file does not exist.
fn process_cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
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
