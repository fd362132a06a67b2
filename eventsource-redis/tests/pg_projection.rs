//! A PostgreSQL read model fed by a consumer group: redelivery never double-applies.
#![cfg(feature = "postgres")]
#![allow(missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use eventsource_core::{EventHandler, InMemoryCheckpointStore, InMemoryEventStore, RecordedEvent};
use eventsource_redis::{
    ConsumerRunner, Keys, PgProjection, PgProjectionError, ProjectionHandler, PublisherOptions,
    RedisPublisher, RunnerOptions,
};
use tokio_util::sync::CancellationToken;

fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => Some(url),
        Err(e) if std::env::var_os("CI").is_some() => panic!("DATABASE_URL must be set in CI: {e}"),
        Err(_) => {
            eprintln!("DATABASE_URL is not set; skipping this PostgreSQL test");
            None
        }
    }
}

const CREATE_TOTALS: &str =
    "CREATE TABLE IF NOT EXISTS es_redis_test_totals (k text PRIMARY KEY, n bigint NOT NULL)";
const ADD: &str = "INSERT INTO es_redis_test_totals (k, n) VALUES ($1, $2) \
                   ON CONFLICT (k) DO UPDATE SET n = es_redis_test_totals.n + EXCLUDED.n";

/// Applies the event; when `dies`, then never returns: the consumer dies between commit and
/// ack.
struct Handler {
    projection: Arc<ProjectionHandler<PgProjection>>,
    dies: bool,
}

impl EventHandler for Handler {
    type Error = PgProjectionError;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), Self::Error> {
        self.projection.handle(event).await?;
        if self.dies {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_read_model_is_exact_after_a_consumer_dies_between_commit_and_ack() {
    let (Some(redis_url), Some(db_url)) = (support::redis_url(), database_url()) else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    PgProjection::create_table(&pool).await.unwrap();
    sqlx::query(CREATE_TOTALS).execute(&pool).await.unwrap();

    let (client, conn) = support::connect(&redis_url).await;
    let prefix = support::prefix();
    let keys = Keys::new(&prefix);
    let store = InMemoryEventStore::new();
    support::append(
        &store,
        &support::stream("acme", "order", "o-1"),
        10,
        "Placed",
    )
    .await;
    let mut relay = RedisPublisher::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "pg",
        PublisherOptions::default(),
    )
    .with_keys(&keys);
    relay.catch_up().await.unwrap();

    let row = prefix.clone();
    let projection = Arc::new(ProjectionHandler::new(PgProjection::new(
        pool.clone(),
        prefix.clone(),
        move |conn, event| {
            let row = row.clone();
            Box::pin(async move {
                let n = event.payload["n"].as_i64().unwrap_or(0) + 1;
                sqlx::query(ADD).bind(row).bind(n).execute(conn).await?;
                Ok(())
            })
        },
    )));
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(100))
        .with_idle_reclaim(Duration::from_millis(300));
    let key = keys.tenant_stream(&"acme".into());
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
    assert!(
        support::eventually(Duration::from_secs(5), || async { total().await.is_some() }).await
    );
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
    assert!(
        support::eventually(Duration::from_secs(10), || {
            let done = counters.handled() == 10;
            async move { done }
        })
        .await
    );
    stop.cancel();
    b.await.unwrap().unwrap();
    assert_eq!(total().await, Some((1..=10).sum::<i64>()));
    assert_eq!(projection.duplicates(), 1);
}
