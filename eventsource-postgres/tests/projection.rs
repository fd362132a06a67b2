//! Projections on PostgreSQL (issue 16 items 1 and 2, ADR 0016): the runner applies each event
//! once with its checkpoint in the read model's transaction, halts on a failing event at its
//! position, stands by or is refused while another instance holds the lease, and an instance
//! that lost its lease changes nothing. The cross-process proofs (SIGKILL, two processes) are in
//! the workspace's `tests/tests/pg_projection_crash.rs`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventsource_core::{
    CheckpointStore, EventHandler, EventStore, ExpectedVersion, LogFilter, LogPosition, NewEvent,
    RecordedEvent, StoreError, StreamId, TenantId,
};
use eventsource_postgres::{
    LeaseError, PgCheckpointStore, PgEventStore, PgLease, PgProjection, PgProjectionError,
    PgProjectionHandler, PgProjectionRunner, ProjectionOptions,
};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One row per application of an event: a duplicate shows as two rows.
const CREATE_ROWS: &str = "CREATE TABLE IF NOT EXISTS projection_test_rows (
    projection text NOT NULL, event_id uuid NOT NULL, n bigint NOT NULL, holder text NOT NULL)";
const INSERT_ROW: &str =
    "INSERT INTO projection_test_rows (projection, event_id, n, holder) VALUES ($1, $2, $3, $4)";

#[derive(Debug, thiserror::Error)]
enum RowsError {
    #[error("event {0} is poison")]
    Poison(String),
    #[error("read model statement failed")]
    Sql(#[from] sqlx::Error),
}

/// Stops the first `apply` after its write until opened.
struct Gate {
    passed: AtomicBool,
    entered: Notify,
    open: Semaphore,
}

/// Records each application as a row; fails on events of type `Poison`.
struct Rows {
    name: String,
    holder: String,
    gate: Option<Arc<Gate>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            passed: AtomicBool::new(false),
            entered: Notify::new(),
            open: Semaphore::new(0),
        }
    }
}

impl Rows {
    fn new(name: &str, holder: &str) -> Self {
        Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
            gate: None,
        }
    }
}

impl PgProjection for Rows {
    type Error = RowsError;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, conn: &mut PgConnection, event: &RecordedEvent) -> Result<(), RowsError> {
        if event.event_type == "Poison" {
            return Err(RowsError::Poison(event.event_id.to_string()));
        }
        sqlx::query(INSERT_ROW)
            .bind(&self.name)
            .bind(event.event_id.as_uuid())
            .bind(event.payload["n"].as_i64().unwrap_or(-1))
            .bind(&self.holder)
            .execute(&mut *conn)
            .await?;
        if let Some(gate) = &self.gate
            && !gate.passed.swap(true, Ordering::SeqCst)
        {
            gate.entered.notify_one();
            gate.open.acquire().await.expect("gate").forget();
        }
        Ok(())
    }
}

async fn setup() -> Option<(PgPool, PgEventStore, TenantId, String)> {
    Some(setup_on(support::pool().await?).await)
}

async fn setup_on(pool: PgPool) -> (PgPool, PgEventStore, TenantId, String) {
    let mut tx = pool.begin().await.unwrap();
    // Concurrent CREATE TABLE IF NOT EXISTS can collide: one at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(7245016)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(CREATE_ROWS).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let store = PgEventStore::new(pool.clone());
    let tenant = support::tenant("projection");
    let name = format!("projection-{}", Uuid::now_v7().simple());
    (pool, store, tenant, name)
}

/// Appends events numbered `from..to`, one per append, to a few streams of `tenant`.
async fn append(store: &PgEventStore, tenant: &TenantId, from: i64, to: i64) {
    append_as(store, tenant, from..to, "Numbered").await;
}

/// Appends event `n` of type `event_type`, as [`append`] does.
async fn append_typed(store: &PgEventStore, tenant: &TenantId, n: i64, event_type: &str) {
    append_as(store, tenant, n..n + 1, event_type).await;
}

/// Appends one event of `event_type` per number, then waits until the log shows them: the log
/// shows an event once every older transaction on the server has ended, another test's open
/// transaction may hide these for a moment, and the tests index and count the log.
async fn append_as(
    store: &PgEventStore,
    tenant: &TenantId,
    numbers: std::ops::Range<i64>,
    event_type: &str,
) {
    let before = log(store, tenant).await.len();
    let expected = before + usize::try_from(numbers.end - numbers.start).unwrap_or(0);
    for n in numbers {
        let stream = StreamId::new(tenant.clone(), "counter", format!("c-{}", n % 3));
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![NewEvent::new(event_type, 1, json!({ "n": n }))],
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log(store, tenant).await.len() < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The tenant's log.
async fn log(store: &PgEventStore, tenant: &TenantId) -> Vec<RecordedEvent> {
    store
        .read_all(
            LogPosition::START,
            10_000,
            &LogFilter::tenant(tenant.clone()),
        )
        .await
        .unwrap()
}

/// The rows of projection `name`: `(event id, n, holder)` in insertion order.
async fn rows(pool: &PgPool, name: &str) -> Vec<(Uuid, i64, String)> {
    sqlx::query_as(
        "SELECT event_id, n, holder FROM projection_test_rows WHERE projection = $1 ORDER BY n",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn checkpoint(pool: &PgPool, name: &str) -> Option<LogPosition> {
    PgCheckpointStore::new(pool.clone())
        .load(name)
        .await
        .unwrap()
}

fn options(tenant: &TenantId, holder: &str) -> ProjectionOptions {
    ProjectionOptions::default()
        .with_filter(LogFilter::tenant(tenant.clone()))
        .with_instance_id(holder)
        .with_max_idle_poll(Duration::from_millis(20))
}

/// Each event of the log once, in log order, by anyone.
fn assert_exactly_once(log: &[RecordedEvent], rows: &[(Uuid, i64, String)]) {
    let want: Vec<Uuid> = log.iter().map(|e| *e.event_id.as_uuid()).collect();
    let mut got: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    got.sort();
    assert_eq!(got, sorted_want, "every event applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_applies_each_event_once_with_its_checkpoint_in_the_same_transaction() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    applies_each_event_once(pool, store, tenant, name).await;
}

/// The same through PgBouncer in transaction mode: catch-up, the live run, the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_the_runner_applies_each_event_once() {
    let Some(pool) = support::bouncer_pool(16).await else {
        return;
    };
    let (pool, store, tenant, name) = setup_on(pool).await;
    applies_each_event_once(pool, store, tenant, name).await;
}

async fn applies_each_event_once(
    pool: PgPool,
    store: PgEventStore,
    tenant: TenantId,
    name: String,
) {
    append(&store, &tenant, 0, 25).await;
    let runner = PgProjectionRunner::new(
        store.clone(),
        Rows::new(&name, "a"),
        options(&tenant, "a").with_batch_size(10),
    );
    assert_eq!(runner.catch_up().await.unwrap(), 25);
    let log = log(&store, &tenant).await;
    assert_exactly_once(&log, &rows(&pool, &name).await);
    assert_eq!(
        checkpoint(&pool, &name).await,
        Some(log.last().unwrap().position)
    );
    // Again: nothing new, nothing applied twice.
    assert_eq!(runner.catch_up().await.unwrap(), 0);

    // Live: the runner follows appends until shut down, then lets the lease go.
    let shutdown = CancellationToken::new();
    let live = tokio::spawn(
        PgProjectionRunner::new(store.clone(), Rows::new(&name, "a"), options(&tenant, "a"))
            .run(shutdown.clone()),
    );
    append(&store, &tenant, 25, 40).await;
    wait_for_rows(&pool, &name, 40).await;
    shutdown.cancel();
    live.await.unwrap().unwrap();
    let log = self::log(&store, &tenant).await;
    assert_exactly_once(&log, &rows(&pool, &name).await);
    assert_eq!(
        checkpoint(&pool, &name).await,
        Some(log.last().unwrap().position)
    );
    // Released on shutdown: another holder takes it at once.
    PgLease::try_acquire(&pool, &name, "b", Duration::from_secs(10))
        .await
        .expect("the lease was released")
        .release()
        .await
        .unwrap();
}

async fn wait_for_rows(pool: &PgPool, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(pool, name).await.len() < count {
        assert!(Instant::now() < deadline, "the projection fell behind");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_halts_the_runner_at_its_position_with_an_error_naming_it() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(&store, &tenant, 0, 5).await;
    append_typed(&store, &tenant, 5, "Poison").await;
    append(&store, &tenant, 6, 10).await;
    let log = log(&store, &tenant).await;
    let poison = &log[5];

    // One batch holds all ten: the five before the poison commit, nothing after it.
    let runner = PgProjectionRunner::new(
        store.clone(),
        Rows::new(&name, "a"),
        options(&tenant, "a").with_batch_size(100),
    );
    for _ in 0..2 {
        let err = runner.catch_up().await.unwrap_err();
        assert!(
            matches!(&err, PgProjectionError::Apply { event_id, event_type, position, stream, source: RowsError::Poison(_), .. }
                if *event_id == poison.event_id && event_type == "Poison"
                    && *position == poison.position && *stream == poison.stream),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&poison.event_id.to_string()),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(
            rows(&pool, &name)
                .await
                .iter()
                .map(|r| r.1)
                .collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(checkpoint(&pool, &name).await, Some(log[4].position));
    }

    // The poison first in its batch: nothing of the batch applies.
    let other = format!("{name}-b");
    let runner = PgProjectionRunner::new(
        store.clone(),
        Rows::new(&other, "a"),
        options(&tenant, "a").with_batch_size(5),
    );
    let err = runner.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::Apply { position, .. } if *position == poison.position),
        "{err:?}"
    );
    assert_eq!(rows(&pool, &other).await.len(), 5);
    assert_eq!(checkpoint(&pool, &other).await, Some(log[4].position));

    // `run` stops the same way, and releases the lease.
    let err = PgProjectionRunner::new(store.clone(), Rows::new(&name, "a"), options(&tenant, "a"))
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PgProjectionError::Apply { .. }), "{err:?}");
    assert_eq!(rows(&pool, &name).await.len(), 5);
    PgLease::try_acquire(&pool, &name, "b", Duration::from_secs(1))
        .await
        .expect("released after the failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_that_lost_its_lease_changes_nothing_and_stops() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(&store, &tenant, 0, 10).await;
    let ttl = Duration::from_millis(300);

    // A takes the lease and stops inside its first batch's transaction, after a write.
    let gate = Arc::new(Gate::default());
    let zombie = PgProjectionRunner::new(
        store.clone(),
        Rows {
            gate: Some(gate.clone()),
            ..Rows::new(&name, "a")
        },
        options(&tenant, "a").with_lease_ttl(ttl),
    );
    let zombie = tokio::spawn(zombie.run(CancellationToken::new()));
    gate.entered.notified().await;

    // A renews nothing while stuck: once its lease ran out, B takes it and catches up.
    let b = PgProjectionRunner::new(
        store.clone(),
        Rows::new(&name, "b"),
        options(&tenant, "b").with_lease_ttl(ttl),
    );
    let started = Instant::now();
    let applied = loop {
        match b.catch_up().await {
            Ok(applied) => break applied,
            Err(PgProjectionError::LeaseHeld { holder, .. }) => assert_eq!(holder, "a"),
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A's lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(applied, 10);
    assert!(started.elapsed() >= ttl / 2, "B waited for A's lease");

    // A wakes up, applies the rest of its batch, and its lease check finds B's token.
    gate.open.add_permits(1);
    let err = zombie.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::LeaseLost { holder: Some(holder), .. } if holder == "b"),
        "{err:?}"
    );
    let rows = rows(&pool, &name).await;
    assert_exactly_once(&log(&store, &tenant).await, &rows);
    assert!(
        rows.iter().all(|r| r.2 == "b"),
        "A committed nothing: {rows:?}"
    );
    assert_eq!(
        checkpoint(&pool, &name).await,
        Some(log(&store, &tenant).await.last().unwrap().position)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_is_refused_by_catch_up_and_stands_by_in_run() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(&store, &tenant, 0, 5).await;
    let shutdown_a = CancellationToken::new();
    let a = tokio::spawn(
        PgProjectionRunner::new(store.clone(), Rows::new(&name, "a"), options(&tenant, "a"))
            .run(shutdown_a.clone()),
    );
    wait_for_rows(&pool, &name, 5).await;

    // Refused at once, naming the holder.
    let b = PgProjectionRunner::new(store.clone(), Rows::new(&name, "b"), options(&tenant, "b"));
    let err = b.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::LeaseHeld { holder, .. } if holder == "a"),
        "{err:?}"
    );
    // Standing by: applies nothing while A runs.
    let shutdown_b = CancellationToken::new();
    let b = tokio::spawn(b.run(shutdown_b.clone()));
    append(&store, &tenant, 5, 10).await;
    wait_for_rows(&pool, &name, 10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rows(&pool, &name).await.iter().all(|r| r.2 == "a"));

    // A stops gracefully and lets go: B takes over (within its poll, a third of the lease's
    // ten seconds at most one second) and goes on from A's checkpoint.
    shutdown_a.cancel();
    a.await.unwrap().unwrap();
    append(&store, &tenant, 10, 15).await;
    wait_for_rows(&pool, &name, 15).await;
    shutdown_b.cancel();
    b.await.unwrap().unwrap();
    let rows = rows(&pool, &name).await;
    assert_exactly_once(&log(&store, &tenant).await, &rows);
    assert!(rows[..10].iter().all(|r| r.2 == "a"));
    assert!(rows[10..].iter().all(|r| r.2 == "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_moved_outside_the_lease_stops_the_runner() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(&store, &tenant, 0, 5).await;
    let runner = tokio::spawn(
        PgProjectionRunner::new(store.clone(), Rows::new(&name, "a"), options(&tenant, "a"))
            .run(CancellationToken::new()),
    );
    wait_for_rows(&pool, &name, 5).await;
    let log = log(&store, &tenant).await;
    // Someone moves the checkpoint back by hand.
    PgCheckpointStore::new(pool.clone())
        .save(&name, Some(log[4].position), log[1].position)
        .await
        .unwrap();
    append(&store, &tenant, 5, 6).await;
    let err = runner.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, PgProjectionError::CheckpointMoved { expected, actual, .. }
            if *expected == Some(log[4].position) && *actual == Some(log[1].position)),
        "{err:?}"
    );
    assert_eq!(rows(&pool, &name).await.len(), 5, "the batch rolled back");
}

#[tokio::test]
async fn a_lease_is_held_until_it_runs_out_or_is_released_and_each_taking_fences_the_last() {
    let Some(pool) = support::pool().await else {
        return;
    };
    let name = format!("lease-{}", Uuid::now_v7().simple());
    let ttl = Duration::from_millis(200);
    let a = PgLease::try_acquire(&pool, &name, "a", ttl).await.unwrap();
    let held = PgLease::try_acquire(&pool, &name, "b", ttl)
        .await
        .unwrap_err();
    assert!(
        matches!(&held, LeaseError::Held { holder, .. } if holder == "a"),
        "{held:?}"
    );
    assert!(held.is_retryable());
    a.renew().await.unwrap();

    // Runs out: B takes it, A is lost.
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let b = PgLease::try_acquire(&pool, &name, "b", ttl).await.unwrap();
    assert!(b.token() > a.token());
    let lost = a.renew().await.unwrap_err();
    assert!(
        matches!(&lost, LeaseError::Lost { holder: Some(holder), .. } if holder == "b"),
        "{lost:?}"
    );
    assert!(!lost.is_retryable());
    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        a.renew_in_tx(&mut tx).await,
        Err(LeaseError::Lost { .. })
    ));
    tx.rollback().await.unwrap();
    // Releasing a lost lease leaves the new holder alone.
    a.release().await.unwrap();
    b.renew().await.unwrap();

    // The same holder id takes it back at once (a restarted instance), fencing its old self.
    let b_again = PgLease::try_acquire(&pool, &name, "b", Duration::from_mins(1))
        .await
        .unwrap();
    assert!(b_again.token() > b.token());
    assert!(matches!(b.renew().await, Err(LeaseError::Lost { .. })));

    // Released: another holder takes it at once, long as its time to live was.
    b_again.release().await.unwrap();
    let c = PgLease::try_acquire(&pool, &name, "c", ttl).await.unwrap();
    assert_eq!(c.holder(), "c");
    assert_eq!(c.name(), name);

    // `acquire` waits while another holds it, and gives up on shutdown.
    let shutdown = CancellationToken::new();
    let waiting = {
        let (pool, name, shutdown) = (pool.clone(), name.clone(), shutdown.clone());
        tokio::spawn(async move {
            PgLease::acquire(&pool, name, "d", Duration::from_secs(10), &shutdown).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.renew().await.unwrap();
    shutdown.cancel();
    assert!(waiting.await.unwrap().unwrap().is_none());
    let waiting = {
        let (pool, name) = (pool.clone(), name.clone());
        tokio::spawn(async move {
            PgLease::acquire(&pool, name, "d", ttl, &CancellationToken::new()).await
        })
    };
    // C stops renewing: D gets it once it runs out.
    let d = waiting.await.unwrap().unwrap().expect("taken");
    assert!(d.token() > c.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_tenant_runner_works_for_the_application_role_and_an_all_tenant_one_does_not() {
    let Some((admin, admin_store, tenant, name)) = setup().await else {
        return;
    };
    let app = support::app_role_pool_with(&admin, 4).await;
    sqlx::query("GRANT SELECT, INSERT ON projection_test_rows TO eventsource_app")
        .execute(&admin)
        .await
        .unwrap();
    let store = PgEventStore::new(app.clone());
    append(&store, &tenant, 0, 5).await;
    let runner =
        PgProjectionRunner::new(store.clone(), Rows::new(&name, "a"), options(&tenant, "a"));
    assert_eq!(runner.catch_up().await.unwrap(), 5);
    assert_exactly_once(
        &log(&admin_store, &tenant).await,
        &rows(&admin, &name).await,
    );

    // Every tenant's log needs a role that bypasses row level security.
    let all = PgProjectionRunner::new(
        store,
        Rows::new(&format!("{name}-all"), "a"),
        options(&tenant, "a").with_filter(LogFilter::all()),
    );
    let err = all.catch_up().await.unwrap_err();
    assert!(
        matches!(
            &err,
            PgProjectionError::Store(StoreError::TenantViolation(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_handler_applies_a_redelivered_event_once() {
    let Some((pool, store, tenant, name)) = setup().await else {
        return;
    };
    append(&store, &tenant, 0, 3).await;
    let log = log(&store, &tenant).await;
    let handler = PgProjectionHandler::new(pool.clone(), Rows::new(&name, "a"));
    // Redelivered, and out of order.
    for i in [0, 2, 0, 1, 2] {
        handler.handle(&log[i]).await.unwrap();
    }
    assert_eq!(handler.duplicates(), 2);
    assert_exactly_once(&log, &rows(&pool, &name).await);
    assert_eq!(handler.projection().name(), name);
    assert_eq!(handler.prune_below(log[2].position).await.unwrap(), 2);
    // A failing event names itself and records nothing.
    append_typed(&store, &tenant, 3, "Poison").await;
    let poison = self::log(&store, &tenant).await.pop().unwrap();
    for _ in 0..2 {
        let err = handler.handle(&poison).await.unwrap_err();
        assert!(
            matches!(&err, PgProjectionError::Apply { event_id, .. } if *event_id == poison.event_id),
            "{err:?}"
        );
        // `PgProjection::is_permanent` defaults to transient: the group retries it.
        assert!(!handler.is_permanent(&err));
    }
    assert_eq!(handler.duplicates(), 2);
}

#[tokio::test]
async fn migration_0008_carries_over_the_positions_eventsource_redis_recorded() {
    let Some(server) = support::server() else {
        return;
    };
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(server.clone())
        .await
        .unwrap();
    let database = format!("eventsource_upgrade_{}", Uuid::now_v7().simple());
    // The name is a UUID of our own: nothing in it needs quoting.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(server.database(&database))
        .await
        .unwrap();
    eventsource_postgres::MIGRATOR
        .run_to(7, &pool)
        .await
        .unwrap();
    // The table eventsource-redis's `PgProjection::create_table` made, with one position.
    sqlx::query(
        "CREATE TABLE eventsource_redis_applied (projection text NOT NULL, \
         transaction_id bigint NOT NULL, position bigint NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (projection, transaction_id, position))",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO eventsource_redis_applied VALUES ('totals', 7, 3), ('totals', 7, 4)")
        .execute(&pool)
        .await
        .unwrap();
    eventsource_postgres::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE projection_test_rows (projection text NOT NULL, \
                 event_id uuid NOT NULL, n bigint NOT NULL, holder text NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();

    let handler = PgProjectionHandler::new(pool.clone(), Rows::new("totals", "a"));
    let store = PgEventStore::new(pool.clone());
    let tenant = TenantId::new("acme");
    append(&store, &tenant, 0, 1).await;
    let mut event = log(&store, &tenant).await.remove(0);
    event.position = LogPosition::new(7, 4);
    handler.handle(&event).await.unwrap();
    assert_eq!(
        handler.duplicates(),
        1,
        "applied before the upgrade: skipped"
    );
    event.position = LogPosition::new(7, 5);
    handler.handle(&event).await.unwrap();
    assert_eq!(handler.duplicates(), 1);
    assert_eq!(rows(&pool, "totals").await.len(), 1);

    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();
}
