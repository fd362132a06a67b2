//! A saga runner as a process of its own, for `tests/saga_crash.rs` to kill with SIGKILL.
//!
//! Runs [`OrderSaga`] with [`PgSagaHandler`] in a Redis consumer group ([`ConsumerRunner`], group
//! `order-saga`) over one tenant's stream, and a [`PgDeadlineRunner`] for that tenant, until
//! killed. Configured by environment: `DATABASE_URL`, `REDIS_URL` (a comma-separated list of
//! nodes: a Redis Cluster), `SAGA_PREFIX` (the keys' prefix), `SAGA_TENANT` and `SAGA_CONSUMER` (its stable consumer name, so that a restarted
//! process finds its predecessor's pending entries at once). It prints `ready` once connected;
//! if the consumer runner stops it prints `stopped: <error>` and exits with 1.
//!
//! Both runners keep running through database outages: the consumer retries and redelivers
//! (it never dead-letters an entry for a transient failure, `max_deliveries` is high), and the
//! deadline runner, which returns a failure that outlasted its retries, is started again.

use std::time::Duration;

use eventsource_core::TenantId;
use eventsource_postgres::{PgDeadlineRunner, PgEventStore, PgSagaHandler};
use eventsource_redis::{ConsumerRunner, Keys, RunnerOptions};
use eventsource_tests::child::{redis_client, say, var};
use eventsource_tests::order_saga::{Aggregates, OrderSaga, SAGA};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&var("DATABASE_URL")?)
        .await?;
    let client = redis_client(&var("REDIS_URL")?)?;
    let conn = client.connect().await?;
    let tenant = TenantId::new(var("SAGA_TENANT")?);
    let stream = Keys::new(&var("SAGA_PREFIX")?).tenant_stream(&tenant);
    let store = PgEventStore::new(pool.clone());
    let handler = PgSagaHandler::new(pool.clone(), OrderSaga, Aggregates::new(&store, &tenant));
    let options = RunnerOptions::default()
        .with_batch_size(50)
        .with_concurrency(8)
        .with_block_timeout(Duration::from_millis(100))
        .with_idle_reclaim(Duration::from_secs(3))
        .with_max_deliveries(1_000)
        .with_breaker_cooldown(Duration::from_millis(200));
    let runner = ConsumerRunner::new(
        conn,
        client,
        [stream],
        SAGA,
        var("SAGA_CONSUMER")?,
        handler,
        options,
    )
    .with_store(store);
    let deadlines = PgDeadlineRunner::new(pool)
        .for_tenant(tenant)
        .with_poll(Duration::from_millis(50));
    tokio::spawn(async move {
        loop {
            if let Err(e) = deadlines.clone().run(CancellationToken::new()).await {
                eprintln!("saga child: deadline runner failed ({e}); starting it again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    say("ready");
    if let Err(e) = runner.run(CancellationToken::new()).await {
        say(&format!("stopped: {e}"));
        std::process::exit(1);
    }
    Ok(())
}
