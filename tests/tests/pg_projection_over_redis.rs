//! A PostgreSQL read model fed by a Redis consumer group through `eventsource-postgres`'s
//! `PgProjectionHandler`: a consumer that dies between the read model's commit and its ack
//! leaves the event to another consumer, which skips it; the read model counts every event
//! once (issue 16 item 1; moved here from `eventsource-redis/tests/pg_projection.rs` when the
//! handler moved to eventsource-postgres). On a single Redis and on a Redis Cluster.

mod support;

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use eventsource_core::{
    EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore,
    NewEvent, RecordedEvent, StreamId, TenantId,
};
use eventsource_postgres::{MIGRATOR, PgProjection, PgProjectionError, PgProjectionHandler};
use eventsource_redis::{
    ConsumerRunner, Keys, RedisConnection, RedisRelay, RelayOptions, RunnerOptions,
};
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

const CREATE_TOTALS: &str =
    "CREATE TABLE IF NOT EXISTS es_redis_test_totals (k text PRIMARY KEY, n bigint NOT NULL)";
const ADD: &str = "INSERT INTO es_redis_test_totals (k, n) VALUES ($1, $2) \
                   ON CONFLICT (k) DO UPDATE SET n = es_redis_test_totals.n + EXCLUDED.n";

/// Adds `payload.n + 1` to its row of the totals.
struct Totals {
    name: String,
}

impl PgProjection for Totals {
    type Error = sqlx::Error;

    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), Self::Error> {
        let n = event.payload["n"].as_i64().unwrap_or(0) + 1;
        sqlx::query(ADD)
            .bind(&self.name)
            .bind(n)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Handles the event; when `dies`, then never returns: the consumer dies between commit and
/// ack.
struct Handler {
    projection: Arc<PgProjectionHandler<Totals>>,
    dies: bool,
}

impl EventHandler for Handler {
    type Error = PgProjectionError<sqlx::Error>;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.projection.handle(event).await?;
        if self.dies {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Ten events of one stream of `tenant`, in a store of their own, published to Redis.
async fn publish_ten_events(
    conn: &RedisConnection,
    keys: &Keys,
    tenant: &TenantId,
) -> InMemoryEventStore {
    let store = InMemoryEventStore::new();
    let stream = StreamId::new(tenant.clone(), "order", "o-1");
    for n in 0..10 {
        let event = NewEvent::new("Placed", 1, serde_json::json!({ "n": n }));
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
    }
    let mut relay = RedisRelay::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "pg",
        RelayOptions::default(),
    )
    .with_keys(keys);
    relay.catch_up().await.unwrap();

    store
}

/// Creates the totals table if missing. Both topologies' tests run at once, and concurrent
/// `CREATE TABLE IF NOT EXISTS` can fail on the catalog's unique index: they take turns.
async fn create_totals(pool: &sqlx::PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('es_redis_test_totals'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(CREATE_TOTALS).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_read_model_is_exact_after_a_consumer_dies_between_commit_and_ack() {
    exact_after_a_consumer_dies("REDIS_URL").await;
}

/// The same on a Redis Cluster (`REDIS_CLUSTER_URLS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_pg_read_model_is_exact_after_a_consumer_dies_between_commit_and_ack() {
    exact_after_a_consumer_dies("REDIS_CLUSTER_URLS").await;
}

/// A consumer dies between the read model's commit and its ack, another finishes; `redis_var`
/// names the Redis: one URL, or a cluster's nodes separated by commas.
async fn exact_after_a_consumer_dies(redis_var: &str) {
    let (Some(redis_url), Some(db_url)) = (
        support::service_url(redis_var),
        support::service_url("DATABASE_URL"),
    ) else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(PgConnectOptions::from_str(&db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&pool).await.expect("migrations");
    create_totals(&pool).await;

    let (client, conn) = support::redis(&redis_url).await;
    let prefix = support::unique("pg-redis");
    let keys = Keys::new(&prefix);
    let tenant = TenantId::new("acme");
    let store = publish_ten_events(&conn, &keys, &tenant).await;

    let projection = Arc::new(PgProjectionHandler::new(
        pool.clone(),
        Totals {
            name: prefix.clone(),
        },
    ));
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(100))
        .with_idle_reclaim(Duration::from_millis(300));
    let key = keys.tenant_stream(&tenant);
    let runner = |consumer: &str, handler| {
        ConsumerRunner::new(
            conn.clone(),
            client.clone(),
            [key.clone()],
            "pg-proj",
            consumer,
            handler,
            options.clone(),
        )
    };

    let total = || async {
        sqlx::query_scalar::<_, i64>("SELECT n FROM es_redis_test_totals WHERE k = $1")
            .bind(&prefix)
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    let a = tokio::spawn(
        runner(
            "a",
            Handler {
                projection: projection.clone(),
                dies: true,
            },
        )
        .run(CancellationToken::new()),
    );
    support::wait_for("the first consumer's commit", async || {
        total().await.is_some()
    })
    .await;
    a.abort();
    let _ = a.await;

    let b = runner(
        "b",
        Handler {
            projection: projection.clone(),
            dies: false,
        },
    );
    let counters = b.counters();
    let stop = CancellationToken::new();
    let b = tokio::spawn(b.run(stop.clone()));
    support::wait_for("the second consumer's ten events", async || {
        counters.handled() == 10
    })
    .await;
    stop.cancel();
    b.await.unwrap().unwrap();
    assert_eq!(total().await, Some((1..=10).sum::<i64>()));
    assert_eq!(projection.duplicates(), 1);

    // Every applied position is recorded; pruning below the last forgets all but it.
    let last = store
        .read_all(
            eventsource_core::LogPosition::START,
            100,
            &eventsource_core::LogFilter::all(),
        )
        .await
        .unwrap()
        .last()
        .unwrap()
        .position;
    assert_eq!(projection.prune_below(last).await.unwrap(), 9);
    assert_eq!(projection.prune_below(last).await.unwrap(), 0);
}
