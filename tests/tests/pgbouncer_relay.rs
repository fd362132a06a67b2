//! A round trip through PgBouncer in transaction mode (`PGBOUNCER_URL`, the database of
//! `DATABASE_URL` behind it): appends to `PgEventStore`, the relay publishing the log to Redis
//! with its checkpoint in PostgreSQL, and a consumer group applying the events to a read model
//! through `PgProjectionHandler`, every PostgreSQL connection through the pooler. Migrations
//! run through `DATABASE_URL`, as the README says.

mod support;

use std::str::FromStr as _;
use std::time::Duration;

use eventsource_core::{EventStore, ExpectedVersion, LogFilter, NewEvent, RecordedEvent, StreamId};
use eventsource_postgres::{
    MIGRATOR, PgCheckpointStore, PgEventStore, PgProjection, PgProjectionHandler,
};
use eventsource_redis::{ConsumerRunner, Keys, RedisRelay, RelayOptions, RunnerOptions};
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

const CREATE_TOTALS: &str =
    "CREATE TABLE IF NOT EXISTS es_pgbouncer_totals (k text PRIMARY KEY, n bigint NOT NULL)";
const ADD: &str = "INSERT INTO es_pgbouncer_totals (k, n) VALUES ($1, $2) \
                   ON CONFLICT (k) DO UPDATE SET n = es_pgbouncer_totals.n + EXCLUDED.n";

/// Adds `payload.n` to its row of the totals.
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
        sqlx::query(ADD)
            .bind(&self.name)
            .bind(event.payload["n"].as_i64().unwrap_or(0))
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_and_a_consumer_group_work_through_pgbouncer() {
    let (Some(redis_url), Some(db_url), Some(bouncer_url)) = (
        support::service_url("REDIS_URL"),
        support::service_url("DATABASE_URL"),
        support::service_url("PGBOUNCER_URL"),
    ) else {
        return;
    };
    let direct = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(PgConnectOptions::from_str(&db_url).expect("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    MIGRATOR.run(&direct).await.expect("migrations");
    sqlx::query(CREATE_TOTALS).execute(&direct).await.unwrap();
    // As the README asks: no statement cache, no ping on acquire.
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .connect_with(
            PgConnectOptions::from_str(&bouncer_url)
                .expect("PGBOUNCER_URL")
                .statement_cache_capacity(0),
        )
        .await
        .expect("connect through PgBouncer");

    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let prefix = support::unique("pgbouncer");
    let keys = Keys::new(&prefix);
    let tenant = eventsource_core::TenantId::new(prefix.clone());
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new(tenant.clone(), "order", "o-1");
    let append = |n: i64| {
        let (store, stream) = (store.clone(), stream.clone());
        async move {
            let event = NewEvent::new("Placed", 1, serde_json::json!({ "n": n }));
            store
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    };
    for n in 1..=5 {
        append(n).await;
    }

    let shutdown = CancellationToken::new();
    let relay = RedisRelay::new(
        store.clone(),
        PgCheckpointStore::new(pool.clone()),
        conn.clone(),
        prefix.clone(),
        RelayOptions::default()
            .with_filter(LogFilter::tenant(tenant.clone()))
            .with_max_idle_poll(Duration::from_millis(50)),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    let consumer = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [keys.tenant_stream(&tenant)],
        "pgbouncer",
        "a",
        PgProjectionHandler::new(
            pool.clone(),
            Totals {
                name: prefix.clone(),
            },
        ),
        RunnerOptions::default().with_block_timeout(Duration::from_millis(100)),
    );
    let counters = consumer.counters();
    let consumer = tokio::spawn(consumer.run(shutdown.clone()));
    for n in 6..=10 {
        append(n).await;
    }
    support::wait_for("ten events through the relay and the group", async || {
        counters.handled() == 10
    })
    .await;
    shutdown.cancel();
    relay.await.unwrap().unwrap();
    consumer.await.unwrap().unwrap();

    let total: i64 = sqlx::query_scalar("SELECT n FROM es_pgbouncer_totals WHERE k = $1")
        .bind(&prefix)
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(total, (1..=10).sum::<i64>(), "each event applied once");
    let checkpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM checkpoints WHERE name LIKE '%' || $1 || '%'")
            .bind(&prefix)
            .fetch_one(&direct)
            .await
            .unwrap();
    assert!(checkpoints >= 1, "the relay saved its checkpoint");
}
