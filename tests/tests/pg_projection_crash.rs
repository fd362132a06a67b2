//! A PostgreSQL projection as a process of its own (`src/bin/projection_child.rs`), killed and
//! stopped while writers append (issue 16 items 1 and 2, ADR 0016):
//!
//! - killed with SIGKILL at random points, 60 times: the read model equals a clean build, and
//!   holds each event of the log once, applied in log order;
//! - two processes started on the same projection: one applies, the other stands by; the
//!   applying one frozen with SIGSTOP past its lease: the other takes over; woken with SIGCONT,
//!   the old one (a zombie) commits nothing more and stops with a lost lease. Never do both
//!   apply;
//! - a rebuild process (issue 16 item 3, ADR 0018) killed with SIGKILL at random points while
//!   writers append: never cut over half-built (generation 1 serves, complete, until the end),
//!   and once resumed in this process the new generation equals a clean build.

mod support;

use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use eventsource_core::{
    EventStore, ExpectedVersion, LogFilter, RecordedEvent, StoreError, StreamId, TenantId,
};
use eventsource_postgres::{
    MIGRATOR, PgCheckpointStore, PgEventStore, PgProjectionRunner, PgRebuild, ProjectionOptions,
    RebuildOptions,
};
use eventsource_tests::projection_model::{CrashModel, LedgerModel, create_tables};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::child::ChildProcess;
use support::order::tick;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const KILLS: usize = 60;
const REBUILD_KILLS: usize = 12;

/// A projector process of projection `name` over `tenant`'s log, as `instance`, with more
/// environment in `env` (`PROJ_MODE=rebuild` ...).
fn spawn_projector(
    db_url: &str,
    name: &str,
    tenant: &TenantId,
    instance: &str,
    ttl_ms: u64,
    env: &[(&str, &str)],
) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_projection_child"));
    command
        .envs(env.iter().copied())
        .env("DATABASE_URL", db_url)
        .env("PROJ_NAME", name)
        .env("PROJ_TENANT", tenant.as_str())
        .env("PROJ_INSTANCE", instance)
        .env("PROJ_BATCH", rand::random_range(1..40u32).to_string())
        .env("PROJ_TTL_MS", ttl_ms.to_string());
    ChildProcess::spawn("projector", command)
}

async fn connect(db_url: &str) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .test_before_acquire(false)
        .connect_with(PgConnectOptions::from_str(db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&pool).await.expect("migrations");
    create_tables(&pool).await.expect("the model's tables");
    pool
}

/// Two writers appending one to three events with `Any` to a few streams of `tenant`, pausing
/// up to 8 ms in between, until `done`; each returns how many events it committed.
fn spawn_writers(
    store: &PgEventStore,
    tenant: &TenantId,
    done: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..2u64)
        .map(|w| {
            let (store, tenant, done) = (store.clone(), tenant.clone(), done.clone());
            tokio::spawn(async move {
                let mut next = w * 10_000_000;
                let mut committed = 0;
                while !done.is_cancelled() {
                    let size = rand::random_range(1..=3u64);
                    let events = (next..next + size).map(tick).collect::<Vec<_>>();
                    next += size;
                    let stream = StreamId::new(
                        tenant.clone(),
                        "counter",
                        format!("c-{}", rand::random_range(0..5u32)),
                    );
                    loop {
                        match store
                            .append(&stream, ExpectedVersion::Any, events.clone())
                            .await
                        {
                            Ok(_) => {
                                committed += events.len();
                                break;
                            }
                            Err(StoreError::Unavailable(e)) => eprintln!("append: {e}; retrying"),
                            Err(e) => panic!("append to {stream}: {e:?}"),
                        }
                    }
                    tokio::time::sleep(Duration::from_micros(rand::random_range(0..8_000))).await;
                }
                committed
            })
        })
        .collect()
}

/// Stops the writers; returns the tenant's whole log once it shows every event they committed
/// (an event becomes readable once every older transaction in the cluster has ended).
async fn stop_writers(
    writers: Vec<tokio::task::JoinHandle<usize>>,
    done: &CancellationToken,
    store: &PgEventStore,
    tenant: &TenantId,
) -> Vec<RecordedEvent> {
    done.cancel();
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.expect("a writer panicked");
    }
    support::tenant_log(store, tenant, committed).await
}

/// Runs projection `name` in this process as `instance` to the end of the log, waiting while
/// a killed process's lease has not run out.
async fn finish(store: &PgEventStore, tenant: &TenantId, name: &str, instance: &str) {
    let runner = PgProjectionRunner::new(
        store.clone(),
        CrashModel::new(name, "last"),
        ProjectionOptions::default()
            .with_filter(LogFilter::tenant(tenant.clone()))
            .with_instance_id(instance),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runner.catch_up().await {
            Ok(_) => return,
            Err(eventsource_postgres::PgProjectionError::LeaseHeld { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the last incarnation: {e:?}"),
        }
    }
}

/// The projection's rows in the order they were applied: `(event id, holder)`.
async fn rows(pool: &PgPool, name: &str) -> Vec<(uuid::Uuid, String)> {
    sqlx::query_as(
        "SELECT event_id, holder FROM pg_projection_crash_rows WHERE projection = $1 ORDER BY seq",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("rows")
}

async fn totals(pool: &PgPool, name: &str) -> BTreeMap<String, (i64, String)> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT stream, events, labels::text FROM pg_projection_crash_totals WHERE projection = $1",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("totals");
    rows.into_iter().map(|(s, e, l)| (s, (e, l))).collect()
}

/// Builds projection `name` from scratch in this process, to the end of the log.
async fn clean_build(store: &PgEventStore, tenant: &TenantId, name: &str) {
    PgProjectionRunner::new(
        store.clone(),
        CrashModel::new(name, "clean"),
        ProjectionOptions::default()
            .with_filter(LogFilter::tenant(tenant.clone()))
            .with_batch_size(1_000),
    )
    .catch_up()
    .await
    .expect("the clean build");
}

/// What is wrong with `rows` as the application of `log`: each event once, in log order.
fn exactly_once_in_order(log: &[RecordedEvent], rows: &[(uuid::Uuid, String)]) -> Vec<String> {
    let want: Vec<uuid::Uuid> = log.iter().map(|e| *e.event_id.as_uuid()).collect();
    let got: Vec<uuid::Uuid> = rows.iter().map(|r| r.0).collect();
    if got == want {
        return Vec::new();
    }
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let applied_twice = sorted_got.windows(2).filter(|w| w[0] == w[1]).count();
    let skipped = want.iter().filter(|id| !got.contains(id)).count();
    vec![format!(
        "{} rows for {} events: {applied_twice} applied twice, {skipped} skipped, or out of order",
        got.len(),
        want.len()
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_killed_at_random_points_applies_each_event_once_in_log_order() {
    let Some(db_url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let pool = connect(&db_url).await;
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new(support::unique("proj-crash"));
    let name = support::unique("proj-crash");
    let done = CancellationToken::new();
    let writers = spawn_writers(&store, &tenant, &done);

    let started = Instant::now();
    for round in 0..KILLS {
        // Mostly the same instance id, which takes its killed predecessor's lease at once;
        // every tenth a new one, which waits for that lease to run out (300 ms).
        let instance = if round % 10 == 4 {
            format!("projector-{round}")
        } else {
            "projector".to_owned()
        };
        let mut projector = spawn_projector(&db_url, &name, &tenant, &instance, 300, &[]);
        projector.ready().await;
        let life = if round % 10 == 4 { 300..700 } else { 0..200 };
        tokio::time::sleep(Duration::from_millis(rand::random_range(life))).await;
        projector.kill().await;
    }
    let killing = started.elapsed();
    let log = stop_writers(writers, &done, &store, &tenant).await;

    // Every killed incarnation that committed left rows marked with its pid.
    let incarnations = {
        let mut holders: Vec<String> = rows(&pool, &name).await.into_iter().map(|r| r.1).collect();
        holders.dedup();
        holders.len()
    };
    // The last incarnation, in this process, runs to the end of the log.
    finish(&store, &tenant, &name, "projector").await;
    let clean = format!("{name}-clean");
    clean_build(&store, &tenant, &clean).await;
    eprintln!(
        "{KILLS} kills in {killing:?}, {} events, {incarnations} incarnations committed",
        log.len()
    );
    let mut failures = exactly_once_in_order(&log, &rows(&pool, &name).await);
    if incarnations < KILLS / 3 {
        failures.push(format!(
            "only {incarnations} of {KILLS} killed projectors committed anything"
        ));
    }
    if totals(&pool, &name).await != totals(&pool, &clean).await {
        failures.push("the read model differs from a clean build".to_owned());
    }
    let checkpoint = eventsource_core::CheckpointStore::load(&PgCheckpointStore::new(pool), &name)
        .await
        .expect("checkpoint");
    if checkpoint != log.last().map(|e| e.position) {
        failures.push(format!("checkpoint {checkpoint:?} is not the log's end"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projector_processes_never_apply_together_and_a_woken_zombie_stops() {
    let Some(db_url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let pool = connect(&db_url).await;
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new(support::unique("proj-two"));
    let name = support::unique("proj-two");
    let done = CancellationToken::new();
    let writers = spawn_writers(&store, &tenant, &done);

    let ttl_ms = 400;
    let mut a = spawn_projector(&db_url, &name, &tenant, "a", ttl_ms, &[]);
    let mut b = spawn_projector(&db_url, &name, &tenant, "b", ttl_ms, &[]);
    a.ready().await;
    b.ready().await;
    let holders = || async {
        let mut holders: Vec<String> = rows(&pool, &name)
            .await
            .into_iter()
            .map(|r| r.1.split('/').next().unwrap_or_default().to_owned())
            .collect();
        holders.dedup();
        holders
    };
    support::wait_for("a first batch", async || !holders().await.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = holders().await;
    assert_eq!(
        first.len(),
        1,
        "one process applies, the other stands by: {first:?}"
    );
    let (leader, follower) = if first[0] == "a" { (a, b) } else { (b, a) };

    // Freeze the leader. Frozen inside a batch's transaction, it holds back every reader of
    // the log (the transaction has an id, and the log only shows what is older than every
    // open transaction), so the follower takes the lease but reads nothing new; thawed, the
    // leader finds its lease gone at the end of the batch and stops. Frozen between batches,
    // it lets the follower take over at once. Thaw and freeze again until the follower has
    // applied something.
    let mut frozen_at = 0;
    for attempt in 0..10 {
        leader.signal("STOP");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && holders().await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if holders().await.len() == 2 {
            frozen_at = attempt + 1;
            break;
        }
        leader.signal("CONT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        frozen_at > 0,
        "the follower never took over from a frozen leader"
    );

    // Woken (if it was not woken above), the leader is a zombie: its next lease check fails
    // and it stops, committing nothing more.
    let mut zombie = leader;
    zombie.signal("CONT");
    let stopped = zombie.said("stopped", Duration::from_secs(10)).await;
    assert!(
        stopped
            .as_deref()
            .is_some_and(|s| s.contains("lost its lease")),
        "the zombie did not stop on its lost lease: {stopped:?}"
    );
    let status = zombie.child.wait().await.expect("reap the zombie");
    assert_eq!(status.code(), Some(3), "exit code of a lost lease");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = stop_writers(writers, &done, &store, &tenant).await;
    support::wait_for("the follower to apply the whole log", async || {
        rows(&pool, &name).await.len() >= log.len()
    })
    .await;
    follower.kill().await;

    let rows = rows(&pool, &name).await;
    let holders = holders().await;
    eprintln!(
        "{} events; applied by {holders:?}; follower took over at attempt {frozen_at}",
        log.len()
    );
    // Runs of one holder: the leader's, then the follower's, never interleaved.
    assert_eq!(holders.len(), 2, "{holders:?}");
    let failures = exactly_once_in_order(&log, &rows);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let clean = format!("{name}-clean");
    clean_build(&store, &tenant, &clean).await;
    assert_eq!(totals(&pool, &name).await, totals(&pool, &clean).await);
}

/// `(event id)` rows of the view `crash_ledger` in `schema`, sorted.
async fn ledger(pool: &PgPool, schema: &str) -> Vec<uuid::Uuid> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT set_config('search_path', quote_ident($1), true)")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .expect("search path");
    let rows = sqlx::query_scalar("SELECT event_id FROM crash_ledger ORDER BY event_id")
        .fetch_all(&mut *tx)
        .await
        .expect("ledger");
    tx.commit().await.expect("commit");
    rows
}

/// The state of each generation of projection `name`, in order.
async fn generation_states(pool: &PgPool, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT state FROM projection_generations WHERE projection = $1 ORDER BY generation",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("generations")
}

/// A rebuild process of projection `name` (instance `rebuilder`, batches of 2 to 29 events,
/// a number of workers out of `workers`).
fn spawn_rebuilder(
    db_url: &str,
    name: &str,
    tenant: &TenantId,
    readers: &str,
    workers: std::ops::Range<u32>,
) -> ChildProcess {
    let batch = rand::random_range(2..30u32).to_string();
    let workers = rand::random_range(workers).to_string();
    spawn_projector(
        db_url,
        name,
        tenant,
        "rebuilder",
        2_000,
        &[
            ("PROJ_MODE", "rebuild"),
            ("PROJ_READERS", readers),
            ("PROJ_BATCH", &batch),
            ("PROJ_WORKERS", &workers),
        ],
    )
}

/// Where generation 2 of projection `name` is built up to (0 before its first batch): its
/// checkpoint, or the sum of its shards' in a parallel fill.
async fn rebuild_checkpoint(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(global_position), 0)::int8 FROM checkpoints \
         WHERE starts_with(name, $1 || '/g2')",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("the rebuild's checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_process_killed_at_random_points_is_never_cut_over_half_built() {
    killed_rebuilds(1..2).await;
}

/// As above with a parallel fill of 2 or 3 workers: a killed fill resumes with the number of
/// workers it began with, whatever the next process asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_rebuild_process_killed_at_random_points_resumes_its_shards() {
    killed_rebuilds(2..4).await;
}

/// Builds generation 1, then kills rebuild processes of generation 2 (of `workers` workers)
/// at random points while writers append; resumed, generation 2 equals a clean build.
#[expect(
    clippy::too_many_lines,
    reason = "one crash scenario, read top to bottom"
)]
async fn killed_rebuilds(workers: std::ops::Range<u32>) {
    let Some(db_url) = support::service_url("DATABASE_URL") else {
        return;
    };
    let pool = connect(&db_url).await;
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new(support::unique("rebuild-crash"));
    let name = support::unique("rebuild-crash");
    let readers = format!("readers_{}", name.replace('-', "_"));
    sqlx::query("SELECT eventsource_create_generation_schema($1)")
        .bind(&readers)
        .execute(&pool)
        .await
        .expect("reader schema");
    let options = || {
        RebuildOptions::default()
            .with_filter(LogFilter::tenant(tenant.clone()))
            .with_reader_schema(&readers)
            .with_instance_id("rebuilder")
    };
    // Generation 1 over a first stretch of the log, then writers while generation 2 is built.
    let done = CancellationToken::new();
    let writers = spawn_writers(&store, &tenant, &done);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    PgRebuild::new(store.clone(), LedgerModel::new(&name), options())
        .run(CancellationToken::new())
        .await
        .expect("generation 1")
        .expect("cut over");
    let generation_one = ledger(&pool, &readers).await;
    assert!(!generation_one.is_empty());
    let started = Instant::now();
    let (mut kills, mut finished, mut killed_at) = (0, false, Vec::new());
    let mut parallel_kills = 0;
    for _ in 0..REBUILD_KILLS {
        let mut rebuilder = spawn_rebuilder(&db_url, &name, &tenant, &readers, workers.clone());
        rebuilder.ready().await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..120))).await;
        if rebuilder.exited().is_some() {
            // It finished (cut over, complete) before the kill: the next rebuild checks the
            // rest.
            finished = true;
            break;
        }
        rebuilder.kill().await;
        let states = generation_states(&pool, &name).await;
        if states == ["retired", "serving"] {
            // Its cutover committed between the look above and the kill: it finished, as
            // above, and the next rebuild checks the rest.
            finished = true;
            break;
        }
        kills += 1;
        // Killed before its first transaction created generation 2, or while it built it.
        assert!(
            states == ["serving"] || states == ["serving", "building"],
            "a killed rebuild was cut over: {states:?}"
        );
        assert_eq!(
            ledger(&pool, &readers).await,
            generation_one,
            "readers see generation 1, unchanged"
        );
        killed_at.push(rebuild_checkpoint(&pool, &name).await);
        let shards: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM checkpoints WHERE starts_with(name, $1 || '/g2/shard-')",
        )
        .bind(&name)
        .fetch_one(&pool)
        .await
        .expect("shards");
        parallel_kills += usize::from(shards > 0);
    }
    let log = stop_writers(writers, &done, &store, &tenant).await;
    let report = PgRebuild::new(store.clone(), LedgerModel::new(&name), options())
        .run(CancellationToken::new())
        .await
        .expect("the resumed rebuild")
        .expect("cut over");
    let generation = if finished { 3 } else { 2 };
    killed_at.dedup();
    assert!(
        finished || killed_at.len() > 2,
        "the kills hit the rebuild at several points: {killed_at:?}"
    );
    assert_eq!(
        report.generation, generation,
        "the killed generation was resumed"
    );
    let mut want: Vec<uuid::Uuid> = log.iter().map(|e| *e.event_id.as_uuid()).collect();
    want.sort();
    assert_eq!(
        ledger(&pool, &readers).await,
        want,
        "a clean build, each event once"
    );
    let states = generation_states(&pool, &name).await;
    assert_eq!(states.last().map(String::as_str), Some("serving"));
    assert!(
        states[..states.len() - 1].iter().all(|s| s == "retired"),
        "{states:?}"
    );
    eprintln!(
        "{kills} kills of the rebuild ({parallel_kills} in a parallel fill; then finished by \
         itself: {finished}), {} events, in {:?}",
        log.len(),
        started.elapsed()
    );
}
