//! Order flow over Redis Streams: commands append events to the event store, the relay
//! publishes them to `es:{<tenant>}:events`, one consumer group projects order totals into
//! PostgreSQL (exactly-once effects), another "sends" notifications (prints them). One order
//! carries a poison event that the notifier cannot handle: it ends in the dead-letter stream.
//!
//! Run with a Redis and a PostgreSQL server (the event store is in memory here):
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379/ DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo run -p eventsource-redis --features postgres --example order_flow
//! ```
#![allow(missing_docs, clippy::print_stdout)]

use std::time::Duration;

use eventsource_core::{
    EventHandler, EventStore, ExpectedVersion, InMemoryCheckpointStore, InMemoryEventStore,
    NewEvent, RecordedEvent, StreamId, TenantId,
};
use eventsource_redis::{
    ConsumerRunner, Keys, PgProjection, ProjectionHandler, PublisherOptions, RedisPublisher,
    RunnerOptions,
};
use tokio_util::sync::CancellationToken;

const CREATE_TOTALS: &str = "CREATE TABLE IF NOT EXISTS example_order_totals \
     (run text PRIMARY KEY, orders bigint NOT NULL, cents bigint NOT NULL)";
const ADD_ORDER: &str = "INSERT INTO example_order_totals (run, orders, cents) VALUES ($1, 1, $2) \
     ON CONFLICT (run) DO UPDATE SET orders = example_order_totals.orders + 1, \
     cents = example_order_totals.cents + EXCLUDED.cents";

/// The "place order" command: appends the order's events to a new stream.
async fn place_order(
    store: &InMemoryEventStore,
    tenant: &TenantId,
    id: &str,
    cents: i64,
    poison: bool,
) -> anyhow::Result<()> {
    let stream = StreamId::new(tenant.clone(), "order", id);
    let mut events = vec![NewEvent::new(
        "OrderPlaced",
        1,
        serde_json::json!({ "order_id": id, "cents": cents }),
    )];
    if poison {
        events.push(NewEvent::new(
            "OrderFlagged",
            1,
            serde_json::json!({ "why": 42 }),
        ));
    }
    store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("notification template for {0} is broken")]
struct TemplateError(String);

/// Prints a notification per placed order; has no template for flagged orders.
struct Notifier;

impl EventHandler for Notifier {
    type Error = TemplateError;
    async fn handle(&self, event: &RecordedEvent) -> Result<(), TemplateError> {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                println!("notify: order {} placed", event.payload["order_id"]);
                Ok(())
            }
            other => Err(TemplateError(other.to_owned())),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = redis::Client::open(std::env::var("REDIS_URL")?)?;
    let conn = client.get_connection_manager().await?;
    let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
    PgProjection::create_table(&pool).await?;
    sqlx::query(CREATE_TOTALS).execute(&pool).await?;

    // The event store is in memory, so every run starts again at the same log positions: give
    // each run its own keys, projection name and read-model row.
    let run = format!("example-{}", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(&run);
    let tenant = TenantId::new("acme");
    let stream_key = keys.tenant_stream(&tenant);
    let store = InMemoryEventStore::new();
    let shutdown = CancellationToken::new();

    let relay = RedisPublisher::new(
        store.clone(),
        InMemoryCheckpointStore::new(),
        conn.clone(),
        "example",
        PublisherOptions::default(),
    )
    .with_keys(&keys);
    let relay = tokio::spawn(relay.run(shutdown.clone()));

    let apply_run = run.clone();
    let projection = ProjectionHandler::new(PgProjection::new(
        pool.clone(),
        run.clone(),
        move |conn, event| {
            let run = apply_run.clone();
            Box::pin(async move {
                if event.event_type == "OrderPlaced" {
                    sqlx::query(ADD_ORDER)
                        .bind(run)
                        .bind(event.payload["cents"].as_i64().unwrap_or(0))
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
        },
    ));
    let options = RunnerOptions::default()
        .with_block_timeout(Duration::from_millis(500))
        .with_idle_reclaim(Duration::from_millis(500))
        .with_max_deliveries(3);
    let projector = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [stream_key.clone()],
        "order-totals",
        "projector-1",
        projection,
        options.clone(),
    )
    .with_store(store.clone());
    let notifier = ConsumerRunner::new(
        conn.clone(),
        client.clone(),
        [stream_key.clone()],
        "notifications",
        "notifier-1",
        Notifier,
        options,
    )
    .with_store(store.clone());
    let notifier_counters = notifier.counters();
    let projector_counters = projector.counters();
    let projector = tokio::spawn(projector.run(shutdown.clone()));
    let notifier = tokio::spawn(notifier.run(shutdown.clone()));

    place_order(&store, &tenant, "o-1", 1_999, false).await?;
    place_order(&store, &tenant, "o-2", 4_500, true).await?;
    place_order(&store, &tenant, "o-3", 250, false).await?;

    while notifier_counters.dead_lettered() == 0 || projector_counters.handled() < 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = conn.clone();
    for dead in eventsource_redis::dead_letters(&mut c, &stream_key, "notifications", 10).await? {
        println!(
            "dead letter {}: {:?} after {:?} deliveries: {:?}",
            dead.id,
            dead.event.as_ref().map(|e| e.event_type.clone()),
            dead.deliveries,
            dead.error
        );
    }
    let stats = eventsource_redis::stats(&mut c, &stream_key).await?;
    println!("{stats:#?}");
    let (orders, cents): (i64, i64) =
        sqlx::query_as("SELECT orders, cents FROM example_order_totals WHERE run = $1")
            .bind(&run)
            .fetch_one(&pool)
            .await?;
    println!("read model: {orders} orders, {cents} cents");

    shutdown.cancel();
    relay.await??;
    projector.await??;
    notifier.await??;
    Ok(())
}
